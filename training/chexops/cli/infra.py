"""`chexops infra ...`: Blazar leases and the Ansible inventory for the Chameleon deployment.

Every command prints a short human summary, or with --json one JSON object on stdout; progress
goes to stderr through `logging`. Errors are `ChexopsError` (exit 1: the operation failed, e.g. a
reservation that is not active) or `UserInputError` (exit 2: a wrong name, a missing lease,
rejected or expired credentials, a bad argument), which the main CLI prints without traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from chexops.cli.output import Output, result_output
from chexops.core.errors import UserInputError

log = logging.getLogger("chexops.infra")

DEFAULT_TFVARS = Path("terraform") / "reservations.auto.tfvars.json"
DEFAULT_INVENTORY = Path("ansible") / "inventory" / "hosts.yml"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of the record (click's runner swaps it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # noqa: ARG002 - the stream is always sys.stderr
        pass


def _setup_logging(verbose: bool) -> None:
    chexops_logger = logging.getLogger("chexops")
    if not logging.getLogger().handlers and not chexops_logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        chexops_logger.addHandler(handler)
    if verbose or chexops_logger.level == logging.NOTSET:
        chexops_logger.setLevel(logging.DEBUG if verbose else logging.INFO)


def _lease_lines(summary: dict[str, Any]) -> list[str]:
    lines = [
        f"Lease {summary['name']} ({summary['id']}): {summary['status']}, "
        f"{summary['start_date']} -> {summary['end_date']} UTC"
    ]
    for res in summary["reservations"]:
        target = f" -> {k}" if (k := _tfvar_for(summary, res)) else ""
        lines.append(f"  {res['resource_type']} reservation {res['id']}: {res['status']}{target}")
    return lines


def _tfvar_for(summary: dict[str, Any], res: dict[str, Any]) -> str | None:
    value = res.get("flavor_id") or res.get("id")
    for key, tf_value in summary["tfvars"].items():
        if tf_value == value:
            return key
    return None


cloud_option = click.option(
    "--cloud",
    envvar="OS_CLOUD",
    show_envvar=True,
    help="Entry of clouds.yaml to use (kvm_tacc for the CPU lease, chi_uc/chi_tacc for the GPU lease).",
)
name_prefix_option = click.option(
    "--name-prefix",
    envvar="CHEXOPS_NAME_PREFIX",
    show_envvar=True,
    default=None,
    help="Prefix of the lease names (<prefix>-kvm, <prefix>-gpu); default: name_prefix of the Terraform settings.",
)


def tf_dir_option(reads: str):
    """`--tf-dir`, the Terraform root (default terraform/), with what this command reads there."""
    return click.option(
        "--tf-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path("terraform"),
        show_default=True,
        help=reads,
    )


lease_tf_dir_option = tf_dir_option(
    "Terraform root whose name_prefix names the leases (when --name-prefix is not given)."
)
tfvars_option = click.option(
    "--tfvars",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_TFVARS,
    show_default=True,
    help="JSON tfvars file Terraform loads automatically; reservation ids are merged into it.",
)


@click.group("infra")
@click.option("-v", "--verbose", is_flag=True, help="Log requests (DEBUG) to stderr.")
def infra(verbose: bool) -> None:
    """Chameleon infrastructure: Blazar leases and the Ansible inventory."""
    _setup_logging(verbose)


@infra.group("lease")
def lease_group() -> None:
    """Create, inspect, extend and delete the Blazar leases Terraform builds on."""


def _blazar(cloud_name: str | None):
    """Blazar of the named cloud, over its openstacksdk connection's session."""
    from chexops.infra.clouds import connect
    from chexops.infra.openstack import OpenStackClient

    return OpenStackClient(connect(cloud_name), "reservation")


def _leases(cloud_name: str | None, name_prefix: str | None, tf_dir: Path, unrestricted: bool = False):
    """The caller's lease operations on one cloud: its name prefix and Keystone user (refusing a
    restricted application credential before Blazar is asked, where `unrestricted`)."""
    from chexops.infra import lease as lease_mod
    from chexops.infra import openstack

    prefix = lease_mod.resolve_prefix(name_prefix, tf_dir)
    blazar = _blazar(cloud_name)
    who = (openstack.require_unrestricted if unrestricted else openstack.identity)(blazar.cloud)
    return lease_mod.Leases(blazar, prefix, who.user_id)


