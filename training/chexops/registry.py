"""The MLflow Model Registry side of `chexops register`: read a run's evaluation, find the model
holding `production`, and (when the gate passes) create a version with its tags and the alias
`candidate`. Environments are aliases (candidate, staging, canary, production); stages are never used.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from pathlib import Path
from typing import Any

from .errors import UserInputError
from .evaluate import EVAL_DIR, download, get_run, mlflow_client
from .gate import GateConfig, judge, passed
from .labels import metric_key
from .model_ref import CHECKPOINT_DIR, CHECKPOINT_PATH, DEFAULT_MODEL_NAME, parse_run_ref

log = logging.getLogger(__name__)

ALIASES = ("candidate", "staging", "canary", "production")


def read_evaluation(client, run_id: str) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """(run, evaluation/metrics.json, evaluation/thresholds.json) of an evaluated run."""
    run = get_run(client, run_id)
    if run.data.tags.get("evaluated") != "true":
        raise UserInputError(f"run {run_id} has not been evaluated; run `chexops evaluate --run {run_id}` first.")
    with tempfile.TemporaryDirectory(prefix="chexops-register-") as tmp:
        found = {}
        for name in ("metrics.json", "thresholds.json"):
            path = download(client, run_id, f"{EVAL_DIR}/{name}", Path(tmp))
            if path is None:
                raise UserInputError(f"run {run_id} is tagged evaluated but has no {EVAL_DIR}/{name}; evaluate it again.")
            try:
                found[name] = json.loads(path.read_text())
            except ValueError:
                raise UserInputError(f"{EVAL_DIR}/{name} of run {run_id} is not valid JSON; evaluate it again.") from None
    names = {a.path for a in client.list_artifacts(run_id, CHECKPOINT_DIR)}
    if CHECKPOINT_PATH not in names:
        raise UserInputError(f"run {run_id} has no {CHECKPOINT_PATH} artifact to register.")
    return run, found["metrics.json"], found["thresholds.json"]


def _registered_model(client, name: str):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return None
        raise


def version_summary(client, name: str, alias: str) -> dict[str, Any] | None:
    """The version holding `alias` (its number and the tags the gate compares), or None."""
    model = _registered_model(client, name)
    if model is None or alias not in (model.aliases or {}):
        return None
    version = client.get_model_version(name, str(model.aliases[alias]))
    tags = version.tags or {}
    mean = tags.get("mean_auroc")
    return {"version": str(version.version), "run_id": version.run_id, "mean_auroc": float(mean) if mean else None,
            "data_version": tags.get("data_version"),
            "per_label": {k.removeprefix("auroc."): float(v) for k, v in tags.items() if k.startswith("auroc.")}}


def version_tags(run, evaluation: dict[str, Any], thresholds: dict[str, Any], verdicts: list[dict[str, Any]]) -> dict[str, str]:
    """What a registry version carries: metrics, data fingerprint, code, training run, thresholds, gate."""
    run_tags = run.data.tags
    tags = {
        "run_id": run.info.run_id,
        "mean_auroc": f"{evaluation['mean_auroc']:.6f}" if evaluation.get("mean_auroc") is not None else "",
        "mean_over": ",".join(evaluation.get("mean_over") or []),
        "eval_split": str(evaluation.get("split", "")),
        "data_version": str(evaluation.get("data_version") or run_tags.get("data_version", "")),
        "data_sha256": str(evaluation.get("data_sha256") or run_tags.get("data_sha256", "")),
        "git_commit": run_tags.get("git_commit", ""),
        "git_dirty": run_tags.get("git_dirty", ""),
        "threshold_rule": str(thresholds.get("rule", "")),
        "thresholds": json.dumps(thresholds.get("thresholds", {}), sort_keys=True),
        "gate": json.dumps(verdicts),
    }
    ci = evaluation.get("mean_auroc_ci")
    if ci:
        tags["mean_auroc_ci"] = json.dumps(ci)
    for label, m in (evaluation.get("per_label") or {}).items():
        if m.get("auroc") is not None and not math.isnan(m["auroc"]):
            tags[f"auroc.{metric_key(label)}"] = f"{m['auroc']:.6f}"
    return {k: v for k, v in tags.items() if v != ""}


def ensure_registered_model(client, name: str) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

    if _registered_model(client, name) is not None:
        return
    try:
        client.create_registered_model(name, tags={"created_by": "chexops register"},
                                       description="chexops chest X-ray classifier; environments are the aliases "
                                                   + ", ".join(ALIASES) + ".")
    except MlflowException as exc:  # created meanwhile by a concurrent register
        if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise


def existing_version(client, name: str, run_id: str):
    """A version of `name` already made from this run (registering a run twice reuses it)."""
    found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return max(found, key=lambda v: int(v.version)) if found else None


def register_run(ref: str, *, name: str = DEFAULT_MODEL_NAME, gate: GateConfig | None = None, alias: str = "candidate") -> dict[str, Any]:
    """Judge an evaluated run; when the gate passes, register it and point `alias` at it.

    Returns the result whether or not the gate passed (`passed`); the caller turns a refusal into
    exit code 3. Nothing is written to the registry on a refusal."""
    gate = gate or GateConfig()
    if alias not in ALIASES:
        raise UserInputError(f"alias {alias!r} is not an environment: use one of {', '.join(ALIASES)}.")
    client = mlflow_client()
    run_id, _ = parse_run_ref(ref)
    run, evaluation, thresholds = read_evaluation(client, run_id)
    production = version_summary(client, name, "production")
    judged = judge(evaluation, production, gate)
    verdicts, ok = [v.to_dict() for v in judged], passed(judged)
    result: dict[str, Any] = {
        "model": name, "version": None, "alias": None, "run_id": run_id, "passed": ok, "gate": verdicts,
        "limits": gate.model_dump(), "production": production, "mean_auroc": evaluation.get("mean_auroc"),
        "tracking_uri": client.tracking_uri,
    }
    client.set_tag(run_id, "gate", "passed" if ok else "refused")
    if not ok:
        log.warning("Gate refused run %s: %s", run_id, ", ".join(v["criterion"] for v in verdicts if not v["passed"]))
        return result

    ensure_registered_model(client, name)
    source = f"runs:/{run_id}/{CHECKPOINT_DIR}"
    version = existing_version(client, name, run_id)
    reused = version is not None
    tags = version_tags(run, evaluation, thresholds, verdicts)
    if reused:
        log.info("Run %s is already version %s of %s; updating its tags", run_id, version.version, name)
        for key, value in tags.items():
            client.set_model_version_tag(name, str(version.version), key, value)
    else:
        version = client.create_model_version(
            name=name, source=source, run_id=run_id, tags=tags,
            description=f"Training run {run_id}, mean AUROC {evaluation.get('mean_auroc')}, data {tags.get('data_version')}.",
        )
    client.set_registered_model_alias(name, alias, str(version.version))
    client.set_tag(run_id, "registered_model", f"{name}/{version.version}")
    result.update(version=str(version.version), alias=alias, source=version.source, reused=reused,
                  model_uri=f"models:/{name}@{alias}", version_uri=f"models:/{name}/{version.version}")
    log.info("Registered run %s as %s version %s with alias %s", run_id, name, version.version, alias)
    return result
