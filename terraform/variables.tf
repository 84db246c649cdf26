# ---------------------------------------------------------------------------------------------
# Sites and credentials (names of clouds.yaml entries; no secret here)
# ---------------------------------------------------------------------------------------------

variable "kvm_cloud" {
  description = "Name of the clouds.yaml entry for KVM@TACC, where the Kubernetes CPU nodes, the private network and the Cinder volumes live."
  type        = string
  default     = "kvm_tacc"

  validation {
    condition     = can(regex("^[A-Za-z0-9_.@-]{1,64}$", var.kvm_cloud))
    error_message = "kvm_cloud must be a clouds.yaml entry name (letters, digits, '_', '.', '@', '-')."
  }
}

variable "chi_cloud" {
  description = "Name of the clouds.yaml entry for the bare-metal site (CHI@UC or CHI@TACC) that hosts the GPU node and the object-store container."
  type        = string
  default     = "chi_uc"

  validation {
    condition     = can(regex("^[A-Za-z0-9_.@-]{1,64}$", var.chi_cloud))
    error_message = "chi_cloud must be a clouds.yaml entry name (letters, digits, '_', '.', '@', '-')."
  }
}

variable "name_prefix" {
  description = "Prefix of every resource name, so that several operators can share one Chameleon project (e.g. chexops-<netid>)."
  type        = string
  default     = "chexops"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", var.name_prefix))
    error_message = "name_prefix must be 3-32 lower-case letters, digits or '-', starting with a letter and not ending with '-'."
  }
}

variable "key_pair" {
  description = "Name of an existing Nova key pair, present on BOTH sites, whose public key is installed for the 'cc' user."
  type        = string

  validation {
    condition     = length(trimspace(var.key_pair)) > 0 && length(var.key_pair) <= 255
    error_message = "key_pair must name an existing key pair (1-255 characters)."
  }
}

# ---------------------------------------------------------------------------------------------
# Reservations (written by `chexops infra lease create` into reservations.auto.tfvars.json)
# ---------------------------------------------------------------------------------------------

variable "kvm_reservation_id" {
  description = "Id of the active Blazar flavor:instance reservation on KVM@TACC; Blazar creates a private flavor whose id is this reservation id, and every CPU node boots with it."
  type        = string

  validation {
    condition     = can(regex("^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", var.kvm_reservation_id))
    error_message = "kvm_reservation_id must be a reservation UUID (see `chexops infra lease status`)."
  }
}

variable "gpu_enabled" {
  description = "Whether to create the GPU bare-metal node (and its reservation-bound instance) on the CHI site."
  type        = bool
  default     = true
}

variable "gpu_reservation_id" {
  description = "Id of the active Blazar physical:host reservation for the GPU node; passed to Nova as the 'reservation' scheduler hint. Empty only when gpu_enabled is false."
  type        = string
  default     = ""

  validation {
    condition = (
      var.gpu_reservation_id == "" ? !var.gpu_enabled :
      can(regex("^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", var.gpu_reservation_id))
    )
    error_message = "gpu_reservation_id must be a reservation UUID when gpu_enabled is true (run `chexops infra lease create --role gpu`)."
  }
}

variable "kvm_floating_ips" {
  description = "Floating IPs of a Blazar virtual:floatingip reservation on KVM@TACC, written by `chexops infra lease create --role kvm --floating-ips 1`: node1 takes the first instead of allocating one from the ad-hoc pool. Empty: allocate from the pool."
  type        = list(string)
  default     = []

  validation {
    condition     = length(var.kvm_floating_ips) <= 4 && alltrue([for ip in var.kvm_floating_ips : can(cidrhost("${ip}/32", 0))])
    error_message = "kvm_floating_ips must be a list of at most 4 IPv4 addresses (see `chexops infra lease status`)."
  }
}

variable "gpu_floating_ips" {
  description = "Floating IPs of a Blazar virtual:floatingip reservation on the CHI site, written by `chexops infra lease create --role gpu --floating-ips 1`: the GPU node takes the first instead of allocating one from the ad-hoc pool. Empty: allocate from the pool."
  type        = list(string)
  default     = []

  validation {
    condition     = length(var.gpu_floating_ips) <= 4 && alltrue([for ip in var.gpu_floating_ips : can(cidrhost("${ip}/32", 0))])
    error_message = "gpu_floating_ips must be a list of at most 4 IPv4 addresses (see `chexops infra lease status`)."
  }
}

