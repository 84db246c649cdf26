output "nodes" {
  description = "KVM nodes by name: instance id, private address and k3s role."
  value = {
    for name, inst in openstack_compute_instance_v2.node : name => {
      id         = inst.id
      private_ip = openstack_networking_port_v2.node[name].all_fixed_ips[0]
      role       = name == "node1" ? "k3s_server" : "k3s_agent"
    }
  }
}

output "storage_node_id" {
  description = "Instance id of node1, which the Cinder volumes attach to."
  value       = openstack_compute_instance_v2.node["node1"].id
}

output "edge_port_id" {
  description = "Port of node1 that carries the floating IP."
  value       = openstack_networking_port_v2.node["node1"].id
}

output "edge_private_ip" {
  description = "Private address of node1: the next hop to the site link for the other nodes."
  value       = openstack_networking_port_v2.node["node1"].all_fixed_ips[0]
}
