"""Chameleon Cloud infrastructure helpers: Blazar leases and the Ansible inventory.

`chexops infra lease create|status|extend|delete` drives Blazar (Terraform has no lease resource)
and writes the reservation ids into a tfvars file Terraform reads; `chexops infra inventory` turns
`terraform output -json` into the Ansible inventory. The click group is `chexops.cli.infra.infra`.
"""
