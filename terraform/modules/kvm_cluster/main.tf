locals {
  node_names = [for i in range(var.node_count) : "node${i + 1}"]
}

resource "openstack_networking_port_v2" "node" {
  for_each = toset(local.node_names)

  name               = "${var.name_prefix}-${each.key}"
  network_id         = var.network_id
  admin_state_up     = true
  security_group_ids = each.key == "node1" ? [var.cluster_secgroup_id, var.edge_secgroup_id] : [var.cluster_secgroup_id]

  fixed_ip {
    subnet_id  = var.subnet_id
    ip_address = cidrhost(var.subnet_cidr, 10 + index(local.node_names, each.key) + 1)
  }

  # node1 forwards the site link (WireGuard to the GPU node) onto the private network: packets it
  # forwards carry the GPU node's link address as source, which port security must allow.
  dynamic "allowed_address_pairs" {
    for_each = each.key == "node1" ? var.forwarded_cidrs : []
    content {
      ip_address = allowed_address_pairs.value
    }
  }
}

resource "openstack_compute_instance_v2" "node" {
  for_each = toset(local.node_names)

  name         = "${var.name_prefix}-${each.key}"
  image_name   = var.image_name
  flavor_id    = var.reservation_id # KVM@TACC: the reserved flavor's id is the reservation id
  key_pair     = var.key_pair
  tags         = var.tags
  config_drive = true

  network {
    port = openstack_networking_port_v2.node[each.key].id
  }

  metadata = {
    chexops_role = each.key == "node1" ? "k3s_server" : "k3s_agent"
  }

  # The reservation fixes the flavor: a change of reservation replaces nodes only through an
  # explicit `terraform apply -replace`, never as a side effect of a new lease.
  lifecycle {
    ignore_changes = [flavor_id, image_name]
  }
}
