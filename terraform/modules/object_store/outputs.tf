output "container" {
  description = "Name of the object-store container."
  value       = openstack_objectstorage_container_v1.this.name
}
