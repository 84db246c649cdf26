resource "openstack_blockstorage_volume_v3" "this" {
  for_each = var.volumes

  name        = "${var.name_prefix}-${each.key}"
  size        = each.value.size_gb
  volume_type = each.value.volume_type
  description = each.value.purpose

  metadata = {
    chexops_mount_point = each.value.mount_point
  }

  # Platform state and datasets outlive every lease and every `terraform destroy` of the rest:
  # Terraform refuses any plan that would delete a volume (docs/operations.md, "Tear down").
  lifecycle {
    prevent_destroy = true
  }
}
# Volumes are not leased: they outlive the instances when a lease ends, and a new lease +
# `terraform apply` re-attaches them with their data. prevent_destroy above: deleting one takes
# an edit of this file (docs/operations.md, "Tear down").

resource "openstack_compute_volume_attach_v2" "this" {
  for_each = var.volumes

  instance_id = var.instance_id
  volume_id   = openstack_blockstorage_volume_v3.this[each.key].id
}
