"""`terraform output -json` -> the Ansible inventory (YAML) that ansible/site.yml runs against.

The outputs are a contract with terraform/outputs.tf: REQUIRED_OUTPUTS must be there (the firewall
lists among them: Terraform's variables are their only source), OPTIONAL_OUTPUTS are passed on
as `chexops_<name>` when present.

SSH: the inventory names its own known_hosts file (next to it) and reaches private nodes through
node1 with a ProxyCommand that carries the key and the host-key options to the jump host too
(`-o ProxyJump` would apply them to the destination only). A host whose instance Terraform replaced
(a re-lease: same address, new machine, new host key) has its old key forgotten there, and only then.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from chexops.core.errors import ChexopsError, UserInputError
from chexops.core.files import atomic_write_text

log = logging.getLogger(__name__)

#: The firewall lists (SSH, ingress) are required: the host firewall takes them from here and only
#: from here (no open fallback), so Terraform's variables are their one source of truth.
REQUIRED_OUTPUTS = (
    "ssh_user",
    "bastion_ip",
    "nodes",
    "volumes",
    "private_network_cidr",
    "ssh_allowed_cidrs",
    "ingress_allowed_cidrs",
)
OPTIONAL_OUTPUTS = (
    "k8s_api_endpoint",
    "object_store_container",
    "reservations",
    "k8s_api_allowed_cidrs",
    "site_link",
)
#: Groups site.yml targets; every one exists in the inventory, even when empty.
GROUPS = ("kvm", "gpu", "k3s_server", "k3s_agent", "storage")
_HOST_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
#: The SSH options for every connection, to the jump host as to the destination (ansible.cfg's ssh_args
#: reach only the destination): first contact records a key, a changed key is refused.
SSH_OPTIONS = ("StrictHostKeyChecking=accept-new", "ServerAliveInterval=30")
KNOWN_HOSTS = "known_hosts"


def terraform_output(tf_dir: Path, terraform: str = "terraform") -> dict[str, Any]:
    """Run `terraform output -json` in tf_dir and return its decoded JSON."""
    binary = shutil.which(terraform)
    if binary is None:
        raise ChexopsError(f"'{terraform}' is not on PATH: install Terraform >= 1.9, or pass --from-json FILE.")
    if not tf_dir.is_dir():
        raise UserInputError(f"Terraform directory {tf_dir} does not exist.")
    log.info("Reading outputs: terraform -chdir=%s output -json", tf_dir)
    proc = subprocess.run(
        [binary, f"-chdir={tf_dir}", "output", "-json"], capture_output=True, text=True, check=False, timeout=120
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-800:]
        raise ChexopsError(f"terraform output failed in {tf_dir} (exit {proc.returncode}): {tail}")
    try:
        return json.loads(proc.stdout or "{}")
    except json.JSONDecodeError as exc:
        raise ChexopsError(f"terraform output -json printed something that is not JSON: {exc}") from exc


def load_outputs(path: Path) -> dict[str, Any]:
    """Outputs recorded with `terraform output -json > FILE`."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserInputError(f"Cannot read {path}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise UserInputError(f"{path} is not JSON (expected `terraform output -json`): {exc}") from exc


def _values(outputs: dict[str, Any]) -> dict[str, Any]:
    """{name: {"value": v, ...}} (terraform's format) -> {name: v}."""
    if not isinstance(outputs, dict):
        raise UserInputError("terraform output -json must be a JSON object.")
    if not outputs:
        raise UserInputError("Terraform has no outputs: run `terraform apply` in terraform/ first.")
    values = {}
    for name, item in outputs.items():
        values[name] = item["value"] if isinstance(item, dict) and "value" in item else item
    missing = [name for name in REQUIRED_OUTPUTS if values.get(name) in (None, "", [])]
    if missing:
        raise UserInputError(
            f"terraform output lacks {', '.join(missing)}: is terraform/ at the same revision as chexops? "
            "Run `terraform apply` again."
        )
    return values


def _ssh_args(ssh_user: str, bastion: str, known_hosts: Path | None, key: Path | None, jump: bool) -> str:
    """ansible_ssh_common_args: the known_hosts file, and for a private node the ProxyCommand to node1."""
    known = ["-o", f"UserKnownHostsFile={known_hosts}"] if known_hosts else []
    args = list(known)
    if jump:
        proxy = ["ssh", "-W", "%h:%p", *known]
        for option in SSH_OPTIONS:
            proxy += ["-o", option]
        if key is not None:
            proxy += ["-i", str(key), "-o", "IdentitiesOnly=yes"]
        proxy.append(f"{ssh_user}@{bastion}")
        args += ["-o", "ProxyCommand=" + shlex.join(proxy)]
    return shlex.join(args)


