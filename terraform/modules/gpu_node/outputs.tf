output "node" {
  description = "The GPU node: name, instance id, addresses, reservation."
  value = {
    name           = var.node_name
    id             = openstack_compute_instance_v2.gpu.id
    private_ip     = openstack_networking_port_v2.gpu.all_fixed_ips[0]
    public_ip      = local.floating_ip
    reservation_id = var.reservation_id
  }
}

output "floating_ip" {
  description = "Public address of the GPU node."
  value       = local.floating_ip
}
