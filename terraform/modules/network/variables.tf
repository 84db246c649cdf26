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

variable "peer_cidrs" {
  description = "Nodes on other sites (the GPU node's /32) allowed to join the cluster: Kubernetes API (6443/tcp) and flannel WireGuard (51820-51821/udp)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.peer_cidrs : can(cidrnetmask(c))])
    error_message = "peer_cidrs must be IPv4 CIDRs."
  }
}
