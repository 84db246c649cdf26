"""Blazar leases for the chexops cluster, and the tfvars file that hands their ids to Terraform.

Two roles, one lease each:

- ``kvm``: a ``flavor:instance`` reservation on KVM@TACC. Blazar creates a private flavor whose id
  is the reservation id; Terraform boots the CPU nodes with it (``kvm_reservation_id``).
- ``gpu``: a ``physical:host`` reservation of one bare-metal GPU node on CHI@UC or CHI@TACC;
  Terraform passes its id as the ``reservation`` scheduler hint (``gpu_reservation_id``).

Either lease may also hold a ``virtual:floatingip`` reservation (``--floating-ips N``): Blazar puts N
floating IPs of the public network into the project while the lease is active, tagged
``reservation:<id>``; their addresses go to ``<role>_floating_ips`` so that Terraform uses them
instead of allocating from the site's ad-hoc pool, which may run dry.

Names and ownership: a lease is named ``<name_prefix>-<role>`` (Terraform's ``name_prefix``, so that
operators sharing a project do not collide) and counts as ours only if it carries our prefix AND
Blazar recorded the caller's Keystone user as its creator (``user_id``); reuse, extend and delete
refuse any other. Creating a lease needs an *Unrestricted* application credential (Blazar makes a
Keystone trust with it): ``chexops.infra.openstack.require_unrestricted``.

Formats follow the Blazar v1 API: dates are sent as ``YYYY-MM-DD HH:MM`` (UTC) and come back as
``YYYY-MM-DDTHH:MM:SS.ffffff``; a lease's status is PENDING, STARTING, ACTIVE, UPDATING,
TERMINATING, TERMINATED, DELETING or ERROR; a reservation's is pending, active, deleted or error.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

from chexops.core.errors import ChexopsError, UserInputError
from chexops.core.files import atomic_write_text
from chexops.infra.clouds import Cloud
from chexops.infra.openstack import NotFound, OpenStackClient

log = logging.getLogger(__name__)

API_DATE_FORMAT = "%Y-%m-%d %H:%M"
#: Chameleon's limit on a bare-metal (CHI, physical:host) lease's length, without an exception granted by the
#: help desk. KVM@TACC flavor reservations have no such cap: they may last months.
MAX_BARE_METAL_LEASE = timedelta(days=7)
#: The allocation estimate's rate (Service Units per node-hour); Chameleon's current rates are on its website.
SU_PER_NODE_HOUR = 1.0
PREFIX_RE = re.compile(r"^[a-z][a-z0-9-]{1,30}[a-z0-9]$")  # Terraform's validation of name_prefix
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_LIVE = {"PENDING", "STARTING", "ACTIVE", "UPDATING"}
_DEAD = {"TERMINATING", "TERMINATED", "DELETING", "ERROR"}


@dataclass(frozen=True)
class Role:
    name: str
    resource_type: str
    tfvars_key: str


ROLES = {
    "kvm": Role("kvm", "flavor:instance", "kvm_reservation_id"),
    "gpu": Role("gpu", "physical:host", "gpu_reservation_id"),
}
_BY_RESOURCE_TYPE = {role.resource_type: role for role in ROLES.values()}
FLOATING_IP = "virtual:floatingip"
#: The tfvars key of each role's reserved floating IPs (terraform/variables.tf).
FLOATING_IP_TFVARS = {"kvm": "kvm_floating_ips", "gpu": "gpu_floating_ips"}


class LeaseNotFound(UserInputError):
    """No lease of that name or id in the project."""


class ReservationNotActive(ChexopsError):
    """The lease (or one of its reservations) is not active, so nothing can be launched on it."""


class NotOurLease(UserInputError):
    """The lease lacks our name prefix or was created by another user of the project."""


# ---------------------------------------------------------------------------------------------
# Small parsers
# ---------------------------------------------------------------------------------------------


def parse_duration(text: str) -> timedelta:
    """'90m', '12h', '3d' or '1d12h' -> timedelta."""
    match = re.fullmatch(r"\s*(?:(\d+)d)?\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*", text or "")
    if not text or not match or not any(match.groups()):
        raise UserInputError(f"Duration '{text}' is not like 90m, 12h, 3d or 1d12h.")
    days, hours, minutes = (int(g or 0) for g in match.groups())
    delta = timedelta(days=days, hours=hours, minutes=minutes)
    if delta <= timedelta(0):
        raise UserInputError(f"Duration '{text}' must be positive.")
    return delta


def parse_api_date(text: str) -> datetime:
    """A Blazar date ('2024-08-23T14:00:00.000000', '2024-08-23 14:00') as an aware UTC datetime."""
    cleaned = text.strip().replace("T", " ")
    for fmt in ("%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S", API_DATE_FORMAT):
        try:
            return datetime.strptime(cleaned, fmt).replace(tzinfo=timezone.utc)
        except ValueError:
            continue
    raise ChexopsError(f"Blazar returned a date chexops cannot read: '{text}'.")


def parse_user_date(text: str) -> datetime:
    try:
        return datetime.strptime(text.strip(), API_DATE_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError as exc:
        raise UserInputError(f"Date '{text}' is not 'YYYY-MM-DD HH:MM' (UTC).") from exc


def format_api_date(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime(API_DATE_FORMAT)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# ---------------------------------------------------------------------------------------------
# Names: <name_prefix>-<role>
# ---------------------------------------------------------------------------------------------


def check_prefix(prefix: str, where: str) -> str:
    if not PREFIX_RE.match(prefix):
        raise UserInputError(
            f"Name prefix '{prefix}' ({where}) is not 3-32 lower-case letters, digits or '-', starting with a letter "
            "and not ending with '-' (as Terraform's name_prefix)."
        )
    return prefix


def resolve_prefix(explicit: str | None, tf_dir: Path) -> str:
    """The name prefix: --name-prefix / $CHEXOPS_NAME_PREFIX, else Terraform's name_prefix in TF_DIR."""
    if explicit:
        return check_prefix(explicit, "--name-prefix or CHEXOPS_NAME_PREFIX")
    if not (tf_dir / "variables.tf").is_file():
        raise UserInputError(
            f"No name prefix: {tf_dir}/variables.tf does not exist. Pass --name-prefix (the name_prefix of your "
            "terraform.tfvars, e.g. chexops-<netid>), set CHEXOPS_NAME_PREFIX, or pass --tf-dir."
        )
    from chexops.infra.preflight import terraform_settings

    return check_prefix(str(terraform_settings(tf_dir).get("name_prefix", "")), f"name_prefix in {tf_dir}")