# ---------------------------------------------------------------------------------------------
# Nodes
# ---------------------------------------------------------------------------------------------

variable "kvm_node_count" {
  description = "Number of KVM CPU nodes: node1 is the k3s server, ingress and storage node; the others are k3s agents. Must not exceed the reservation's amount."
  type        = number
  default     = 3

  validation {
    condition     = var.kvm_node_count >= 1 && var.kvm_node_count <= 10 && floor(var.kvm_node_count) == var.kvm_node_count
    error_message = "kvm_node_count must be a whole number from 1 to 10."
  }
}

variable "kvm_image_name" {
  description = "Glance image of the KVM CPU nodes."
  type        = string
  default     = "CC-Ubuntu24.04"

  validation {
    condition     = length(trimspace(var.kvm_image_name)) > 0
    error_message = "kvm_image_name must not be empty."
  }
}

variable "gpu_image_name" {
  description = "Glance image of the GPU bare-metal node (the CUDA image ships the NVIDIA driver)."
  type        = string
  default     = "CC-Ubuntu24.04-CUDA"

  validation {
    condition     = length(trimspace(var.gpu_image_name)) > 0
    error_message = "gpu_image_name must not be empty."
  }
}

variable "gpu_network_name" {
  description = "Existing network of the CHI site that bare-metal nodes attach to."
  type        = string
  default     = "sharednet1"

  validation {
    condition     = length(trimspace(var.gpu_network_name)) > 0
    error_message = "gpu_network_name must not be empty."
  }
}

# ---------------------------------------------------------------------------------------------
# Network and exposure
# ---------------------------------------------------------------------------------------------

variable "external_network_name" {
  description = "Name of the external (floating IP) network, the same on every Chameleon site."
  type        = string
  default     = "public"

  validation {
    condition     = length(trimspace(var.external_network_name)) > 0
    error_message = "external_network_name must not be empty."
  }
}

variable "private_network_cidr" {
  description = "CIDR of the private network of the KVM nodes; node N gets host address 10+N."
  type        = string
  default     = "192.168.50.0/24"

  validation {
    condition     = can(cidrhost(var.private_network_cidr, 20)) && tonumber(split("/", var.private_network_cidr)[1]) <= 27
    error_message = "private_network_cidr must be an IPv4 CIDR of /27 or larger."
  }
}

variable "dns_nameservers" {
  description = "DNS resolvers handed out by the private subnet's DHCP."
  type        = list(string)
  default     = ["8.8.8.8", "8.8.4.4"]

  validation {
    condition     = length(var.dns_nameservers) > 0 && alltrue([for ip in var.dns_nameservers : can(cidrhost("${ip}/32", 0))])
    error_message = "dns_nameservers must be a non-empty list of IPv4 addresses."
  }
}

variable "ssh_allowed_cidrs" {
  description = "Source CIDRs allowed to reach SSH (port 22) on the public addresses, e.g. your campus or VPN range. The whole internet (0.0.0.0/0) is refused."
  type        = list(string)

  validation {
    condition     = length(var.ssh_allowed_cidrs) > 0 && alltrue([for c in var.ssh_allowed_cidrs : can(cidrnetmask(c))])
    error_message = "ssh_allowed_cidrs must be a non-empty list of IPv4 CIDRs (e.g. 203.0.113.0/24)."
  }

  validation {
    condition     = alltrue([for c in var.ssh_allowed_cidrs : tonumber(split("/", c)[1]) >= 8])
    error_message = "ssh_allowed_cidrs must not open SSH to the whole internet: use prefixes of /8 or longer (0.0.0.0/0 is refused)."
  }
}

variable "k8s_api_allowed_cidrs" {
  description = "Source CIDRs allowed to reach the Kubernetes API (6443) on node1's floating IP, for operators' kubectl. Unset (null): ssh_allowed_cidrs; [] closes the API to outside sources. The GPU node is always allowed."
  type        = list(string)
  default     = null
  nullable    = true

  validation {
    condition     = var.k8s_api_allowed_cidrs == null ? true : alltrue([for c in var.k8s_api_allowed_cidrs : can(cidrnetmask(c)) && tonumber(split("/", c)[1]) >= 8])
    error_message = "k8s_api_allowed_cidrs must be IPv4 CIDRs of /8 or longer."
  }
}

