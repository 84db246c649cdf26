variable "name_prefix" {
  description = "Prefix of every resource name."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", var.name_prefix))
    error_message = "name_prefix must be 3-32 lower-case letters, digits or '-'."
  }
}

variable "cidr" {
  description = "IPv4 CIDR of the private subnet."
  type        = string

  validation {
    condition     = can(cidrnetmask(var.cidr))
    error_message = "cidr must be an IPv4 CIDR."
  }
}

variable "dns_nameservers" {
  description = "DNS resolvers handed out by DHCP on the private subnet."
  type        = list(string)

  validation {
    condition     = alltrue([for ip in var.dns_nameservers : can(cidrhost("${ip}/32", 0))])
    error_message = "dns_nameservers must be IPv4 addresses."
  }
}

variable "external_network_name" {
  description = "External network that the router uplinks to and floating IPs come from."
  type        = string

  validation {
    condition     = length(trimspace(var.external_network_name)) > 0
    error_message = "external_network_name must not be empty."
  }
}

variable "ssh_allowed_cidrs" {
  description = "Source CIDRs allowed to reach SSH on the public (edge) node."
  type        = list(string)

  validation {
    condition     = length(var.ssh_allowed_cidrs) > 0 && alltrue([for c in var.ssh_allowed_cidrs : can(cidrnetmask(c)) && tonumber(split("/", c)[1]) >= 8])
    error_message = "ssh_allowed_cidrs must be IPv4 CIDRs of /8 or longer; SSH is never open to 0.0.0.0/0."
  }
}

variable "ingress_allowed_cidrs" {
  description = "Source CIDRs allowed to reach HTTP/HTTPS on the edge node."
  type        = list(string)

  validation {
    condition     = alltrue([for c in var.ingress_allowed_cidrs : can(cidrnetmask(c))])
    error_message = "ingress_allowed_cidrs must be IPv4 CIDRs."
  }
}

variable "k8s_api_allowed_cidrs" {
  description = "Source CIDRs allowed to reach the Kubernetes API (6443) on the edge node."
  type        = list(string)

  validation {
    condition     = alltrue([for c in var.k8s_api_allowed_cidrs : can(cidrnetmask(c)) && tonumber(split("/", c)[1]) >= 8])
    error_message = "k8s_api_allowed_cidrs must be IPv4 CIDRs of /8 or longer."
  }
}

variable "edge_port_id" {
  description = "Port of node1 that carries the cluster's floating IP."
  type        = string

  validation {
    condition     = length(trimspace(var.edge_port_id)) > 0
    error_message = "edge_port_id must not be empty."
  }
}

variable "edge_private_ip" {
  description = "Private address of node1, the next hop of the site link for the other nodes."
  type        = string

  validation {
    condition     = length(trimspace(var.edge_private_ip)) > 0
    error_message = "edge_private_ip must not be empty."
  }
}

variable "site_link_enabled" {
  description = "Whether a GPU node on another site joins over the site link (known at plan time: gpu_enabled)."
  type        = bool
  default     = false
}

variable "site_link_cidr" {
  description = "CIDR of the site link (WireGuard between node1 and the GPU node); the cluster trusts it."
  type        = string

  validation {
    condition     = can(cidrnetmask(var.site_link_cidr))
    error_message = "site_link_cidr must be an IPv4 CIDR."
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

variable "site_link_peer_ip" {
  description = "Public address of the GPU node (the other end of the site link); empty without one. Known only after apply: never used in count/for_each."
  type        = string
  default     = ""

  validation {
    condition     = var.site_link_peer_ip == "" || can(cidrhost("${var.site_link_peer_ip}/32", 0))
    error_message = "site_link_peer_ip must be an IPv4 address or empty."
  }
}

variable "reserved_floating_ip" {
  description = "A floating IP of a Blazar floating-IP reservation, for node1; empty: allocate one from the external network's pool."
  type        = string
  default     = ""

  validation {
    condition     = var.reserved_floating_ip == "" || can(cidrhost("${var.reserved_floating_ip}/32", 0))
    error_message = "reserved_floating_ip must be empty or an IPv4 address."
  }
}
