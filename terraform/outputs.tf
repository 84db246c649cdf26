# These outputs are the contract with `chexops infra inventory`, which turns
# `terraform output -json` into ansible/inventory/hosts.yml. Change them together.

output "ssh_user" {
  description = "Login user of Chameleon images."
  value       = "cc"
}

output "bastion_ip" {
  description = "node1's floating IP: the SSH bastion for the private nodes, the ingress and the Kubernetes API."
  value       = module.network.edge_floating_ip
}

output "k8s_api_endpoint" {
  description = "URL of the Kubernetes API (k3s server on node1)."
  value       = "https://${module.network.edge_floating_ip}:6443"
}

output "private_network_cidr" {
  description = "CIDR of the KVM nodes' private network."
  value       = module.network.cidr
}

output "nodes" {
  description = "Every node by inventory name: site, private and public address, site-link address (node1 and the GPU node), whether it has a GPU, and the Ansible groups it belongs to."
  value = merge(
    {
      for name, n in module.kvm_cluster.nodes : name => {
        site       = "kvm"
        instance   = n.id
        private_ip = n.private_ip
        public_ip  = name == "node1" ? module.network.edge_floating_ip : null
        link_ip    = name == "node1" && local.site_link_enabled ? local.site_link_kvm_ip : null
        gpu        = false
        groups     = name == "node1" ? ["kvm", "k3s_server", "storage"] : ["kvm", "k3s_agent"]
      }
    },
    var.gpu_enabled ? {
      (module.gpu_node[0].node.name) = {
        site       = "chi"
        instance   = module.gpu_node[0].node.id
        private_ip = module.gpu_node[0].node.private_ip
        public_ip  = module.gpu_node[0].node.public_ip
        link_ip    = local.site_link_gpu_ip
        gpu        = true
        groups     = ["gpu", "k3s_agent"]
      }
    } : {}
  )
}

output "volumes" {
  description = "Cinder volumes by name with the node they attach to: id, device, stable by-id path, mount point, size, purpose."
  value = {
    for name, v in module.volumes.volumes : name => merge(v, { node = "node1" })
  }
}

output "object_store_container" {
  description = "Swift container for raw datasets (on the CHI site)."
  value       = module.object_store.container
}

output "reservations" {
  description = "The Blazar reservations this deployment runs on."
  value = {
    kvm = var.kvm_reservation_id
    gpu = var.gpu_enabled ? var.gpu_reservation_id : null
  }
}

output "ssh_allowed_cidrs" {
  description = "Operator networks allowed to SSH; the host firewall (Ansible common role) enforces the same list, also on bare metal where security groups may not apply."
  value       = var.ssh_allowed_cidrs
}

output "k8s_api_allowed_cidrs" {
  description = "Operator networks allowed to reach the Kubernetes API on node1; mirrored by the host firewall."
  value       = local.k8s_api_allowed_cidrs
}

output "ingress_allowed_cidrs" {
  description = "Sources allowed to reach the HTTP(S) ingress on node1: the security group and the host firewall (Ansible) both use this list, and only this list."
  value       = var.ingress_allowed_cidrs
}

output "site_link" {
  description = "The WireGuard site link between node1 and the GPU node (null without one): CIDR, UDP port, and each end's public endpoint and link address."
  value = local.site_link_enabled ? {
    cidr         = var.site_link_cidr
    port         = var.site_link_port
    kvm_endpoint = module.network.edge_floating_ip
    kvm_ip       = local.site_link_kvm_ip
    gpu_endpoint = module.gpu_node[0].floating_ip
    gpu_ip       = local.site_link_gpu_ip
  } : null
}
