data "openstack_networking_network_v2" "site" {
  name = var.network_name
}

# Chameleon bare metal does not always enforce security groups on sharednet1 ports; the common
# role's host firewall (nftables) enforces the same policy on the node itself.
resource "openstack_networking_secgroup_v2" "gpu" {
  name        = "${var.name_prefix}-${var.node_name}"
  description = "chexops: GPU node (SSH from operators, WireGuard and kubelet from the cluster)"
}

resource "openstack_networking_secgroup_rule_v2" "ssh" {
  for_each = toset(var.ssh_allowed_cidrs)

  description       = "SSH from an operator network"
  direction         = "ingress"
  ethertype         = "IPv4"
  protocol          = "tcp"
  port_range_min    = 22
  port_range_max    = 22
  remote_ip_prefix  = each.value
  security_group_id = openstack_networking_secgroup_v2.gpu.id
}

resource "openstack_networking_secgroup_rule_v2" "wireguard" {
  for_each = toset(var.peer_cidrs)

  description       = "flannel wireguard-native from the KVM cluster"
  direction         = "ingress"
  ethertype         = "IPv4"
  protocol          = "udp"
  port_range_min    = 51820
  port_range_max    = 51821
  remote_ip_prefix  = each.value
  security_group_id = openstack_networking_secgroup_v2.gpu.id
}

resource "openstack_networking_secgroup_rule_v2" "kubelet" {
  for_each = toset(var.peer_cidrs)

  description       = "kubelet API from the k3s server"
  direction         = "ingress"
  ethertype         = "IPv4"
  protocol          = "tcp"
  port_range_min    = 10250
  port_range_max    = 10250
  remote_ip_prefix  = each.value
  security_group_id = openstack_networking_secgroup_v2.gpu.id
}

resource "openstack_networking_port_v2" "gpu" {
  name               = "${var.name_prefix}-${var.node_name}"
  network_id         = data.openstack_networking_network_v2.site.id
  admin_state_up     = true
  security_group_ids = [openstack_networking_secgroup_v2.gpu.id]
}

resource "openstack_compute_instance_v2" "gpu" {
  name         = "${var.name_prefix}-${var.node_name}"
  image_name   = var.image_name
  flavor_name  = "baremetal"
  key_pair     = var.key_pair
  tags         = var.tags
  config_drive = true

  network {
    port = openstack_networking_port_v2.gpu.id
  }

  # Bare metal on Chameleon is scheduled only onto a host of an active Blazar reservation.
  scheduler_hints {
    additional_properties = {
      reservation = var.reservation_id
    }
  }

  metadata = {
    chexops_role = "gpu"
  }

  lifecycle {
    ignore_changes = [image_name]
  }
}

resource "openstack_networking_floatingip_v2" "gpu" {
  pool        = var.external_network_name
  description = "${var.name_prefix}: ${var.node_name} (GPU node)"
}

resource "openstack_networking_floatingip_associate_v2" "gpu" {
  floating_ip = openstack_networking_floatingip_v2.gpu.address
  port_id     = openstack_networking_port_v2.gpu.id

  depends_on = [openstack_compute_instance_v2.gpu]
}
