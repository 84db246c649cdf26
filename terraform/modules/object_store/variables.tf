variable "name_prefix" {
  description = "Prefix of every resource name; the container is <name_prefix>-data."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", var.name_prefix))
    error_message = "name_prefix must be 3-32 lower-case letters, digits or '-'."
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
