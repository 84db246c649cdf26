variable "name_prefix" {
  description = "Prefix of every resource name."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", var.name_prefix))
    error_message = "name_prefix must be 3-32 lower-case letters, digits or '-'."
  }
}

variable "node_name" {
  description = "Short name of the GPU node (inventory host name)."
  type        = string
  default     = "gpu1"

  validation {
    condition     = can(regex("^[a-z][a-z0-9]{0,15}$", var.node_name))
    error_message = "node_name must be 1-16 lower-case letters or digits, starting with a letter."
  }
}

variable "reservation_id" {
  description = "Blazar physical:host reservation id, passed to Nova as the 'reservation' scheduler hint."
  type        = string

  validation {
    condition     = can(regex("^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", var.reservation_id))
    error_message = "reservation_id must be a UUID."
  }
}

variable "image_name" {
  description = "Glance image of the GPU node."
  type        = string

  validation {
    condition     = length(trimspace(var.image_name)) > 0
    error_message = "image_name must not be empty."
  }
}

variable "key_pair" {
  description = "Nova key pair installed for the 'cc' user."
  type        = string

  validation {
    condition     = length(trimspace(var.key_pair)) > 0
    error_message = "key_pair must not be empty."
  }
}

variable "network_name" {
  description = "Existing network of the bare-metal site (sharednet1)."
  type        = string

  validation {
    condition     = length(trimspace(var.network_name)) > 0
    error_message = "network_name must not be empty."
  }
}

variable "external_network_name" {
  description = "External network that the floating IP comes from."
  type        = string

  validation {
    condition     = length(trimspace(var.external_network_name)) > 0
    error_message = "external_network_name must not be empty."
  }
}

variable "ssh_allowed_cidrs" {
  description = "Source CIDRs allowed to reach SSH on the GPU node."
  type        = list(string)

  validation {
    condition     = length(var.ssh_allowed_cidrs) > 0 && alltrue([for c in var.ssh_allowed_cidrs : can(cidrnetmask(c)) && tonumber(split("/", c)[1]) >= 8])
    error_message = "ssh_allowed_cidrs must be IPv4 CIDRs of /8 or longer; SSH is never open to 0.0.0.0/0."
  }
}

variable "site_link_peer_ip" {
  description = "node1's floating IP, the KVM end of the site link (WireGuard). Known only after apply: never used in count/for_each."
  type        = string

  validation {
    condition     = can(cidrhost("${var.site_link_peer_ip}/32", 0))
    error_message = "site_link_peer_ip must be an IPv4 address."
  }
}

variable "site_link_port" {
  description = "UDP port of the site link's WireGuard endpoints."
  type        = number

  validation {
    condition     = var.site_link_port >= 1024 && var.site_link_port <= 65535
    error_message = "site_link_port must be a UDP port from 1024 to 65535."
  }
}

variable "tags" {
  description = "Tags set on the instance."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for t in var.tags : can(regex("^[A-Za-z0-9_.:-]{1,60}$", t))])
    error_message = "Each tag must be 1-60 characters of letters, digits, '_', '.', ':' or '-'."
  }
}

variable "reserved_floating_ip" {
  description = "A floating IP of a Blazar floating-IP reservation, for the GPU node; empty: allocate one from the external network's pool."
  type        = string
  default     = ""

  validation {
    condition     = var.reserved_floating_ip == "" || can(cidrhost("${var.reserved_floating_ip}/32", 0))
    error_message = "reserved_floating_ip must be empty or an IPv4 address."
  }
}
