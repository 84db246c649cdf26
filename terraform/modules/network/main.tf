data "openstack_networking_network_v2" "external" {
  name     = var.external_network_name
  external = true
}

resource "openstack_networking_network_v2" "private" {
  name                  = "${var.name_prefix}-private"
  admin_state_up        = true
  port_security_enabled = true
}

resource "openstack_networking_subnet_v2" "private" {
  name            = "${var.name_prefix}-private"
  network_id      = openstack_networking_network_v2.private.id
  cidr            = var.cidr
  ip_version      = 4
  enable_dhcp     = true
  dns_nameservers = var.dns_nameservers

  # Host addresses .10 and above are reserved for the nodes' fixed ports.
  allocation_pool {
    start = cidrhost(var.cidr, 2)
    end   = cidrhost(var.cidr, 9)
  }
}

resource "openstack_networking_router_v2" "this" {
  name                = "${var.name_prefix}-router"
  admin_state_up      = true
  external_network_id = data.openstack_networking_network_v2.external.id
}

resource "openstack_networking_router_interface_v2" "private" {
  router_id = openstack_networking_router_v2.this.id
  subnet_id = openstack_networking_subnet_v2.private.id
}

# node2..N reach the GPU node's link address through node1, which holds the WireGuard end of the
# site link: a static route on the router they use as gateway (no per-node routing to manage).
resource "openstack_networking_router_route_v2" "site_link" {
  count = var.site_link_enabled ? 1 : 0

  router_id        = openstack_networking_router_v2.this.id
  destination_cidr = var.site_link_cidr
  next_hop         = var.edge_private_ip

  depends_on = [openstack_networking_router_interface_v2.private]
}

# The one floating IP of the cluster: node1's public address (SSH bastion, ingress, Kubernetes API,
# and the KVM end of the site link to the GPU node).
# With a Blazar floating-IP reservation (`chexops infra lease create --role kvm --floating-ips 1`) the
# address is reserved_floating_ip, already in the project while the lease is active: no allocation
# from the ad-hoc pool, which may run dry. Without one, an address comes from the pool as before.
resource "openstack_networking_floatingip_v2" "edge" {
  count = var.reserved_floating_ip == "" ? 1 : 0

  pool        = var.external_network_name
  description = "${var.name_prefix}: node1 (bastion, ingress, Kubernetes API, site link)"
}

data "openstack_networking_floatingip_v2" "edge_reserved" {
  count = var.reserved_floating_ip == "" ? 0 : 1

  address = var.reserved_floating_ip
}

locals {
  edge_floating_ip    = var.reserved_floating_ip == "" ? openstack_networking_floatingip_v2.edge[0].address : var.reserved_floating_ip
  edge_floating_ip_id = var.reserved_floating_ip == "" ? openstack_networking_floatingip_v2.edge[0].id : data.openstack_networking_floatingip_v2.edge_reserved[0].id
}

# Neutron refuses to associate a floating IP with a port whose subnet is not yet connected to a
# router on the external network ("External network ... is not reachable from subnet"): the
# association waits for the router interface.
resource "openstack_networking_floatingip_associate_v2" "edge" {
  floating_ip = local.edge_floating_ip
  port_id     = var.edge_port_id

  depends_on = [openstack_networking_router_interface_v2.private]
}

# ---------------------------------------------------------------------------------------------
# Security groups. "cluster": every node, traffic among cluster members only.
# "edge": node1 only, what the outside world may reach. Egress keeps OpenStack's default (all).
# ---------------------------------------------------------------------------------------------

resource "openstack_networking_secgroup_v2" "cluster" {
  name        = "${var.name_prefix}-cluster"
  description = "chexops: traffic among the cluster's own nodes"
}

