output "volumes" {
  description = "Volumes by name: id, device as Nova reports it, stable /dev/disk/by-id path (virtio serial = first 20 characters of the id), mount point, size and purpose."
  value = {
    for name, vol in openstack_blockstorage_volume_v3.this : name => {
      id          = vol.id
      device      = openstack_compute_volume_attach_v2.this[name].device
      by_id_path  = "/dev/disk/by-id/virtio-${substr(vol.id, 0, 20)}"
      mount_point = var.volumes[name].mount_point
      size_gb     = vol.size
      purpose     = var.volumes[name].purpose
    }
  }
}
