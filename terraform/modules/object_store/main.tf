# Private container (no container_read ACL): only the project's credentials can read it.
resource "openstack_objectstorage_container_v1" "this" {
  name = var.container_name

  metadata = {
    purpose = var.purpose
  }

  # A container that still holds objects is not deleted by `terraform destroy` (Swift refuses);
  # emptying it is an explicit step in docs/operations.md.
  force_destroy = false
}