def build_inventory(
    outputs: dict[str, Any], *, known_hosts: Path | None = None, private_key: Path | None = None
) -> dict[str, Any]:
    """The inventory as a dict ready for yaml.safe_dump.

    known_hosts: the SSH known_hosts file every connection uses (absolute); private_key: the SSH key
    for every node and for the jump host (default: ssh's own, or the agent's).
    """
    values = _values(outputs)
    bastion = str(values["bastion_ip"])
    ssh_user = str(values["ssh_user"])
    nodes: dict[str, Any] = values["nodes"]
    volumes: dict[str, Any] = values["volumes"] or {}
    if not isinstance(nodes, dict) or not nodes:
        raise UserInputError("terraform output 'nodes' is empty: no node to configure.")

    hosts: dict[str, dict[str, Any]] = {}
    groups: dict[str, dict[str, Any]] = {name: {"hosts": {}} for name in GROUPS}
    for name in sorted(nodes):
        node = nodes[name]
        if not _HOST_RE.match(name):
            raise UserInputError(f"Node name '{name}' is not a valid host name.")
        private_ip = node.get("private_ip")
        public_ip = node.get("public_ip")
        if not private_ip and not public_ip:
            raise UserInputError(f"Node '{name}' has no address in terraform output.")
        host: dict[str, Any] = {
            "ansible_host": public_ip or private_ip,
            "chexops_site": node.get("site"),
            "chexops_instance_id": node.get("instance"),
            "chexops_private_ip": private_ip,
            "chexops_public_ip": public_ip,
            "chexops_link_ip": node.get("link_ip"),
            "chexops_gpu": bool(node.get("gpu")),
            "chexops_volumes": [],
        }
        # Private nodes are reached through node1's floating IP.
        if args := _ssh_args(ssh_user, bastion, known_hosts, private_key, jump=not public_ip):
            host["ansible_ssh_common_args"] = args
        hosts[name] = host
        for group in node.get("groups") or []:
            groups.setdefault(group, {"hosts": {}})["hosts"][name] = None

    for vol_name in sorted(volumes):
        vol = volumes[vol_name]
        owner = vol.get("node")
        if owner not in hosts:
            raise UserInputError(
                f"Volume '{vol_name}' is attached to '{owner}', which is not in terraform output 'nodes'."
            )
        hosts[owner]["chexops_volumes"].append(
            {
                "name": vol_name,
                "id": vol.get("id"),
                "device": vol.get("by_id_path") or vol.get("device"),
                "fallback_device": vol.get("device"),
                "mount_point": vol["mount_point"],
                "fstype": vol.get("fstype", "ext4"),
            }
        )

    all_vars: dict[str, Any] = {
        "ansible_user": ssh_user,
        "ansible_python_interpreter": "/usr/bin/python3",
        **({"ansible_ssh_private_key_file": str(private_key)} if private_key is not None else {}),
        "chexops_bastion_ip": bastion,
        "chexops_private_network_cidr": values["private_network_cidr"],
        "chexops_ssh_allowed_cidrs": list(values["ssh_allowed_cidrs"]),
        "chexops_ingress_allowed_cidrs": list(values["ingress_allowed_cidrs"]),
    }
    for name in OPTIONAL_OUTPUTS:
        if values.get(name) is not None:
            all_vars[f"chexops_{name}"] = values[name]
    return {"all": {"vars": all_vars, "hosts": hosts, "children": groups}}


HEADER = (
    "# Generated by `chexops infra inventory` from `terraform output -json`: do not edit,\n"
    "# regenerate after every `terraform apply`.\n"
)


def write_inventory(inventory: dict[str, Any], path: Path) -> None:
    atomic_write_text(path, HEADER + yaml.safe_dump(inventory, sort_keys=False, default_flow_style=False))
    log.info("Wrote the inventory to %s.", path)


def read_previous(path: Path) -> dict[str, Any] | None:
    """The inventory already at path (the one being replaced), or None when there is none to read."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, yaml.YAMLError) as exc:
        log.warning("Cannot read the previous inventory %s (%s): no host key is forgotten.", path, exc)
        return None
    hosts = (data or {}).get("all", {}).get("hosts") if isinstance(data, dict) else None
    return data if isinstance(hosts, dict) else None


def replaced_addresses(previous: dict[str, Any] | None, inventory: dict[str, Any]) -> dict[str, str]:
    """{address: host} for the addresses that now reach another instance than the previous inventory's.

    Only a known change counts: an address the previous inventory did not list, or listed without an
    instance id, keeps its key (ssh then refuses a changed one, as it should)."""
    if previous is None:
        return {}
    before = {
        str(h.get("ansible_host")): h.get("chexops_instance_id")
        for h in previous["all"]["hosts"].values()
        if isinstance(h, dict) and h.get("ansible_host")
    }
    replaced = {}
    for name, host in inventory["all"]["hosts"].items():
        address, instance = str(host["ansible_host"]), host.get("chexops_instance_id")
        old = before.get(address)
        if old and instance and old != instance:
            replaced[address] = name
    return replaced


def forget_host_keys(known_hosts: Path, addresses: dict[str, str], ssh_keygen: str = "ssh-keygen") -> list[str]:
    """`ssh-keygen -R` each address that known_hosts holds; the addresses whose keys were removed."""
    if not addresses or not known_hosts.is_file():
        return []
    binary = shutil.which(ssh_keygen)
    if binary is None:
        raise ChexopsError(
            f"'{ssh_keygen}' is not on PATH: remove the old host keys of {', '.join(sorted(addresses))} "
            f"from {known_hosts} by hand (Terraform replaced those instances)."
        )
    forgotten = []
    for address, host in sorted(addresses.items()):
        found = subprocess.run(
            [binary, "-F", address, "-f", str(known_hosts)], capture_output=True, text=True, check=False, timeout=30
        )
        if found.returncode != 0 or not found.stdout.strip():
            continue
        removed = subprocess.run(
            [binary, "-R", address, "-f", str(known_hosts)], capture_output=True, text=True, check=False, timeout=30
        )
        if removed.returncode != 0:
            raise ChexopsError(f"ssh-keygen -R {address} -f {known_hosts} failed: {removed.stderr.strip()[-400:]}")
        log.info("Forgot the host key of %s (%s: Terraform replaced the instance) in %s.", address, host, known_hosts)
        forgotten.append(address)
    return forgotten


def summary(inventory: dict[str, Any]) -> dict[str, Any]:
    root = inventory["all"]
    return {
        "hosts": sorted(root["hosts"]),
        "groups": {name: sorted(group["hosts"]) for name, group in root["children"].items()},
        "bastion_ip": root["vars"]["chexops_bastion_ip"],
    }
