terraform {
  # 1.9+ for validation rules that refer to other variables.
  required_version = ">= 1.9.0, < 2.0.0"

  required_providers {
    openstack = {
      source = "terraform-provider-openstack/openstack"
      # Pinned to one minor release; `terraform init` records the exact build in .terraform.lock.hcl,
      # which operators commit after their first init (it cannot be produced offline).
      version = "~> 3.3.0"
    }
  }
}
