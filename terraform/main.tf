# chexops on Chameleon: a k3s cluster of KVM nodes at KVM@TACC (private network, one floating IP,
# Cinder volumes for platform state and datasets), a GPU bare-metal node on a CHI site that joins
# the cluster over WireGuard, and an object-store container for raw data.
#
# Leases come first (`chexops infra lease create`, which writes reservations.auto.tfvars.json);
# then `terraform apply`; then `chexops infra inventory` turns `terraform output -json` into the
# Ansible inventory. See docs/operations.md.

locals {
  gpu_peer_cidrs = var.gpu_enabled ? ["${module.gpu_node[0].floating_ip}/32"] : []
  kvm_peer_cidrs = ["${module.network.edge_floating_ip}/32"]
}

module "network" {
  source = "./modules/network"
  providers = {
    openstack = openstack.kvm
  }

  name_prefix           = var.name_prefix
  cidr                  = var.private_network_cidr
  dns_nameservers       = var.dns_nameservers
  external_network_name = var.external_network_name
  ssh_allowed_cidrs     = var.ssh_allowed_cidrs
  ingress_allowed_cidrs = var.ingress_allowed_cidrs
  k8s_api_allowed_cidrs = var.k8s_api_allowed_cidrs
  peer_cidrs            = local.gpu_peer_cidrs
}

module "kvm_cluster" {
  source = "./modules/kvm_cluster"
  providers = {
    openstack = openstack.kvm
  }

  name_prefix         = var.name_prefix
  node_count          = var.kvm_node_count
  reservation_id      = var.kvm_reservation_id
  image_name          = var.kvm_image_name
  key_pair            = var.key_pair
  network_id          = module.network.network_id
  subnet_id           = module.network.subnet_id
  subnet_cidr         = module.network.cidr
  cluster_secgroup_id = module.network.cluster_secgroup_id
  edge_secgroup_id    = module.network.edge_secgroup_id
  edge_floating_ip    = module.network.edge_floating_ip
  tags                = var.tags
}

module "volumes" {
  source = "./modules/volumes"
  providers = {
    openstack = openstack.kvm
  }

  name_prefix = var.name_prefix
  instance_id = module.kvm_cluster.storage_node_id
  volumes     = var.volumes
}

module "gpu_node" {
  source = "./modules/gpu_node"
  count  = var.gpu_enabled ? 1 : 0
  providers = {
    openstack = openstack.chi
  }

  name_prefix           = var.name_prefix
  reservation_id        = var.gpu_reservation_id
  image_name            = var.gpu_image_name
  key_pair              = var.key_pair
  network_name          = var.gpu_network_name
  external_network_name = var.external_network_name
  ssh_allowed_cidrs     = var.ssh_allowed_cidrs
  peer_cidrs            = local.kvm_peer_cidrs
  tags                  = var.tags
}

module "object_store" {
  source = "./modules/object_store"
  providers = {
    openstack = openstack.chi
  }

  container_name = var.object_store_container
}
