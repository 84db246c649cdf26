# Private container (no container_read ACL): only the project's credentials can read it. Named
# <name_prefix>-data, so that operators sharing a Chameleon project each have their own.
resource "openstack_objectstorage_container_v1" "this" {
  name = "${var.name_prefix}-data"

  metadata = {
    purpose = var.purpose
  }

  # A container that still holds objects is not deleted by `terraform destroy` (Swift refuses);
  # emptying it is an explicit step in docs/operations.md.
  force_destroy = false
}
