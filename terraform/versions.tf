terraform {
  # 1.9+ for validation rules that refer to other variables; 1.11+ for the S3 backend's lock file
  # (use_lockfile in backend.hcl).
  required_version = ">= 1.11.0, < 2.0.0"

  # Remote state in Chameleon's object store (Ceph RGW, S3 API), locked with a lock file next to
  # it. Partial configuration: the bucket, endpoint and credentials come from backend.hcl
  # (terraform init -backend-config=backend.hcl; see backend.hcl.example and
  # docs/operations.md, "Remote state"). `make infra-init` runs exactly that.
  backend "s3" {}

  required_providers {
    openstack = {
      source = "terraform-provider-openstack/openstack"
      # Pinned to one minor release; `terraform init` records the exact build in .terraform.lock.hcl,
      # which operators commit after their first init (it cannot be produced offline).
      version = "~> 3.3.0"
    }
  }
}
