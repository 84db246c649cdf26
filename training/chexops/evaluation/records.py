"""A run's evaluation records: every `chexops evaluate` writes its own, never over an earlier one.

A record is the artifact folder `evaluation/<id>/` (metrics.json, thresholds.json, config.yaml,
plots, model card, hard cases) plus its index entry, the run tag `evaluation.<id>` (split, split
version, data version, config hash, mean AUROC). Ids sort by time, so the latest is the largest.
A registry version names the record the gate judged in its tag `evaluation_id`.

`EvaluationRecord` is metrics.json; `Evaluation`, what `chexops evaluate` returns, adds where it was logged.
"""

from __future__ import annotations

import json
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

from chexops.core.errors import UserInputError
from chexops.core.results import Result
from chexops.tracking import download

EVAL_DIR = "evaluation"
INDEX_PREFIX = "evaluation."
VERSION_TAG = "evaluation_id"
# What the index entry keeps of metrics.json (small: a run tag).
INDEX_KEYS = (
    "created",
    "split",
    "split_version",
    "data_version",
    "config_sha256",
    "rule",
    "mean_auroc",
    "mean_auroc_ci",
    "bootstrap_unit",
)


class HardCases(Result):
    """The record's hard cases: how many, and where (a CheXpert-layout dataset)."""

    count: int
    artifact_path: str
    csv: str


class ValidationMetrics(Result):
    """The thresholds' own split: mean AUROC and, per finding, sensitivity, specificity and AUROC."""

    mean_auroc: float | None
    per_label: dict[str, dict[str, Any]]


class EvaluationRecord(Result):
    """One evaluation, as its record's metrics.json holds it (JSON-safe: no NaN, floats rounded).

    Per finding, slice and hold-out the numbers are open-ended dicts (`chexops.evaluation.metrics`)."""

    run_id: str
    evaluation_id: str
    created: str
    split: str
    n: int
    validation_n: int
    split_version: str
    test_source: str | None
    test_patients_in_train: int
    config_sha256: str
    data_version: str
    data_sha256: str
    trained_data_version: str | None
    mean_over: list[str]
    mean_auroc: float | None
    mean_auroc_ci: list[float] | None
    mean_ece: float | None
    rule: str
    target_sensitivity: float | None
    thresholds: dict[str, float | None]
    thresholds_defaulted: list[str]
    bootstrap: int
    bootstrap_unit: str
    bootstrap_groups: int
    per_label: dict[str, dict[str, Any]]
    validation: ValidationMetrics
    slices: list[dict[str, Any]]
    worst_slice: dict[str, Any] | None
    holdouts: dict[str, dict[str, Any]]
    hard_cases: HardCases


class Evaluation(EvaluationRecord):
    """What `chexops evaluate` returns: the record and where it was logged."""

    artifacts: list[str]
    artifact_uri: str
    tracking_uri: str
    seconds: float


def new_id() -> str:
    """`20261130T141800123Z-a1b2c3`: UTC time to the millisecond, then a random suffix."""
    now = time.time()
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now * 1000) % 1000:03d}Z-{secrets.token_hex(3)}"


def artifact_path(evaluation_id: str, name: str = "") -> str:
    return f"{EVAL_DIR}/{evaluation_id}" + (f"/{name}" if name else "")


def index_entry(result: dict[str, Any]) -> tuple[str, str]:
    """The run tag (key, value) that indexes an evaluation result."""
    return INDEX_PREFIX + result["evaluation_id"], json.dumps({k: result.get(k) for k in INDEX_KEYS}, sort_keys=True)


def index(run) -> list[dict[str, Any]]:
    """The run's evaluations, oldest first, each its index entry with its `id`."""
    entries = []
    for key, value in (run.data.tags or {}).items():
        if key.startswith(INDEX_PREFIX):
            try:
                entry = json.loads(value)
            except ValueError:
                continue
            entries.append({"id": key[len(INDEX_PREFIX) :], **(entry if isinstance(entry, dict) else {})})
    return sorted(entries, key=lambda e: e["id"])


def choose(run, evaluation_id: str | None = None) -> dict[str, Any]:
    """The named evaluation of `run`, or its latest; `UserInputError` when there is none."""
    run_id = run.info.run_id
    entries = index(run)
    if not entries:
        raise UserInputError(f"run {run_id} has not been evaluated; run `chexops evaluate --run {run_id}` first.")
    if evaluation_id is None:
        return entries[-1]
    for entry in entries:
        if entry["id"] == evaluation_id:
            return entry
    raise UserInputError(
        f"run {run_id} has no evaluation {evaluation_id!r}; it has {', '.join(e['id'] for e in entries)}."
    )


def read_json(client, run_id: str, evaluation_id: str, name: str) -> dict[str, Any]:
    """One JSON file of an evaluation record."""
    path = artifact_path(evaluation_id, name)
    with tempfile.TemporaryDirectory(prefix="chexops-evaluation-") as tmp:
        local = download(client, run_id, path, Path(tmp))
        if local is None:
            raise UserInputError(
                f"run {run_id} indexes evaluation {evaluation_id} but has no {path}; evaluate it again."
            )
        try:
            return json.loads(local.read_text())
        except ValueError:
            raise UserInputError(f"{path} of run {run_id} is not valid JSON; evaluate it again.") from None


def judged(client, run_id: str, version_tags: dict[str, str] | None = None) -> str | None:
    """The evaluation a registry version was judged on (its `evaluation_id` tag), else the run's
    latest; None when the run has no evaluation."""
    if version_tags and version_tags.get(VERSION_TAG):
        return version_tags[VERSION_TAG]
    entries = index(client.get_run(run_id))
    return entries[-1]["id"] if entries else None
