variable "name_prefix" {
  description = "Prefix of every resource name."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", var.name_prefix))
    error_message = "name_prefix must be 3-32 lower-case letters, digits or '-'."
  }
}

variable "instance_id" {
  description = "Instance the volumes attach to (the storage node)."
  type        = string

  validation {
    condition     = length(var.instance_id) > 0
    error_message = "instance_id must not be empty."
  }
}

variable "volumes" {
  description = "Volumes keyed by name: size in GiB, mount point, purpose and optional Cinder volume type."
  type = map(object({
    size_gb     = number
    mount_point = string
    purpose     = string
    volume_type = optional(string)
  }))

  validation {
    condition     = alltrue([for v in var.volumes : v.size_gb >= 1 && v.size_gb <= 2000])
    error_message = "Every size_gb must be from 1 to 2000."
  }
}