def lease_name(prefix: str, role: str, name: str | None = None) -> str:
    """NAME if it carries the prefix (refused otherwise), or `<prefix>-<role>`."""
    if name is None:
        return f"{prefix}-{role}"
    if not name.startswith(f"{prefix}-") or len(name) == len(prefix) + 1:
        raise UserInputError(
            f"Lease name '{name}' does not start with the name prefix '{prefix}-': chexops names its leases "
            f"<name_prefix>-<role> (here {prefix}-{role}) so that operators sharing a project do not collide. "
            "Leave NAME out, or set your own prefix (name_prefix in terraform.tfvars, or --name-prefix)."
        )
    return name


def is_ours(lease: dict[str, Any], prefix: str, user_id: str) -> bool:
    """Our prefix AND created by this Keystone user (Blazar's `user_id`)."""
    return str(lease.get("name", "")).startswith(f"{prefix}-") and lease.get("user_id") == user_id


def require_ours(lease: dict[str, Any], prefix: str, user_id: str, action: str) -> dict[str, Any]:
    if is_ours(lease, prefix, user_id):
        return lease
    name, lease_id = lease.get("name"), lease.get("id")
    if lease.get("user_id") != user_id:
        why = f"it was created by another user of the project (Keystone user {lease.get('user_id')}), not by you"
    else:
        why = f"its name does not start with your name prefix '{prefix}-'"
    raise NotOurLease(
        f"Refusing to {action} lease '{name}' ({lease_id}): {why}. chexops only touches its own leases; if it is "
        "yours to manage, use Horizon or the `openstack reservation lease` CLI. Use a name prefix of your own "
        "(name_prefix in terraform.tfvars, e.g. chexops-<netid>) to avoid sharing names."
    )


# ---------------------------------------------------------------------------------------------
# Time left and the allocation (SU) estimate
# ---------------------------------------------------------------------------------------------


def node_count(lease_or_reservations: dict[str, Any] | list[dict[str, Any]]) -> int:
    """Nodes a lease (or a list of reservation requests) holds: instances of a flavor reservation,
    hosts of a host reservation."""
    reservations = (
        lease_or_reservations.get("reservations") or []
        if isinstance(lease_or_reservations, dict)
        else lease_or_reservations
    )
    total = 0
    for res in reservations:
        if res.get("resource_type") == "flavor:instance":
            total += int(res.get("amount") or 0)
        elif res.get("resource_type") == "physical:host":
            total += int(res.get("max") or res.get("min") or 0)
    return total