resource "openstack_networking_secgroup_rule_v2" "cluster_internal" {
  for_each = toset(["tcp", "udp", "icmp"])

  description       = "All ${each.key} from members of this group (k3s, flannel, kubelet)"
  direction         = "ingress"
  ethertype         = "IPv4"
  protocol          = each.key
  remote_group_id   = openstack_networking_secgroup_v2.cluster.id
  security_group_id = openstack_networking_secgroup_v2.cluster.id
}

resource "openstack_networking_secgroup_rule_v2" "cluster_ssh_from_bastion" {
  description       = "SSH from the private subnet (ProxyJump through node1)"
  direction         = "ingress"
  ethertype         = "IPv4"
  protocol          = "tcp"
  port_range_min    = 22
  port_range_max    = 22
  remote_ip_prefix  = var.cidr
  security_group_id = openstack_networking_secgroup_v2.cluster.id
}

# The GPU node's traffic arrives from the site link (node1's WireGuard interface forwards it with
# the GPU node's link address as source): the cluster trusts the link's CIDR, a static value.
resource "openstack_networking_secgroup_rule_v2" "cluster_from_site_link" {
  for_each = var.site_link_enabled ? toset(["tcp", "udp", "icmp"]) : toset([])

  description       = "All ${each.key} from the GPU site over the site link (WireGuard via node1)"
  direction         = "ingress"
  ethertype         = "IPv4"
  protocol          = each.key
  remote_ip_prefix  = var.site_link_cidr
  security_group_id = openstack_networking_secgroup_v2.cluster.id
}

resource "openstack_networking_secgroup_v2" "edge" {
  name        = "${var.name_prefix}-edge"
  description = "chexops: what the outside world may reach on node1"
}

resource "openstack_networking_secgroup_rule_v2" "edge_ssh" {
  for_each = toset(var.ssh_allowed_cidrs)

  description       = "SSH from an operator network"
  direction         = "ingress"
  ethertype         = "IPv4"
  protocol          = "tcp"
  port_range_min    = 22
  port_range_max    = 22
  remote_ip_prefix  = each.value
  security_group_id = openstack_networking_secgroup_v2.edge.id
}

locals {
  ingress_rules = merge([
    for port in [80, 443] : {
      for cidr in var.ingress_allowed_cidrs : "${port}-${cidr}" => { port = port, cidr = cidr }
    }
  ]...)
}

resource "openstack_networking_secgroup_rule_v2" "edge_ingress" {
  for_each = local.ingress_rules

  description       = "HTTP(S) ingress (Traefik) on ${each.value.port}"
  direction         = "ingress"
  ethertype         = "IPv4"
  protocol          = "tcp"
  port_range_min    = each.value.port
  port_range_max    = each.value.port
  remote_ip_prefix  = each.value.cidr
  security_group_id = openstack_networking_secgroup_v2.edge.id
}

# Operators' kubectl only: the GPU node reaches the API over the site link, not the internet.
resource "openstack_networking_secgroup_rule_v2" "edge_k8s_api" {
  for_each = toset(var.k8s_api_allowed_cidrs)

  description       = "Kubernetes API (k3s server)"
  direction         = "ingress"
  ethertype         = "IPv4"
  protocol          = "tcp"
  port_range_min    = 6443
  port_range_max    = 6443
  remote_ip_prefix  = each.value
  security_group_id = openstack_networking_secgroup_v2.edge.id
}

# The peer's address is known only after apply: `count` on a plan-time bool, the address in the
# rule's body (a for_each over it fails the first plan with "Invalid for_each argument").
resource "openstack_networking_secgroup_rule_v2" "edge_site_link" {
  count = var.site_link_enabled ? 1 : 0

  description       = "Site link (WireGuard) from the GPU node"
  direction         = "ingress"
  ethertype         = "IPv4"
  protocol          = "udp"
  port_range_min    = var.site_link_port
  port_range_max    = var.site_link_port
  remote_ip_prefix  = "${var.site_link_peer_ip}/32"
  security_group_id = openstack_networking_secgroup_v2.edge.id
}
