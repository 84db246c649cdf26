output "network_id" {
  description = "Id of the private network."
  value       = openstack_networking_network_v2.private.id
}

output "subnet_id" {
  description = "Id of the private subnet."
  value       = openstack_networking_subnet_v2.private.id
}

output "cidr" {
  description = "CIDR of the private subnet."
  value       = openstack_networking_subnet_v2.private.cidr
}

output "router_id" {
  description = "Id of the router that uplinks the private subnet."
  value       = openstack_networking_router_v2.this.id
}

output "edge_floating_ip" {
  description = "The cluster's one floating IP (node1)."
  value       = local.edge_floating_ip
}

output "edge_floating_ip_id" {
  description = "Id of the cluster's floating IP, for the association with node1's port."
  value       = local.edge_floating_ip_id
}

output "cluster_secgroup_id" {
  description = "Security group of every cluster node."
  value       = openstack_networking_secgroup_v2.cluster.id
}

output "edge_secgroup_id" {
  description = "Security group of the public node (node1)."
  value       = openstack_networking_secgroup_v2.edge.id
}
