"""`ansible-playbook site.yml` on the inventory `chexops infra inventory` wrote, after listing its hosts."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from chexops.core.errors import ChexopsError, UserInputError
from chexops.core.results import Result
from chexops.infra.inventory import summary

log = logging.getLogger(__name__)


class SiteRun(Result):
    """The hosts site.yml ran on, by group, and the command that ran."""

    inventory: str
    hosts: list[str]
    groups: dict[str, list[str]]
    command: list[str]


def inventory_hosts(path: Path) -> dict:
    """summary() of an inventory file: hosts, groups, bastion."""
    if not path.is_file():
        raise UserInputError(f"No inventory at {path}: run `make inventory` (chexops infra inventory) first.")
    try:
        inventory = yaml.safe_load(path.read_text())
        return summary(inventory)
    except (yaml.YAMLError, KeyError, TypeError, AttributeError) as exc:
        raise UserInputError(f"{path} is not an inventory written by `chexops infra inventory`: {exc}") from exc


def run_site(ansible_dir: Path, inventory: Path, extra: list[str], binary: str = "ansible-playbook") -> SiteRun:
    """Log the hosts, then run site.yml in ansible_dir (its ansible.cfg applies); its output goes to stderr."""
    playbook = ansible_dir / "site.yml"
    if not playbook.is_file():
        raise UserInputError(f"No {playbook}: run from the repository root or pass --ansible-dir.")
    hosts = inventory_hosts(inventory)
    log.info("site.yml will configure %d hosts (bastion %s):", len(hosts["hosts"]), hosts["bastion_ip"])
    for group, members in hosts["groups"].items():
        log.info("  %-12s %s", group, ", ".join(members) or "-")
    found = shutil.which(binary) or shutil.which(binary, path=str(Path(sys.executable).parent))
    if found is None:
        raise UserInputError(f"'{binary}' is not on PATH: install Ansible (docs/operations.md, step 0).")
    cmd = [found, "-i", str(inventory.resolve()), "site.yml", *extra]
    log.info("Running: %s (in %s)", " ".join(cmd), ansible_dir)
    # The play's output goes to stderr (stdout holds the result); stdin stays the terminal for vault prompts.
    proc = subprocess.run(cmd, cwd=ansible_dir, stdout=sys.__stderr__, check=False, env=dict(os.environ))
    if proc.returncode != 0:
        raise ChexopsError(f"ansible-playbook site.yml failed (exit {proc.returncode}): see the recap above.")
    return SiteRun(inventory=str(inventory), hosts=hosts["hosts"], groups=hosts["groups"], command=cmd)