@lease_group.command("create")
@click.argument("name", required=False)
@click.option(
    "--role",
    type=click.Choice(["kvm", "gpu"]),
    required=True,
    help="kvm: CPU flavor reservation on KVM@TACC; gpu: bare-metal host reservation on a CHI site.",
)
@cloud_option
@click.option("--flavor", default="m1.large", show_default=True, help="[kvm] Flavor to reserve (name or id).")
@click.option("--node-type", default="gpu_rtx_6000", show_default=True, help="[gpu] Chameleon node type to reserve.")
@click.option(
    "--count", type=click.IntRange(1, 20), default=None, help="Instances (kvm, default 3) or hosts (gpu, default 1)."
)
@click.option(
    "--duration",
    default="24h",
    show_default=True,
    help="Length of the lease: 90m, 12h, 3d, 1d12h (bare metal at most 7d; KVM flavors may be longer).",
)
@click.option("--start", default="now", show_default=True, help="'now' or 'YYYY-MM-DD HH:MM' (UTC).")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until the lease is ACTIVE.")
@click.option(
    "--timeout", type=click.FloatRange(1, 7200), default=1200, show_default=True, help="Seconds to wait for ACTIVE."
)
@click.option(
    "--poll", type=click.FloatRange(0.01, 600), default=10, show_default=True, help="Seconds between status checks."
)
@click.option(
    "--reuse/--no-reuse",
    default=True,
    show_default=True,
    help="Reuse a live lease of yours of the same name instead of failing.",
)
@click.option(
    "--floating-ips",
    type=click.IntRange(0, 4),
    default=0,
    show_default=True,
    help="Also reserve this many floating IPs (Blazar virtual:floatingip) for the role's nodes, so that Terraform "
    "does not depend on the site's ad-hoc pool; their addresses go to TFVARS (<role>_floating_ips).",
)
@click.option(
    "--floating-ip-network",
    default="public",
    show_default=True,
    help="External network the reserved floating IPs come from.",
)
@tfvars_option
@name_prefix_option
@lease_tf_dir_option
@result_output
def lease_create(
    name: str | None,
    role: str,
    cloud: str | None,
    flavor: str,
    node_type: str,
    count: int | None,
    duration: str,
    start: str,
    wait: bool,
    timeout: float,
    poll: float,
    reuse: bool,
    floating_ips: int,
    floating_ip_network: str,
    tfvars: Path,
    name_prefix: str | None,
    tf_dir: Path,
) -> Output:
    """Reserve the nodes of one ROLE under lease NAME (default <name_prefix>-ROLE) and write its reservation id
    to TFVARS. Needs an Unrestricted application credential."""
    from chexops.infra import lease as lease_mod

    prefix = lease_mod.resolve_prefix(name_prefix, tf_dir)
    name = lease_mod.lease_name(prefix, role, name)
    length = lease_mod.parse_duration(duration)
    begin = None if start.strip().lower() == "now" else lease_mod.parse_user_date(start)
    if begin is not None and begin < lease_mod.utcnow():
        raise UserInputError(f"Start {start} UTC is in the past: use 'now' or a later time.")
    if not tfvars.parent.is_dir():
        raise UserInputError(
            f"Cannot write {tfvars}: {tfvars.parent} is not a directory (run from the repository root or pass "
            "--tfvars)."
        )
    leases = _leases(cloud, prefix, tf_dir, unrestricted=True)
    if role == "kvm":
        reservation = lease_mod.flavor_reservation(lease_mod.resolve_flavor(leases.blazar.cloud, flavor), count or 3)
    else:
        reservation = lease_mod.host_reservation(node_type, count or 1)
    extra = []
    if floating_ips:
        network_id = lease_mod.resolve_external_network(leases.blazar.cloud, floating_ip_network)
        extra.append(lease_mod.floatingip_reservation(network_id, floating_ips))
    lease, created = leases.create(name, reservation, length, start=begin, reuse=reuse, extra=extra)
    if floating_ips and not lease_mod.floatingip_reservations(lease):
        log.warning(
            "Reused lease %s holds no floating-IP reservation: Terraform allocates from the pool. Delete the lease and "
            "create it again with --floating-ips to reserve them.",
            name,
        )
    summary = lease_mod.summarize(lease)
    wanted_key = lease_mod.ROLES[role].tfvars_key
    if wanted_key not in summary["tfvars"]:
        raise UserInputError(
            f"Lease '{name}' ({lease['id']}) holds no {lease_mod.ROLES[role].resource_type} reservation: "
            "it was made for another role; choose another name."
        )
    lease_mod.update_tfvars(tfvars, {wanted_key: summary["tfvars"][wanted_key]})
    if wait and not summary["active"]:
        lease = leases.wait_active(lease["id"], timeout=timeout, poll=poll)
        summary = lease_mod.summarize(lease)
    elif not summary["active"]:
        log.warning("Lease %s is %s: `terraform apply` fails until it is ACTIVE.", name, summary["status"])
    addresses = _reserved_floating_ips(leases.blazar.cloud, lease, summary, role, tfvars, timeout, poll)
    ends = lease_mod.expiry(lease, lease_mod.utcnow())
    payload = {"created": created, "tfvars_file": str(tfvars), "lease": summary, "su_estimate": ends["su_total"]}
    if addresses is not None:
        payload["floating_ips"] = addresses
    lines = _lease_lines(summary) + [
        f"{'Created' if created else 'Reused'}; wrote {wanted_key} to {tfvars}.",
        f"Allocation: about {ends['su_total']} SU ({ends['nodes']} node(s), "
        f"{lease_mod.SU_PER_NODE_HOUR:g} SU per node-hour assumed).",
    ]
    if addresses:
        lines.append(f"Reserved floating IPs: {', '.join(addresses)} -> {lease_mod.FLOATING_IP_TFVARS[role]}.")
    return Output(payload, "\n".join(lines))


