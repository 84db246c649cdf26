"""Cinder snapshots of the cluster's volumes, taken before a teardown (`chexops infra snapshot`).

The volumes are Terraform's (`volumes` in terraform/variables.tf, named ``<name_prefix>-<key>`` by the
volumes module). Each snapshot is named ``<volume>-<UTC timestamp>`` and carries the metadata
``chexops_snapshot_of: <volume>``, which is what `keep` prunes by: snapshots someone else took of the
same volume are never deleted. An attached (``in-use``) volume is snapshotted with ``force: true``;
the copy is crash-consistent, as after a power cut (PostgreSQL and MinIO recover from that).

Cinder is reached through the connection's session (`OpenStackClient`, service ``block-storage``,
whose catalog URL already holds the project: ``.../v3/<project_id>``).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

from chexops.core.errors import ChexopsError, UserInputError
from chexops.infra.clouds import Cloud
from chexops.infra.openstack import OpenStackClient

log = logging.getLogger(__name__)

METADATA_KEY = "chexops_snapshot_of"
TIMESTAMP_FORMAT = "%Y%m%dT%H%M%SZ"


class SnapshotFailed(ChexopsError):
    """Cinder put a snapshot in `error`, or it did not become available in time."""


def volume_names(tf_dir: Path, name_prefix: str | None = None) -> list[str]:
    """Our volumes' Cinder names, `<name_prefix>-<key>` for each key of Terraform's `volumes`."""
    from chexops.infra.lease import resolve_prefix
    from chexops.infra.preflight import terraform_settings

    prefix = resolve_prefix(name_prefix, tf_dir)
    volumes = terraform_settings(tf_dir).get("volumes") or {}
    if not isinstance(volumes, dict) or not volumes:
        raise UserInputError(f"Terraform's `volumes` in {tf_dir} is empty: there is nothing to snapshot.")
    return [f"{prefix}-{key}" for key in sorted(volumes)]


def snapshot_name(volume: str, now: datetime) -> str:
    return f"{volume}-{now.astimezone(timezone.utc).strftime(TIMESTAMP_FORMAT)}"


class Snapshots:
    """Snapshot operations on one cloud's Cinder."""

    def __init__(self, cinder: OpenStackClient, sleep: Callable[[float], None] = time.sleep) -> None:
        self.cinder = cinder
        self._sleep = sleep

    def volume(self, name: str) -> dict[str, Any]:
        body = self.cinder.request("GET", f"/volumes/detail?name={quote(name)}") or {}
        found = [v for v in body.get("volumes", []) if v.get("name") == name]
        if not found:
            raise UserInputError(
                f"Volume '{name}' does not exist on cloud '{self.cinder.cloud.name}': check --cloud (the volumes are "
                "on KVM@TACC) and the name prefix, or `terraform apply` has not created it."
            )
        if len(found) > 1:
            raise UserInputError(
                f"Several volumes are named '{name}' ({', '.join(v['id'] for v in found)}): remove the stray one."
            )
        return found[0]

    def create(self, volume: dict[str, Any], name: str) -> dict[str, Any]:
        attached = volume.get("status") == "in-use"
        body = {
            "snapshot": {
                "volume_id": volume["id"],
                "name": name,
                "description": f"chexops: {volume['name']} before teardown",
                "force": attached,
                "metadata": {METADATA_KEY: volume["name"]},
            }
        }
        log.info(
            "Snapshotting volume %s (%s%s) as %s.", volume["name"], volume["id"], ", attached" if attached else "", name
        )
        return dict((self.cinder.request("POST", "/snapshots", body) or {})["snapshot"])

    def wait_available(self, snapshot: dict[str, Any], timeout: float, poll: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            current = dict((self.cinder.request("GET", f"/snapshots/{snapshot['id']}") or {})["snapshot"])
            status = current.get("status")
            if status == "available":
                return current
            if status in {"error", "error_deleting", "deleting"}:
                raise SnapshotFailed(
                    f"Snapshot {current.get('name')} ({current['id']}) is {status}: Cinder could not take it. Look at "
                    "`openstack volume snapshot show` and do not tear down before a snapshot is available."
                )
            if time.monotonic() >= deadline:
                raise SnapshotFailed(
                    f"Snapshot {current.get('name')} ({current['id']}) is still {status} after {int(timeout)} s: wait "
                    "for it (`openstack volume snapshot show`) before tearing down, or rerun with a longer --timeout."
                )
            log.info("Snapshot %s is %s; waiting for available...", current.get("name"), status)
            self._sleep(poll)

    def ours(self, volume: dict[str, Any]) -> list[dict[str, Any]]:
        """chexops's snapshots of this volume, oldest first."""
        body = self.cinder.request("GET", f"/snapshots/detail?volume_id={quote(volume['id'])}") or {}
        mine = [
            s
            for s in body.get("snapshots", [])
            if s.get("volume_id") == volume["id"] and (s.get("metadata") or {}).get(METADATA_KEY) == volume["name"]
        ]
        return sorted(mine, key=lambda s: (str(s.get("created_at")), str(s.get("name"))))

    def prune(self, volume: dict[str, Any], keep: int) -> list[dict[str, Any]]:
        """Delete all but the `keep` newest chexops snapshots of the volume; returns those deleted."""
        snapshots = self.ours(volume)
        doomed = snapshots[: max(len(snapshots) - keep, 0)]
        for snap in doomed:
            log.info("Deleting old snapshot %s (%s) of %s.", snap.get("name"), snap["id"], volume["name"])
            self.cinder.request("DELETE", f"/snapshots/{snap['id']}")
        return doomed


def snapshot_volumes(
    cloud: Cloud,
    volumes: list[str],
    keep: int | None = None,
    timeout: float = 1800,
    poll: float = 10,
    now: datetime | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[dict[str, Any]]:
    """Snapshot each named volume, wait until every snapshot is available, then (with KEEP) prune older chexops
    snapshots of the same volume. Returns one row per volume. All volumes are looked up before any snapshot
    is taken, so a wrong name costs nothing."""
    if keep is not None and keep < 1:
        raise UserInputError(f"--keep must be at least 1 (the snapshot just taken), not {keep}.")
    moment = now or datetime.now(timezone.utc)
    snapshots = Snapshots(OpenStackClient(cloud, "block-storage"), sleep=sleep)
    found = [snapshots.volume(name) for name in volumes]
    taken = [(volume, snapshots.create(volume, snapshot_name(volume["name"], moment))) for volume in found]
    rows = []
    for volume, snap in taken:
        ready = snapshots.wait_available(snap, timeout=timeout, poll=poll)
        pruned = snapshots.prune(volume, keep) if keep is not None else []
        rows.append(
            {
                "volume": volume["name"],
                "volume_id": volume["id"],
                "snapshot": ready.get("name"),
                "snapshot_id": ready["id"],
                "status": ready.get("status"),
                "size_gb": ready.get("size"),
                "forced": volume.get("status") == "in-use",
                "pruned": [s.get("name") for s in pruned],
            }
        )
    return rows
