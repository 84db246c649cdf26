"""Promotion evidence, kept as tags on the MLflow registry version it is about.

One prefix per stage, written by the command that produced the evidence and read by the promotion
that needs it:

| tags | written by | read by |
|---|---|---|
| `gate` (JSON verdicts) | `chexops register` (only when the gate passed) | `promote --to staging` |
| `staging.*` (image, commit, at) | `promote --to staging` | `promote --to canary` (the image) |
| `loadtest.*` (passed, p95_ms, errors, versions, ...) | `chexops loadtest --record` | `promote --to canary` |
| `canary.*` (commit, at) | `promote --to canary` | `promote --to production` |
| `freight`, `freight.*` | `promote` (the run's freight) | people, audits, `promote` run by hand |
| `analysis.*`, `production.*` | `promote --to production` | people, audits |
| `rollback.ENV` | `promote --rollback ENV` | people, audits |

The judging functions are pure (a version's tags in, a verdict out); MLflow is touched only by
`version_or_fail`, `record` and `move_alias`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from chexops.core.errors import UserInputError

log = logging.getLogger(__name__)


@dataclass
class Evidence:
    """What a promotion found: whether it may go ahead, and the lines its commit message carries."""

    ok: bool
    reasons: list[str] = field(default_factory=list)  # why not, when not ok
    lines: list[str] = field(default_factory=list)  # human evidence for the commit message
    facts: dict[str, Any] = field(default_factory=dict)

    def refuse(self, reason: str) -> None:
        self.ok = False
        self.reasons.append(reason)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _json(tags: dict[str, str], key: str) -> Any:
    try:
        return json.loads(tags[key])
    except (KeyError, ValueError):
        return None


def gate_evidence(tags: dict[str, str]) -> Evidence:
    """Staging: the version was registered by a passing quality gate (`register` tags it `gate`)."""
    verdicts = _json(tags, "gate")
    ev = Evidence(ok=True)
    if not isinstance(verdicts, list) or not verdicts:
        ev.refuse("it carries no quality-gate verdicts (tag `gate`): register it with `chexops register`")
        return ev
    for v in verdicts:
        value = "n/a" if v.get("value") is None else f"{v['value']:.4f}"
        ev.lines.append(
            f"gate {v.get('criterion')}: {value} (limit {v.get('limit')}) {'PASS' if v.get('passed') else 'FAIL'}"
        )
    failed = [v.get("criterion") for v in verdicts if not v.get("passed")]
    if failed:
        ev.refuse(f"its quality gate failed ({', '.join(map(str, failed))})")
    if tags.get("mean_auroc"):
        ev.lines.insert(0, f"mean AUROC {tags['mean_auroc']} on data {tags.get('data_version', '?')}")
    ev.facts["gate"] = verdicts
    return ev


LOADTEST_KEYS = (
    "passed",
    "requests",
    "failures",
    "error_ratio",
    "p50_ms",
    "p95_ms",
    "rps",
    "users",
    "duration_s",
    "max_p95_ms",
    "max_error_ratio",
    "host",
    "expected_version",
    "at",
)


def loadtest_tags(result: dict[str, Any]) -> dict[str, str]:
    """`chexops loadtest --record`: the result as `loadtest.*` tags (the versions that answered as JSON)."""
    tags = {
        f"loadtest.{k}": str(result[k]).lower() if isinstance(result[k], bool) else str(result[k])
        for k in LOADTEST_KEYS
        if result.get(k) is not None
    }
    tags["loadtest.versions"] = json.dumps(result.get("versions") or {}, sort_keys=True)
    return tags


def canary_evidence(tags: dict[str, str], version: str) -> Evidence:
    """Canary: the version is in staging (its image recorded) and a load test against staging passed
    after that promotion, every answer of it from this version."""
    ev = Evidence(ok=True)
    answered = sorted(_json(tags, "loadtest.versions") or {})
    if "loadtest.passed" in tags and answered != [str(version)]:
        ev.refuse(
            f"the recorded load test measured {', '.join('version ' + v for v in answered) or 'no known version'}, "
            f"not only version {version}"
        )
    image = tags.get("staging.image")
    if not image:
        ev.refuse("it was never promoted to staging (no `staging.image` tag)")
    if tags.get("loadtest.passed") != "true":
        ev.refuse(
            "no passing staging load test is recorded (`chexops loadtest --record models:/NAME/N`)"
            if "loadtest.passed" not in tags
            else f"its staging load test failed (p95 {tags.get('loadtest.p95_ms')} ms, "
            f"error ratio {tags.get('loadtest.error_ratio')})"
        )
    elif image and tags.get("loadtest.at", "") < tags.get("staging.at", ""):
        ev.refuse(
            f"the recorded load test ({tags.get('loadtest.at')}) is older than the staging promotion "
            f"({tags.get('staging.at')})"
        )
    if "loadtest.passed" in tags:
        ev.lines.append(
            f"load test (staging, {tags.get('loadtest.host', '?')}): {tags.get('loadtest.users')} users, "
            f"{tags.get('loadtest.duration_s')} s, {tags.get('loadtest.requests')} requests, "
            f"{tags.get('loadtest.failures')} failures (ratio {tags.get('loadtest.error_ratio')}, "
            f"max {tags.get('loadtest.max_error_ratio')}), p50 {tags.get('loadtest.p50_ms')} ms, "
            f"p95 {tags.get('loadtest.p95_ms')} ms (max {tags.get('loadtest.max_p95_ms')}), "
            f"{tags.get('loadtest.rps')} req/s, at {tags.get('loadtest.at')}"
        )
    ev.facts["image"] = image
    return ev


def production_evidence(
    tags: dict[str, str], canary_version: str | None, version: str, analysis_run: str | None, analysis_phase: str | None
) -> Evidence:
    """Production: the version is the canary and its analysis run ended Successful."""
    ev = Evidence(ok=True)
    if not tags.get("canary.commit"):
        ev.refuse("it was never promoted to canary (no `canary.commit` tag)")
    if canary_version != version:
        ev.refuse(
            f"the canary alias is on version {canary_version}, not {version}"
            if canary_version
            else "no version holds the canary alias"
        )
    if not analysis_run:
        ev.refuse("no canary analysis run is named (--analysis-run)")
    if analysis_phase != "Successful":
        ev.refuse(
            f"the canary analysis {analysis_run or ''} is {analysis_phase or 'unknown'}, not Successful".replace(
                "  ", " "
            )
        )
    ev.lines.append(
        f"canary analysis {analysis_run}: {analysis_phase} (Argo Rollouts at 10 % then 50 %, "
        f"since {tags.get('canary.at', '?')})"
    )
    ev.facts["image"] = tags.get("staging.image")
    return ev


# --- MLflow ------------------------------------------------------------------------------------------


def version_or_fail(client, name: str, version: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        raise UserInputError(f"{name} has no version {version} at {client.tracking_uri}.") from None


def alias_version(client, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def record(client, name: str, version: str, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)


def move_alias(client, name: str, alias: str, version: str | None) -> None:
    """Point `alias` at `version`; None deletes it (nothing held that environment before)."""
    if version:
        client.set_registered_model_alias(name, alias, str(version))
    elif alias_version(client, name, alias) is not None:
        client.delete_registered_model_alias(name, alias)
    log.info("Alias %s of %s -> %s", alias, name, version or "(none)")
