# chexops on Chameleon: a k3s cluster of KVM nodes at KVM@TACC (private network, one floating IP,
# Cinder volumes for platform state and datasets), a GPU bare-metal node on a CHI site that joins
# the cluster over WireGuard, and an object-store container for raw data.
#
# Leases come first (`chexops infra lease create`, which writes reservations.auto.tfvars.json);
# then `terraform apply`; then `chexops infra inventory` turns `terraform output -json` into the
# Ansible inventory. See docs/operations.md.

# Cross-site topology: the GPU node joins through ONE reachable endpoint. A WireGuard site link
# runs between node1 (the cluster's floating IP) and the GPU node (its own floating IP); node1
# forwards between the link and the private network, and the router sends node2..N's traffic for
# the link through node1. The GPU node's Kubernetes address is its link address, so every node
# reaches every other on a private address. See docs/operations.md, "The cluster across sites".
locals {
  site_link_enabled = var.gpu_enabled
  # node1 = .1, the GPU node = .2 of the link's CIDR.
  site_link_kvm_ip = cidrhost(var.site_link_cidr, 1)
  site_link_gpu_ip = cidrhost(var.site_link_cidr, 2)
  # Unset: the operators' SSH networks also reach the API (the docs' kubectl check); [] closes it.
  k8s_api_allowed_cidrs = var.k8s_api_allowed_cidrs == null ? var.ssh_allowed_cidrs : var.k8s_api_allowed_cidrs
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
  reserved_floating_ip  = length(var.kvm_floating_ips) > 0 ? var.kvm_floating_ips[0] : ""
  ssh_allowed_cidrs     = var.ssh_allowed_cidrs
  ingress_allowed_cidrs = var.ingress_allowed_cidrs
  k8s_api_allowed_cidrs = local.k8s_api_allowed_cidrs
  edge_port_id          = module.kvm_cluster.edge_port_id
  edge_private_ip       = module.kvm_cluster.edge_private_ip
  site_link_enabled     = local.site_link_enabled
  site_link_cidr        = var.site_link_cidr
  site_link_port        = var.site_link_port
  site_link_peer_ip     = var.gpu_enabled ? module.gpu_node[0].floating_ip : ""
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
  forwarded_cidrs     = local.site_link_enabled ? [var.site_link_cidr] : []
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
  reserved_floating_ip  = length(var.gpu_floating_ips) > 0 ? var.gpu_floating_ips[0] : ""
  ssh_allowed_cidrs     = var.ssh_allowed_cidrs
  site_link_peer_ip     = module.network.edge_floating_ip
  site_link_port        = var.site_link_port
  tags                  = var.tags
}

module "object_store" {
  source = "./modules/object_store"
  providers = {
    openstack = openstack.chi
  }

  name_prefix = var.name_prefix
}