def _reserved_floating_ips(
    cloud: Any, lease: dict[str, Any], summary: dict[str, Any], role: str, tfvars: Path, timeout: float, poll: float
) -> list[str] | None:
    """The addresses of the lease's floating-IP reservation, written to TFVARS once the lease is active (None:
    the lease holds none, or is not active yet)."""
    from chexops.infra import lease as lease_mod
    from chexops.infra.openstack import OpenStackClient

    if not lease_mod.floatingip_reservations(lease):
        return None
    key = lease_mod.FLOATING_IP_TFVARS[role]
    if not summary["active"]:
        log.warning("Lease %s is not active: run this command again once it is, to write %s.", lease["name"], key)
        return None
    addresses = lease_mod.reserved_addresses(OpenStackClient(cloud, "network"), lease, timeout=timeout, poll=poll)
    lease_mod.update_tfvars(tfvars, {key: addresses})
    return addresses


@lease_group.command("status")
@click.argument("name_or_id", required=False)
@click.option(
    "--cloud",
    "clouds",
    multiple=True,
    envvar="OS_CLOUD",
    show_envvar=True,
    help="Entry of clouds.yaml; without NAME_OR_ID repeat it to list your leases on several sites.",
)
@click.option("--require-active", is_flag=True, help="Exit 1 unless the lease and all its reservations are active.")
@click.option(
    "--rules",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write each lease's end as a Prometheus rule file (k8s/monitoring/rules/lease-ends.yaml).",
)
@click.option(
    "--textfile",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write each lease's end for node_exporter's textfile collector (a .prom file).",
)
@name_prefix_option
@lease_tf_dir_option
@result_output
def lease_status(
    name_or_id: str | None,
    clouds: tuple[str, ...],
    require_active: bool,
    rules: Path | None,
    textfile: Path | None,
    name_prefix: str | None,
    tf_dir: Path,
) -> Output:
    """Show a lease, its reservations and the tfvars they feed; without NAME_OR_ID, every live lease of yours,
    soonest end first, with the hours and the allocation (SU) left."""
    from chexops.infra import lease as lease_mod

    if name_or_id is not None:
        if len(clouds) > 1 or rules or textfile:
            raise UserInputError("With NAME_OR_ID give one --cloud, and no --rules or --textfile.")
        lease = lease_mod.Leases(_blazar(clouds[0] if clouds else None), prefix="", user_id="").find(name_or_id)
        summary = lease_mod.summarize(lease)
        if require_active and not summary["active"]:
            raise lease_mod.ReservationNotActive(lease_mod.not_active_message(lease))
        return Output({"lease": summary}, "\n".join(_lease_lines(summary)))
    now = lease_mod.utcnow()
    rows = []
    for cloud in clouds or (None,):
        leases = _leases(cloud, name_prefix, tf_dir)
        for lease in leases.ours():
            rows.append({**lease_mod.expiry(lease, now), "cloud": leases.blazar.cloud.name})
    rows.sort(key=lambda row: row["end_timestamp"])
    if require_active and (idle := [row for row in rows if row["status"] != "ACTIVE"]):
        raise lease_mod.ReservationNotActive(
            "Not active: " + ", ".join(f"{row['name']} ({row['status']})" for row in idle) + "."
        )
    if rules is not None:
        lease_mod.write_metric_file(rules, lease_mod.lease_end_rules(rows))
    if textfile is not None:
        lease_mod.write_metric_file(textfile, lease_mod.lease_end_textfile(rows))
    lines = [
        f"{row['name']:<24} {row['cloud']:<10} {row['status']:<8} ends {row['end_date']} UTC  "
        f"{row['hours_left']:>6.1f} h left  {row['nodes']} node(s)  ~{row['su_left']} SU left of {row['su_total']}"
        for row in rows
    ] or ["No live lease of yours (prefix and creator) on " + ", ".join(c or "$OS_CLOUD" for c in clouds or ("",))]
    return Output({"leases": rows}, "\n".join(lines))


