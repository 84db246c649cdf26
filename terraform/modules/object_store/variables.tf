variable "container_name" {
  description = "Name of the Swift container."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{2,62}$", var.container_name))
    error_message = "container_name must be 3-63 lower-case letters, digits, '.' or '-'."
  }
}

variable "purpose" {
  description = "What the container holds, recorded in its metadata."
  type        = string
  default     = "chexops datasets"

  validation {
    condition     = length(var.purpose) > 0 && length(var.purpose) <= 255
    error_message = "purpose must be 1-255 characters."
  }
}
