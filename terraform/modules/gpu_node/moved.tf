# The floating IP became conditional (count) when reserved floating IPs arrived: the existing one
# keeps its address instead of being destroyed and re-allocated.
moved {
  from = openstack_networking_floatingip_v2.gpu
  to   = openstack_networking_floatingip_v2.gpu[0]
}