@lease_group.command("extend")
@click.argument("name_or_id")
@cloud_option
@click.option("--by", "by", default=None, help="Add this much to the end: 12h, 1d ...")
@click.option("--until", "until", default=None, help="New end, 'YYYY-MM-DD HH:MM' (UTC).")
@name_prefix_option
@lease_tf_dir_option
@result_output
def lease_extend(
    name_or_id: str, cloud: str | None, by: str | None, until: str | None, name_prefix: str | None, tf_dir: Path
) -> Output:
    """Move a lease's end later (Chameleon may refuse beyond its policy)."""
    from chexops.infra import lease as lease_mod

    if (by is None) == (until is None):
        raise UserInputError("Give exactly one of --by DURATION or --until 'YYYY-MM-DD HH:MM'.")
    delta = lease_mod.parse_duration(by) if by is not None else None
    end = lease_mod.parse_user_date(until) if until is not None else None
    leases = _leases(cloud, name_prefix, tf_dir)
    lease = leases.find(name_or_id)
    previous_end = lease.get("end_date")
    updated = leases.extend(lease, by=delta, until=end)
    summary = lease_mod.summarize(updated)
    payload = {"previous_end_date": previous_end, "lease": summary}
    return Output(
        payload, "\n".join(_lease_lines(summary) + [f"Extended from {previous_end} to {summary['end_date']} UTC."])
    )


@lease_group.command("delete")
@click.argument("name_or_id")
@cloud_option
@tfvars_option
@name_prefix_option
@lease_tf_dir_option
@result_output
def lease_delete(name_or_id: str, cloud: str | None, tfvars: Path, name_prefix: str | None, tf_dir: Path) -> Output:
    """Delete a lease of yours (its instances go with it) and forget its ids in TFVARS."""
    from chexops.infra import lease as lease_mod

    leases = _leases(cloud, name_prefix, tf_dir)
    lease = leases.find(name_or_id)
    summary = lease_mod.summarize(lease)
    leases.delete(lease)
    removed = lease_mod.forget_tfvars(tfvars, summary["tfvars"]) if tfvars.exists() else []
    removed += lease_mod.forget_floating_ips(tfvars, lease)
    payload = {"deleted": summary["id"], "name": summary["name"], "tfvars_removed": removed, "tfvars_file": str(tfvars)}
    lines = [f"Deleted lease {summary['name']} ({summary['id']})."]
    if removed:
        lines.append(f"Removed {', '.join(removed)} from {tfvars}.")
    return Output(payload, "\n".join(lines))