def su_estimate(nodes: int, length: timedelta) -> float:
    """Service Units for `nodes` during `length`, at SU_PER_NODE_HOUR."""
    return round(nodes * max(length.total_seconds(), 0) / 3600 * SU_PER_NODE_HOUR, 1)


def expiry(lease: dict[str, Any], now: datetime) -> dict[str, Any]:
    """When the lease ends, the hours left and the allocation it holds (total and still to come)."""
    start, end = parse_api_date(lease["start_date"]), parse_api_date(lease["end_date"])
    nodes = node_count(lease)
    left = end - max(now, start) if end > now else timedelta(0)
    return {
        "name": lease.get("name"),
        "id": lease.get("id"),
        "status": lease.get("status"),
        "end_date": format_api_date(end),
        "end_timestamp": int(end.timestamp()),
        "hours_left": round(max((end - now).total_seconds(), 0) / 3600, 1),
        "nodes": nodes,
        "su_total": su_estimate(nodes, end - start),
        "su_left": su_estimate(nodes, left),
    }


# ---------------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------------


def host_reservation(node_type: str, count: int) -> dict[str, Any]:
    """A physical:host reservation of `count` nodes of one Chameleon node type."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", node_type):
        raise UserInputError(f"Node type '{node_type}' is not a Chameleon node type (e.g. gpu_rtx_6000).")
    return {
        "resource_type": "physical:host",
        "min": count,
        "max": count,
        "hypervisor_properties": "",
        "resource_properties": json.dumps(["==", "$node_type", node_type]),
    }


def flavor_reservation(flavor_id: str, count: int) -> dict[str, Any]:
    """A flavor:instance reservation of `count` instances of one flavor (KVM@TACC). `affinity`
    is sent explicitly, null (no (anti-)affinity constraint), as python-chi's
    `Lease.add_flavor_reservation` does."""
    return {"resource_type": "flavor:instance", "flavor_id": flavor_id, "amount": count, "affinity": None}


def floatingip_reservation(network_id: str, count: int) -> dict[str, Any]:
    """A virtual:floatingip reservation of `count` floating IPs of the external network `network_id` (Chameleon's
    "Reserving floating IPs"; python-chi's `Lease.add_fip_reservation`)."""
    if not UUID_RE.match(network_id) or not 1 <= count <= 4:
        raise UserInputError(
            f"A floating-IP reservation needs a network UUID and 1-4 addresses, not {network_id!r}/{count}."
        )
    return {"resource_type": FLOATING_IP, "network_id": network_id, "amount": count}


def resolve_external_network(cloud: Cloud, name: str) -> str:
    """The id of the external (floating-IP) network NAME (openstacksdk network look-up)."""
    from chexops.infra.preflight import find_network

    return find_network(cloud, name, external=True).id


def floatingip_reservations(lease: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in lease.get("reservations") or [] if r.get("resource_type") == FLOATING_IP]


def reserved_addresses(
    neutron: OpenStackClient,
    lease: dict[str, Any],
    timeout: float = 120,
    poll: float = 5,
    sleep: Callable[[float], None] = time.sleep,
) -> list[str]:
    """The addresses of the active lease's reserved floating IPs (Neutron tag `reservation:<id>`), waiting
    until Blazar has put all of them in the project."""
    from urllib.parse import quote

    wanted = {r["id"]: int(r.get("amount") or 0) for r in floatingip_reservations(lease)}
    deadline = time.monotonic() + timeout
    while True:
        found: list[str] = []
        short = []
        for res_id, amount in wanted.items():
            body = neutron.request("GET", f"/v2.0/floatingips?tags={quote(f'reservation:{res_id}')}") or {}
            addresses = sorted(str(ip["floating_ip_address"]) for ip in body.get("floatingips", []))
            found += addresses
            if len(addresses) < amount:
                short.append(f"{res_id} ({len(addresses)} of {amount})")
        if not short:
            return found
        if time.monotonic() >= deadline:
            raise ReservationNotActive(
                f"Lease '{lease.get('name')}' is active but Neutron holds too few of its reserved floating IPs: "
                f"{', '.join(short)} after {int(timeout)} s. Run the same `chexops infra lease create` again later "
                "(it reuses the lease and writes the addresses)."
            )
        log.info("Waiting for the reserved floating IPs of lease %s: %s.", lease.get("name"), ", ".join(short))
        sleep(poll)


def resolve_flavor(cloud: Cloud, flavor: str) -> str:
    """A flavor's id from its name or id (openstacksdk compute look-up)."""
    from chexops.infra.preflight import find_flavor

    return find_flavor(cloud, flavor).id


class Leases:
    """Lease operations on one cloud's Blazar, for the caller (Keystone user `user_id`) under `prefix`."""

    def __init__(
        self,
        blazar: OpenStackClient,
        prefix: str,
        user_id: str,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.blazar = blazar
        self.prefix = prefix
        self.user_id = user_id
        self._sleep = sleep

    def ours(self) -> list[dict[str, Any]]:
        """Our live leases (prefix and creator), soonest end first."""
        mine = [
            lease for lease in self.list() if lease.get("status") in _LIVE and is_ours(lease, self.prefix, self.user_id)
        ]
        return sorted(mine, key=lambda lease: parse_api_date(lease["end_date"]))

    def list(self) -> list[dict[str, Any]]:
        body = self.blazar.request("GET", "/leases") or {}
        return list(body.get("leases", []))

    def get(self, lease_id: str) -> dict[str, Any]:
        try:
            body = self.blazar.request("GET", f"/leases/{lease_id}") or {}
        except NotFound as exc:
            raise LeaseNotFound(self._not_found(lease_id)) from exc
        return dict(body["lease"])

    def find(self, name_or_id: str) -> dict[str, Any]:
        """The lease with this id, or the one lease with this name."""
        if UUID_RE.match(name_or_id):
            return self.get(name_or_id)
        matches = [lease for lease in self.list() if lease.get("name") == name_or_id]
        if not matches:
            raise LeaseNotFound(self._not_found(name_or_id))
        if len(matches) > 1:
            ids = ", ".join(lease["id"] for lease in matches)
            raise UserInputError(f"Several leases are named '{name_or_id}' ({ids}): name one by its id.")
        return matches[0]

    def _not_found(self, name_or_id: str) -> str:
        return (
            f"No lease '{name_or_id}' in the project on cloud '{self.blazar.cloud.name}': it may have "
            "ended and been deleted, or belong to another site. `chexops infra lease create` makes a new one."
        )

    def create(
        self,
        name: str,
        reservation: dict[str, Any],
        duration: timedelta,
        start: datetime | None = None,
        reuse: bool = True,
        extra: list[dict[str, Any]] | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Create a lease (or reuse a live one of ours of the same name), with EXTRA reservations (floating IPs)
        beside the role's. Returns (lease, created)."""
        lease_name(self.prefix, _BY_RESOURCE_TYPE[reservation["resource_type"]].name, name)
        if reservation["resource_type"] == "physical:host" and duration > MAX_BARE_METAL_LEASE:
            raise UserInputError(
                f"Chameleon bare-metal leases last at most {MAX_BARE_METAL_LEASE.days} days; asked for {duration}. "
                "Create a shorter lease and extend it, or ask the help desk for an exception."
            )
        if reuse:
            for lease in self.list():
                if lease.get("name") == name and lease.get("status") in _LIVE:
                    require_ours(lease, self.prefix, self.user_id, "reuse")
                    log.info(
                        "Lease %s (%s) already exists with status %s: reusing it.", name, lease["id"], lease["status"]
                    )
                    return self.get(lease["id"]), False
        begin = start or utcnow()
        end = begin + duration
        body = {
            "name": name,
            "start_date": "now" if start is None else format_api_date(begin),
            "end_date": format_api_date(end),
            "reservations": [reservation, *(extra or [])],
            "events": [],
        }
        log.info("Creating lease %s: %s until %s UTC.", name, reservation["resource_type"], body["end_date"])
        nodes = node_count([reservation])
        log.info(
            "Lease %s will consume about %s SU (%d node(s) x %.1f h at %g SU per node-hour; check Chameleon's current "
            "rates and your allocation's balance).",
            name,
            su_estimate(nodes, duration),
            nodes,
            duration.total_seconds() / 3600,
            SU_PER_NODE_HOUR,
        )
        created = self.blazar.request("POST", "/leases", body) or {}
        return dict(created["lease"]), True

    def wait_active(self, lease_id: str, timeout: float, poll: float = 10.0) -> dict[str, Any]:
        """Poll until the lease and all its reservations are active; fail fast on ERROR."""
        deadline = time.monotonic() + timeout
        while True:
            lease = self.get(lease_id)
            status = lease.get("status")
            if is_active(lease):
                return lease
            if status in _DEAD:
                raise ReservationNotActive(not_active_message(lease))
            if time.monotonic() >= deadline:
                raise ReservationNotActive(
                    not_active_message(lease) + f" Still not active after {int(timeout)} s of waiting."
                )
            log.info("Lease %s is %s; waiting for ACTIVE...", lease.get("name"), status)
            self._sleep(poll)

    def extend(
        self, lease: dict[str, Any], by: timedelta | None = None, until: datetime | None = None
    ) -> dict[str, Any]:
        require_ours(lease, self.prefix, self.user_id, "extend")
        status = lease.get("status")
        if status not in _LIVE:
            raise ReservationNotActive(
                f"Lease '{lease.get('name')}' ({lease['id']}) is {status}: only a pending or active lease can be "
                "extended. Create a new lease instead."
            )
        current_end = parse_api_date(lease["end_date"])
        new_end = until if until is not None else current_end + (by or timedelta(0))
        if new_end <= current_end:
            raise UserInputError(
                f"New end {format_api_date(new_end)} UTC is not after the current end {format_api_date(current_end)} "
                "UTC."
            )
        log.info("Extending lease %s to %s UTC.", lease.get("name"), format_api_date(new_end))
        body = self.blazar.request("PUT", f"/leases/{lease['id']}", {"end_date": format_api_date(new_end)}) or {}
        return dict(body["lease"])

    def delete(self, lease: dict[str, Any]) -> None:
        require_ours(lease, self.prefix, self.user_id, "delete")
        log.info("Deleting lease %s (%s).", lease.get("name"), lease["id"])
        try:
            self.blazar.request("DELETE", f"/leases/{lease['id']}")
        except NotFound as exc:
            raise LeaseNotFound(self._not_found(lease["id"])) from exc


# ---------------------------------------------------------------------------------------------
# Reading a lease
# ---------------------------------------------------------------------------------------------


def is_active(lease: dict[str, Any]) -> bool:
    reservations = lease.get("reservations") or []
    return lease.get("status") == "ACTIVE" and all(r.get("status", "active") == "active" for r in reservations)


def not_active_message(lease: dict[str, Any]) -> str:
    parts = [f"Lease '{lease.get('name')}' ({lease.get('id')}) is {lease.get('status')}"]
    pending = [
        f"{r.get('id')} is {r.get('status')}" for r in lease.get("reservations") or [] if r.get("status") != "active"
    ]
    if pending:
        parts.append(f"reservation {'; '.join(pending)}")
    message = ", ".join(parts) + ": nothing can be launched on it yet."
    if lease.get("status") == "PENDING":
        message += f" It starts at {lease.get('start_date')} UTC."
    elif lease.get("status") == "ERROR":
        message += " Blazar could not set it up (often: no free host of that type). Delete it and create another."
    elif lease.get("status") in {"TERMINATED", "TERMINATING"}:
        message += " It has ended: create a new lease."
    return message


def summarize(lease: dict[str, Any]) -> dict[str, Any]:
    """The fields an operator (or a script) needs, and the tfvars each reservation feeds."""
    reservations = []
    tfvars: dict[str, str] = {}
    for res in lease.get("reservations") or []:
        role = _BY_RESOURCE_TYPE.get(str(res.get("resource_type")))
        item = {
            "id": res.get("id"),
            "resource_type": res.get("resource_type"),
            "status": res.get("status"),
        }
        if res.get("resource_type") == "flavor:instance":
            item["flavor_id"] = res.get("flavor_id") or res.get("id")
            item["amount"] = res.get("amount")
        if res.get("resource_type") == "physical:host":
            item["min"] = res.get("min")
            item["max"] = res.get("max")
        if res.get("resource_type") == FLOATING_IP:
            item["network_id"] = res.get("network_id")
            item["amount"] = res.get("amount")
        if role is not None:
            item["role"] = role.name
            tfvars[role.tfvars_key] = str(item.get("flavor_id") or res.get("id"))
        reservations.append(item)
    return {
        "id": lease.get("id"),
        "name": lease.get("name"),
        "status": lease.get("status"),
        "active": is_active(lease),
        "start_date": lease.get("start_date"),
        "end_date": lease.get("end_date"),
        "reservations": reservations,
        "tfvars": tfvars,
    }


# ---------------------------------------------------------------------------------------------
# The tfvars file Terraform reads (reservations.auto.tfvars.json, loaded automatically)
# ---------------------------------------------------------------------------------------------


def _read_tfvars(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, json.JSONDecodeError) as exc:
        raise UserInputError(f"{path} is not a JSON tfvars file: {exc}") from exc
    if not isinstance(data, dict):
        raise UserInputError(f"{path} is not a JSON object.")
    return data


def _write_tfvars(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def update_tfvars(path: Path, values: dict[str, Any]) -> dict[str, Any]:
    """Merge reservation ids into the JSON tfvars file (other keys are kept)."""
    if not path.parent.is_dir():
        raise UserInputError(f"Cannot write {path}: {path.parent} is not a directory (pass --tfvars).")
    data = _read_tfvars(path)
    data.update(values)
    _write_tfvars(path, data)
    log.info("Wrote %s to %s.", ", ".join(f"{k}={v}" for k, v in sorted(values.items())), path)
    return data


def forget_tfvars(path: Path, values: dict[str, Any]) -> list[str]:
    """Remove keys whose value is one of these reservation ids; returns the keys removed."""
    data = _read_tfvars(path)
    removed = [key for key, value in values.items() if data.get(key) == value]
    if removed:
        for key in removed:
            del data[key]
        _write_tfvars(path, data)
        log.info("Removed %s from %s.", ", ".join(removed), path)
    return removed


def forget_floating_ips(path: Path, lease: dict[str, Any]) -> list[str]:
    """Remove the role's `<role>_floating_ips` from the tfvars file when LEASE held the floating-IP reservation
    (its addresses leave the project with it); returns the keys removed."""
    if not floatingip_reservations(lease) or not path.exists():
        return []
    roles = {item["role"] for item in summarize(lease)["reservations"] if "role" in item}
    data = _read_tfvars(path)
    keys = [FLOATING_IP_TFVARS[role] for role in sorted(roles)]
    return forget_tfvars(path, {key: data[key] for key in keys if key in data})


# ---------------------------------------------------------------------------------------------
# Lease ends for Prometheus (k8s/monitoring/rules/leases.yaml alerts on them)
# ---------------------------------------------------------------------------------------------

END_METRIC = "chexops_lease_end_timestamp_seconds"
END_METRIC_HELP = "End of a chexops Blazar lease (Unix time, UTC), written by `chexops infra lease status`."


def _end_labels(row: dict[str, Any]) -> dict[str, str]:
    return {"lease": str(row["name"]), "lease_id": str(row["id"]), "cloud": str(row["cloud"])}


def lease_end_rules(rows: list[dict[str, Any]]) -> str:
    """A Prometheus rule file: one recording rule per lease whose value is the lease's end, so that
    Prometheus holds the metric without any exporter (the alerts compare it with time())."""
    import yaml

    rules = [
        {"record": END_METRIC, "expr": f"vector({row['end_timestamp']})", "labels": _end_labels(row)} for row in rows
    ]
    header = (
        f"# {END_METRIC}: the end of each chexops Blazar lease (Unix time, UTC), as recording rules.\n"
        "# Generated by `chexops infra lease status --rules`: regenerate after every lease create or extend.\n"
        "# The alerts on it are in leases.yaml beside it.\n"
    )
    body = {"groups": [{"name": "chexops-lease-ends", "rules": rules}]}
    return header + yaml.safe_dump(body, sort_keys=False)


def lease_end_textfile(rows: list[dict[str, Any]]) -> str:
    """The same metric in the text exposition format (node_exporter's textfile collector, *.prom)."""

    def label_text(labels: dict[str, str]) -> str:
        escaped = {k: v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for k, v in labels.items()}
        return ",".join(f'{k}="{v}"' for k, v in escaped.items())

    lines = [f"# HELP {END_METRIC} {END_METRIC_HELP}", f"# TYPE {END_METRIC} gauge"]
    lines += [f"{END_METRIC}{{{label_text(_end_labels(row))}}} {row['end_timestamp']}" for row in rows]
    return "\n".join(lines) + "\n"


def write_metric_file(path: Path, text: str) -> None:
    if not path.parent.is_dir():
        raise UserInputError(f"Cannot write {path}: {path.parent} is not a directory.")
    atomic_write_text(path, text)
    log.info("Wrote the lease ends to %s.", path)
