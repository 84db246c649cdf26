variable "name_prefix" {
  description = "Prefix of every resource name."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", var.name_prefix))
    error_message = "name_prefix must be 3-32 lower-case letters, digits or '-'."
  }
}

variable "node_count" {
  description = "Number of KVM nodes (node1 is the k3s server, ingress and storage node)."
  type        = number

  validation {
    condition     = var.node_count >= 1 && var.node_count <= 10
    error_message = "node_count must be from 1 to 10."
  }
}

variable "reservation_id" {
  description = "Blazar flavor:instance reservation id; Blazar's reserved flavor has this id."
  type        = string

  validation {
    condition     = can(regex("^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", var.reservation_id))
    error_message = "reservation_id must be a UUID."
  }
}

variable "image_name" {
  description = "Glance image of the nodes."
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

variable "network_id" {
  description = "Private network the nodes' ports live on."
  type        = string

  validation {
    condition     = length(var.network_id) > 0
    error_message = "network_id must not be empty."
  }
}

variable "subnet_id" {
  description = "Private subnet of the nodes' fixed addresses."
  type        = string

  validation {
    condition     = length(var.subnet_id) > 0
    error_message = "subnet_id must not be empty."
  }
}

variable "subnet_cidr" {
  description = "CIDR of the private subnet; node N gets host address 10+N."
  type        = string

  validation {
    condition     = can(cidrnetmask(var.subnet_cidr))
    error_message = "subnet_cidr must be an IPv4 CIDR."
  }
}

variable "cluster_secgroup_id" {
  description = "Security group of every node."
  type        = string

  validation {
    condition     = length(var.cluster_secgroup_id) > 0
    error_message = "cluster_secgroup_id must not be empty."
  }
}

variable "edge_secgroup_id" {
  description = "Security group of node1, the only node with a public address."
  type        = string

  validation {
    condition     = length(var.edge_secgroup_id) > 0
    error_message = "edge_secgroup_id must not be empty."
  }
}

variable "forwarded_cidrs" {
  description = "Networks node1 forwards onto the private network (the site link): allowed as source addresses on its port."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.forwarded_cidrs : can(cidrnetmask(c))])
    error_message = "forwarded_cidrs must be IPv4 CIDRs."
  }
}

variable "tags" {
  description = "Tags set on every instance."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for t in var.tags : can(regex("^[A-Za-z0-9_.:-]{1,60}$", t))])
    error_message = "Each tag must be 1-60 characters of letters, digits, '_', '.', ':' or '-'."
  }
}
