data "openstack_networking_network_v2" "site" {
  name = var.network_name
}

# CHI sites (bare metal) do NOT enforce security groups: these rules document the intended policy
# and apply only where a site starts enforcing them. What protects the node is its host firewall
# (the common role's nftables ruleset), not this group.
resource "openstack_networking_secgroup_v2" "gpu" {
  name        = "${var.name_prefix}-${var.node_name}"
  description = "chexops: GPU node (SSH from operators, the site link from node1)"
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

# The site link: WireGuard from node1's floating IP only. The Kubernetes API, kubelet and the pod
# network all run inside it, so nothing else is open to the internet. The peer's address is known
# only after apply, hence one rule with the address in its body, never a for_each over it.
resource "openstack_networking_secgroup_rule_v2" "site_link" {
  description       = "Site link (WireGuard) from the KVM cluster's node1"
  direction         = "ingress"
  ethertype         = "IPv4"
  protocol          = "udp"
  port_range_min    = var.site_link_port
  port_range_max    = var.site_link_port
  remote_ip_prefix  = "${var.site_link_peer_ip}/32"
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

  # Bare metal deploys (image written to disk, reboots) often take longer than the provider's 30-minute
  # default; a timeout would leave a tainted instance that the next apply destroys and redeploys.
  timeouts {
    create = "90m"
    delete = "30m"
  }
}

# A reserved address (Blazar virtual:floatingip, `chexops infra lease create --role gpu --floating-ips 1`)
# is used as it is; without one, an address comes from the site's ad-hoc pool.
resource "openstack_networking_floatingip_v2" "gpu" {
  count = var.reserved_floating_ip == "" ? 1 : 0

  pool        = var.external_network_name
  description = "${var.name_prefix}: ${var.node_name} (GPU node)"
}

locals {
  floating_ip = var.reserved_floating_ip == "" ? openstack_networking_floatingip_v2.gpu[0].address : var.reserved_floating_ip
}

resource "openstack_networking_floatingip_associate_v2" "gpu" {
  floating_ip = local.floating_ip
  port_id     = openstack_networking_port_v2.gpu.id

  depends_on = [openstack_compute_instance_v2.gpu]
}
