"""Chameleon Cloud (OpenStack): Blazar leases, look-ups before `terraform plan`, the Ansible inventory.
May import chexops.core only; the commands are in chexops.cli.infra.
"""
