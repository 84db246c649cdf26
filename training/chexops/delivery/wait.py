"""Waiting for what was promoted: Argo CD to sync the promotion commit, Argo Rollouts to finish its canary.

`wait_synced` polls an Argo CD Application until `status.sync.revision` is the promotion commit, its
sync status Synced and its health as required; `wait_rollout` polls production's Rollout until the
canary is promoted (Healthy, stable = the new pods) or aborted. A Rollout paused for an Inconclusive
analysis waits for a person (`kubectl argo rollouts promote|abort`) up to `decision_timeout`, and if
nobody decides the outcome is `undecided`: the pipeline neither promotes nor rolls back. Both return
their result whatever happened (the CLI exits 3 unless it is a success), naming what they saw last.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from chexops.core.results import Result
from chexops.delivery.kube import Kube, custom_object

log = logging.getLogger(__name__)

HEALTH = ("Healthy", "Progressing", "Suspended", "Degraded", "Missing", "Unknown")


class SyncWait(Result):
    """An Application seen at the promotion commit (or not, at the timeout)."""

    application: str
    revision: str
    synced: bool
    seen_revision: str | None
    sync_status: str | None
    health: str | None
    operation: str | None
    message: str
    seconds: float


def application_state(app: dict[str, Any] | None, revision: str, health: str = "Healthy") -> tuple[bool, bool, str]:
    """(done, failed, description) for an Application object as Argo CD returns it."""
    if app is None:
        return False, False, "the Application does not exist"
    status = app.get("status") or {}
    sync = status.get("sync") or {}
    seen = sync.get("revision") or ""
    state = (status.get("health") or {}).get("status") or "Unknown"
    operation = status.get("operationState") or {}
    op_revision = ((operation.get("syncResult") or {}).get("revision")) or (
        ((operation.get("operation") or {}).get("sync") or {}).get("revision")
    )
    what = f"sync {sync.get('status', 'Unknown')} at {seen[:12] or 'no revision'}, health {state}"
    if operation.get("phase") in ("Failed", "Error") and op_revision == revision:
        return True, True, f"{what}; the sync of {revision[:12]} {operation['phase']}: {operation.get('message', '')}"
    if seen != revision:
        return False, False, f"{what} (not yet the promotion commit {revision[:12]})"
    if sync.get("status") != "Synced":
        return False, False, what
    if health != "any" and state != health:
        return False, False, what
    return True, False, what


def wait_synced(
    kube: Kube,
    application: str,
    revision: str,
    *,
    namespace: str = "argocd",
    health: str = "Healthy",
    timeout: float = 600,
    interval: float = 5,
    clock: Callable[[], float] = time.monotonic,
) -> SyncWait:
    """Poll until the Application is synced to `revision` with `health`, its sync failed, or the timeout."""
    path = custom_object("argoproj.io", "v1alpha1", namespace, "applications", application)
    start = clock()
    while True:
        app = kube.get(path)
        done, failed, what = application_state(app, revision, health)
        status = ((app or {}).get("status")) or {}
        result = SyncWait(
            application=application,
            revision=revision,
            synced=done and not failed,
            seen_revision=(status.get("sync") or {}).get("revision"),
            sync_status=(status.get("sync") or {}).get("status"),
            health=(status.get("health") or {}).get("status"),
            operation=(status.get("operationState") or {}).get("phase"),
            message=what,
            seconds=round(clock() - start, 1),
        )
        if done:
            (log.error if failed else log.info)("Application %s: %s", application, what)
            return result
        if clock() - start >= timeout:
            result.message = f"not synced to {revision[:12]} within {timeout:.0f} s: {what}"
            return result
        log.info("Application %s: %s; waiting", application, what)
        time.sleep(interval)


class RolloutWait(Result):
    """Production's Rollout at the end of its canary: promoted, aborted, or still undecided at the timeout."""

    rollout: str
    version: str
    outcome: str  # promoted | aborted | undecided (paused, nobody decided) | timeout
    phase: str | None
    message: str
    analysis_runs: list[dict[str, str]]
    analysis_run_names: str  # comma-separated, for the production promotion's evidence
    analysis_phase: str  # Successful when every run was, else the first that was not
    seconds: float