@infra.command("inventory")
@tf_dir_option("Terraform root to run `terraform output -json` in.")
@click.option(
    "--from-json",
    "from_json",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Read recorded `terraform output -json` from FILE ('-' for stdin) instead of running terraform.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_INVENTORY,
    show_default=True,
    help="Inventory file to write (its known_hosts file goes next to it).",
)
@click.option(
    "--private-key",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    envvar="CHEXOPS_SSH_PRIVATE_KEY",
    show_envvar=True,
    help="SSH key for every node and for the jump host (node1); default: ssh's own keys or the agent.",
)
@result_output
def inventory_cmd(tf_dir: Path, from_json: Path | None, output: Path, private_key: Path | None) -> Output:
    """Write the Ansible inventory from Terraform's outputs; forget the host keys of replaced instances."""
    from chexops.infra import inventory as inv

    if from_json is not None and str(from_json) == "-":
        try:
            outputs = json.loads(sys.stdin.read())
        except json.JSONDecodeError as exc:
            raise UserInputError(f"stdin is not JSON (expected `terraform output -json`): {exc}") from exc
    elif from_json is not None:
        outputs = inv.load_outputs(from_json)
    else:
        outputs = inv.terraform_output(tf_dir)
    known_hosts = output.resolve().parent / inv.KNOWN_HOSTS
    inventory = inv.build_inventory(
        outputs, known_hosts=known_hosts, private_key=private_key.resolve() if private_key else None
    )
    replaced = inv.replaced_addresses(inv.read_previous(output), inventory)
    inv.write_inventory(inventory, output)
    forgotten = inv.forget_host_keys(known_hosts, replaced)
    summary = inv.summary(inventory)
    payload = {"inventory": str(output), **summary, "known_hosts": str(known_hosts), "forgotten_host_keys": forgotten}
    lines = [f"Wrote {output}: {len(summary['hosts'])} hosts (bastion {summary['bastion_ip']})."]
    lines += [f"  {group}: {', '.join(hosts) or '-'}" for group, hosts in summary["groups"].items()]
    lines += [
        f"Forgot the old host key of {address} ({replaced[address]}: a new instance) in {known_hosts}."
        for address in forgotten
    ]
    return Output(payload, "\n".join(lines))


@infra.command("preflight")
@tf_dir_option("Terraform root whose settings (variables.tf, terraform.tfvars, *.auto.tfvars*) are checked.")
@result_output
def preflight_cmd(tf_dir: Path) -> Output:
    """Check on each cloud that what Terraform will ask for exists, before `terraform plan`."""
    from chexops.infra.clouds import connect
    from chexops.infra.preflight import run_checks, terraform_settings

    results = run_checks(terraform_settings(tf_dir), connect)
    missing = [r for r in results if not r.ok]
    if missing:
        raise UserInputError(
            f"{len(missing)} of {len(results)} look-ups failed; fix these Terraform settings before "
            "`terraform plan`:\n" + "\n".join(f"  - {r.setting}: {r.detail}" for r in missing)
        )
    lines = [f"ok  {r.cloud:<10} {r.kind:<17} {r.name} ({r.setting})" for r in results]
    lines.append(f"All {len(results)} look-ups found what Terraform will ask for.")
    return Output({"ok": True, "checks": [asdict(r) for r in results]}, "\n".join(lines))


@infra.command("snapshot")
@cloud_option
@name_prefix_option
@tf_dir_option("Terraform root whose `volumes` (and name_prefix) name the volumes to snapshot.")
@click.option(
    "--keep",
    type=click.IntRange(1, 100),
    default=None,
    help="Then delete all but the KEEP newest chexops snapshots of each volume (others' snapshots are never touched).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(1, 86400),
    default=1800,
    show_default=True,
    help="Seconds to wait for each snapshot to become available.",
)
@click.option(
    "--poll", type=click.FloatRange(0.01, 600), default=10, show_default=True, help="Seconds between status checks."
)
@result_output
def snapshot_cmd(
    cloud: str | None, name_prefix: str | None, tf_dir: Path, keep: int | None, timeout: float, poll: float
) -> Output:
    """Snapshot each of the cluster's Cinder volumes (<name_prefix>-<volume>-<UTC time>) and wait until they are
    available: run it before any teardown. The volumes live on KVM@TACC (--cloud kvm_tacc)."""
    from chexops.infra.clouds import connect
    from chexops.infra.snapshots import snapshot_volumes, volume_names

    names = volume_names(tf_dir, name_prefix)
    rows = snapshot_volumes(connect(cloud), names, keep=keep, timeout=timeout, poll=poll)
    lines = [f"{'VOLUME':<24} {'SNAPSHOT':<42} {'STATUS':<10} {'GB':>5}  PRUNED"]
    lines += [
        f"{row['volume']:<24} {row['snapshot']:<42} {row['status']:<10} {row['size_gb'] or 0:>5}  "
        f"{', '.join(row['pruned']) or '-'}"
        for row in rows
    ]
    lines.append(f"{len(rows)} snapshot(s) available.")
    return Output({"snapshots": rows}, "\n".join(lines))
