"""The real `terraform` binary as an operator runs it on terraform/: init against the remote state,
a saved plan summarised before it is applied, a destroy that keeps the volumes, and drift.

Every run is `terraform -chdir=DIR ...` with TF_IN_AUTOMATION set; its output is logged line by line
(stderr), and a failure is a ChexopsError that quotes terraform's last lines ("Error acquiring the
state lock" when another operator holds the state).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Sequence

from chexops.core.errors import ChexopsError, UserInputError
from chexops.core.results import Result

log = logging.getLogger(__name__)

#: Resource types `destroy` leaves in place: the volumes hold platform state and datasets and carry
#: `prevent_destroy` (terraform/modules/volumes), which would make a plain `terraform destroy` fail; the
#: object-store container holds the raw data (and Swift refuses to delete it while it holds objects).
KEPT_TYPES = ("openstack_blockstorage_volume_v3", "openstack_objectstorage_container_v1")

#: Exit code of `terraform plan -detailed-exitcode` when the plan has changes.
PLAN_HAS_CHANGES = 2


class DriftFound(ChexopsError):
    """The infrastructure differs from terraform/ (exit 3, after the result is printed)."""

    exit_code = 3


class Change(Result):
    """One resource a plan touches, with terraform's actions (create, update, delete, read)."""

    address: str
    actions: list[str]


class PlanSummary(Result):
    """What a saved plan will do, counted the way `terraform plan` prints it."""

    add: int
    change: int
    destroy: int
    changes: list[Change]
    drifted: list[Change]

    @property
    def empty(self) -> bool:
        return not self.changes

    def lines(self) -> list[str]:
        head = [f"Plan: {self.add} to add, {self.change} to change, {self.destroy} to destroy."]
        outside = [f"  changed outside Terraform: {c.address} ({'/'.join(c.actions)})" for c in self.drifted]
        return head + outside + [f"  {'/'.join(c.actions):<14} {c.address}" for c in self.changes]


def _changes(entries: list[dict]) -> list[Change]:
    out = []
    for entry in entries or []:
        actions = list(entry.get("change", {}).get("actions", []))
        if actions and actions != ["no-op"]:
            out.append(Change(address=entry["address"], actions=actions))
    return out


def summarize_plan(plan: dict) -> PlanSummary:
    """`terraform show -json PLANFILE` -> PlanSummary (a replacement counts as one add and one destroy)."""
    changes = [c for c in _changes(plan.get("resource_changes", [])) if c.actions != ["read"]]
    return PlanSummary(
        add=sum("create" in c.actions for c in changes),
        change=sum(c.actions == ["update"] for c in changes),
        destroy=sum("delete" in c.actions for c in changes),
        changes=changes,
        drifted=_changes(plan.get("resource_drift", [])),
    )


def resource_type(address: str) -> tuple[str, bool]:
    """(resource type, is a data source) of a state address such as module.m["k"].TYPE.NAME[0]."""
    parts = re.sub(r'"[^"]*"', '""', address).split(".")
    while len(parts) > 2 and parts[0] == "module":
        parts = parts[2:]
    if parts[0] == "data":
        return (parts[1] if len(parts) > 1 else ""), True
    return parts[0], False


def split_kept(addresses: Sequence[str], keep: Sequence[str] = KEPT_TYPES) -> tuple[list[str], list[str]]:
    """Managed state addresses -> (to destroy, kept). A resource is kept when its type is in keep or its
    address matches one of keep's shell patterns; data sources are neither (they hold nothing)."""

    def kept(address: str) -> bool:
        return resource_type(address)[0] in keep or any(fnmatch.fnmatchcase(address, p) for p in keep)

    managed = [a for a in addresses if not resource_type(a)[1]]
    return [a for a in managed if not kept(a)], [a for a in managed if kept(a)]


def _error(lines: list[str], most: int = 8) -> str:
    """Terraform's error, from its first "Error:" line (else its last lines), boxes stripped, on one line."""
    text = [line.strip(" │╷╵") for line in lines]
    text = [line for line in text if line]
    first = next((i for i, line in enumerate(text) if line.startswith("Error:")), max(len(text) - most, 0))
    return " / ".join(text[first : first + most])