def rollout_state(rollout: dict[str, Any] | None, version: str) -> tuple[str, str]:
    """(state, description): state is promoted, aborted, paused (for a person), progressing or missing."""
    if rollout is None:
        return "missing", "the Rollout does not exist"
    meta, spec, status = rollout.get("metadata") or {}, rollout.get("spec") or {}, rollout.get("status") or {}
    labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    want = labels.get("chexops.io/model-version")
    phase = status.get("phase") or "Unknown"
    what = f"phase {phase}: {status.get('message', '')}".rstrip(": ")
    if want != version:
        return "progressing", f"the Rollout's template is version {want}, not {version} (not synced yet)"
    if status.get("observedGeneration") not in (str(meta.get("generation")), meta.get("generation")):
        return "progressing", f"{what} (the controller has not seen generation {meta.get('generation')} yet)"
    if status.get("abort") or phase == "Degraded":
        return "aborted", what
    reasons = {c.get("reason") for c in status.get("pauseConditions") or []}
    if "InconclusiveAnalysis" in reasons:
        return "paused", f"{what}: an analysis was Inconclusive; a person decides (kubectl argo rollouts promote|abort)"
    stable, current = status.get("stableRS"), status.get("currentPodHash")
    if phase == "Healthy" and stable and stable == current:
        return "promoted", f"{what}; stable is the new ReplicaSet {stable}"
    return "progressing", what


def analysis_runs(kube: Kube, namespace: str, rollout: dict[str, Any] | None) -> list[dict[str, str]]:
    """The AnalysisRuns of the Rollout's current pod hash, by name and phase."""
    current = ((rollout or {}).get("status") or {}).get("currentPodHash")
    if not current:
        return []
    listing = kube.get(
        f"/apis/argoproj.io/v1alpha1/namespaces/{namespace}/analysisruns?labelSelector=rollouts-pod-template-hash%3D{current}"
    )
    return sorted(
        (
            {"name": item["metadata"]["name"], "phase": (item.get("status") or {}).get("phase", "Pending")}
            for item in (listing or {}).get("items", [])
        ),
        key=lambda run: run["name"],
    )


def wait_rollout(
    kube: Kube,
    name: str,
    version: str,
    *,
    namespace: str = "production",
    timeout: float = 3600,
    decision_timeout: float = 86400,
    interval: float = 10,
    clock: Callable[[], float] = time.monotonic,
) -> RolloutWait:
    """Poll until the canary of `version` is promoted or aborted; `timeout` bounds the canary's own
    progress, `decision_timeout` (from the pause) a person's decision on an Inconclusive analysis."""
    path = custom_object("argoproj.io", "v1alpha1", namespace, "rollouts", name)
    start, told, paused_at = clock(), "", None
    while True:
        rollout = kube.get(path)
        state, what = rollout_state(rollout, version)
        now = clock()
        if state == "paused":
            paused_at = paused_at if paused_at is not None else now
        else:
            paused_at = None
        outcome = state if state in ("promoted", "aborted") else None
        if outcome is None and paused_at is not None and now - paused_at >= decision_timeout:
            outcome, what = "undecided", f"{what}; nobody decided within {decision_timeout:.0f} s"
        elif outcome is None and paused_at is None and now - start >= timeout:
            outcome, what = "timeout", f"version {version} not promoted within {timeout:.0f} s: {what}"
        if outcome is not None:
            (log.info if outcome == "promoted" else log.error)("Rollout %s: %s", name, what)
            runs = analysis_runs(kube, namespace, rollout)
            worst = next((r["phase"] for r in runs if r["phase"] != "Successful"), "Successful" if runs else "")
            return RolloutWait(
                rollout=name,
                version=version,
                outcome=outcome,
                phase=((rollout or {}).get("status") or {}).get("phase"),
                message=what,
                analysis_runs=runs,
                analysis_run_names=",".join(r["name"] for r in runs),
                analysis_phase=worst,
                seconds=round(now - start, 1),
            )
        if what != told:
            (log.warning if state == "paused" else log.info)("Rollout %s: %s", name, what)
            told = what
        time.sleep(interval)