variable "ingress_allowed_cidrs" {
  description = "Source CIDRs allowed to reach the HTTP(S) ingress (80/443) on node1's floating IP: the clinic endpoint, Argo CD and MLflow UIs."
  type        = list(string)
  default     = ["0.0.0.0/0"]

  validation {
    condition     = length(var.ingress_allowed_cidrs) > 0 && alltrue([for c in var.ingress_allowed_cidrs : can(cidrnetmask(c))])
    error_message = "ingress_allowed_cidrs must be a non-empty list of IPv4 CIDRs."
  }
}

variable "site_link_cidr" {
  description = "CIDR of the site link, the WireGuard tunnel between node1 and the GPU node (node1 = .1, GPU node = .2); must not overlap the private network, the pod or service networks, or the CHI site's network."
  type        = string
  default     = "10.99.0.0/24"

  validation {
    condition     = can(cidrhost(var.site_link_cidr, 2)) && tonumber(split("/", var.site_link_cidr)[1]) >= 16 && tonumber(split("/", var.site_link_cidr)[1]) <= 29
    error_message = "site_link_cidr must be an IPv4 CIDR from /16 to /29."
  }

  validation {
    condition     = !can(regex("^10\\.4[23]\\.", var.site_link_cidr)) && cidrhost(var.site_link_cidr, 0) != cidrhost(var.private_network_cidr, 0)
    error_message = "site_link_cidr must not be the private network or lie in k3s's pod/service networks (10.42.0.0/16, 10.43.0.0/16)."
  }
}

variable "site_link_port" {
  description = "UDP port of the site link's WireGuard endpoints (node1's and the GPU node's floating IPs)."
  type        = number
  default     = 51820

  validation {
    condition     = var.site_link_port >= 1024 && var.site_link_port <= 65535 && floor(var.site_link_port) == var.site_link_port
    error_message = "site_link_port must be a UDP port from 1024 to 65535."
  }
}

# ---------------------------------------------------------------------------------------------
# Storage
# ---------------------------------------------------------------------------------------------

variable "volumes" {
  description = "Cinder volumes attached to node1 (the storage node), keyed by name: size in GiB, mount point and what lives there. Ansible's volumes role formats a volume only if it is blank."
  type = map(object({
    size_gb     = number
    mount_point = string
    purpose     = string
    volume_type = optional(string)
  }))
  default = {
    platform = {
      size_gb     = 100
      mount_point = "/mnt/platform"
      purpose     = "Platform state: PostgreSQL (MLflow backend), MinIO (artifacts), MLflow."
    }
    datasets = {
      size_gb     = 200
      mount_point = "/mnt/datasets"
      purpose     = "CheXpert images and prepared datasets."
    }
  }

  validation {
    condition     = length(var.volumes) <= 8 && alltrue([for k, v in var.volumes : can(regex("^[a-z][a-z0-9_]{0,30}$", k))])
    error_message = "volumes may hold at most 8 entries, keyed by lower-case names (letters, digits, '_')."
  }

  validation {
    condition     = alltrue([for v in var.volumes : v.size_gb >= 1 && v.size_gb <= 2000 && floor(v.size_gb) == v.size_gb])
    error_message = "Every volume size_gb must be a whole number from 1 to 2000."
  }

  validation {
    condition     = alltrue([for v in var.volumes : can(regex("^/(mnt|srv|data|var/lib)/[A-Za-z0-9._/-]+$", v.mount_point))])
    error_message = "Every mount_point must be an absolute path under /mnt, /srv, /data or /var/lib."
  }

  validation {
    condition     = length(distinct([for v in var.volumes : v.mount_point])) == length(var.volumes)
    error_message = "Two volumes cannot share a mount_point."
  }
}

variable "tags" {
  description = "Tags set on the instances, to find them in Horizon and in `openstack server list --tags`."
  type        = list(string)
  default     = ["chexops"]

  validation {
    condition     = alltrue([for t in var.tags : can(regex("^[A-Za-z0-9_.:-]{1,60}$", t))])
    error_message = "Each tag must be 1-60 characters of letters, digits, '_', '.', ':' or '-'."
  }
}