class Terraform:
    """`terraform -chdir=tf_dir` with TF_IN_AUTOMATION: output logged, failures raised with their tail."""

    def __init__(self, tf_dir: Path, binary: str = "terraform") -> None:
        if not tf_dir.is_dir():
            raise UserInputError(f"{tf_dir} is not a directory: run from the repository root or pass --tf-dir.")
        self.tf_dir = tf_dir
        found = shutil.which(binary)
        if found is None:
            raise UserInputError(f"'{binary}' is not on PATH: install Terraform >= 1.11 (terraform version).")
        self.binary = found

    def _env(self) -> dict[str, str]:
        return {**os.environ, "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1"}

    def run(self, *args: str, ok: Sequence[int] = (0,)) -> int:
        """Run one command, its output logged; returns its exit code (one of ok) or raises ChexopsError."""
        cmd = [self.binary, f"-chdir={self.tf_dir}", *args]
        log.info("Running: terraform -chdir=%s %s", self.tf_dir, " ".join(args))
        lines: list[str] = []
        with subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, env=self._env()
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip()
                log.info("  %s", line)
                lines.append(line)
        if proc.returncode not in ok:
            raise ChexopsError(f"terraform {args[0]} failed in {self.tf_dir} (exit {proc.returncode}): {_error(lines)}")
        return proc.returncode

    def capture(self, *args: str) -> str:
        """Stdout of a read-only command (show, state list)."""
        proc = subprocess.run(
            [self.binary, f"-chdir={self.tf_dir}", *args],
            capture_output=True,
            text=True,
            check=False,
            env=self._env(),
            stdin=subprocess.DEVNULL,
        )
        if proc.returncode != 0:
            error = _error(proc.stderr.splitlines())
            raise ChexopsError(f"terraform {args[0]} failed in {self.tf_dir} (exit {proc.returncode}): {error}")
        return proc.stdout

    def init(self, backend_config: Path | None = None, *, reconfigure: bool = False, migrate: bool = False) -> None:
        """`terraform init` with the remote state's partial backend configuration (backend.hcl)."""
        args = ["init", "-input=false", "-no-color"]
        if backend_config is not None:
            if not backend_config.is_file():
                raise UserInputError(
                    f"Backend configuration {backend_config} does not exist: copy terraform/backend.hcl.example "
                    "to terraform/backend.hcl and fill it in."
                )
            args.append(f"-backend-config={backend_config.resolve()}")
        if reconfigure:
            args.append("-reconfigure")
        if migrate:
            args += ["-migrate-state", "-force-copy"]
        self.run(*args)

    def plan(self, planfile: Path, *, destroy: bool = False, targets: Sequence[str] = ()) -> PlanSummary:
        """Save a plan to planfile and summarise it (terraform show -json)."""
        args = ["plan", "-input=false", "-no-color", f"-out={planfile.resolve()}"]
        args += ["-destroy"] if destroy else []
        args += [f"-target={t}" for t in targets]
        self.run(*args)
        return summarize_plan(json.loads(self.capture("show", "-json", str(planfile.resolve()))))

    def apply(self, planfile: Path) -> None:
        """Apply exactly the saved plan (terraform refuses it if the state moved since)."""
        self.run("apply", "-input=false", "-no-color", str(planfile.resolve()))

    def state_list(self) -> list[str]:
        return [line for line in self.capture("state", "list").splitlines() if line.strip()]

    def destroy_targets(self, keep: Sequence[str] = KEPT_TYPES) -> tuple[list[str], list[str]]:
        """(addresses to destroy, addresses kept) of the managed resources in the state."""
        return split_kept(self.state_list(), keep)

    def drift(self, planfile: Path) -> tuple[bool, PlanSummary]:
        """`terraform plan -detailed-exitcode`: (whether it found changes, their summary)."""
        args = ["plan", "-input=false", "-no-color", "-detailed-exitcode", f"-out={planfile.resolve()}"]
        code = self.run(*args, ok=(0, PLAN_HAS_CHANGES))
        summary = summarize_plan(json.loads(self.capture("show", "-json", str(planfile.resolve()))))
        if code == PLAN_HAS_CHANGES and summary.empty:
            # Only outputs differ: still drift for -detailed-exitcode.
            summary.changes = [Change(address="(outputs)", actions=["update"])]
        return code == PLAN_HAS_CHANGES, summary
