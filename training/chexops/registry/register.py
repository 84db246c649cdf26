"""The MLflow Model Registry side of `chexops register`: read one evaluation record of a run, get
the production model's number on the same data, and (when the gate passes) create a version with
its tags (naming the evaluation judged) and the alias `candidate`. Environments are aliases
(candidate, staging, canary, production); stages are never used.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from pathlib import Path
from typing import Any

from pydantic import Field

from chexops.core.errors import ChexopsError, UserInputError
from chexops.core.freight import Freight
from chexops.core.labels import metric_key
from chexops.core.names import DEFAULT_MODEL_NAME
from chexops.core.results import Result
from chexops.evaluation import records as evaluations
from chexops.evaluation.gate import GateConfig, Verdict, judge, passed
from chexops.tracking import download, get_run, mlflow_client
from chexops.train.checkpoint import CHECKPOINT_DIR, CHECKPOINT_PATH, parse_run_ref

log = logging.getLogger(__name__)

ALIASES = ("candidate", "staging", "canary", "production")


def _absent(value: Any) -> bool:
    return value is None


class Registration(Result):
    """What `chexops register` returns: the gate's verdicts on one evaluation and, when it passed, the
    version made (`version`, `alias`: None on a refusal; the fields after `tracking_uri` only when registered)."""

    model: str
    version: str | None = None
    alias: str | None = None
    run_id: str
    evaluation_id: str | None
    split: str | None
    split_version: str | None
    passed: bool
    gate: list[Verdict]
    limits: GateConfig
    production: dict[str, Any] | None
    mean_auroc: float | None
    holdouts: dict[str, dict[str, Any]]
    tracking_uri: str
    source: str | None = Field(None, exclude_if=_absent)
    reused: bool | None = Field(None, exclude_if=_absent)
    model_uri: str | None = Field(None, exclude_if=_absent)
    version_uri: str | None = Field(None, exclude_if=_absent)


def read_evaluation(
    client, run_id: str, evaluation_id: str | None = None
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """(run, metrics.json, thresholds.json) of one evaluation record of the run: `evaluation_id`,
    or the latest."""
    run = get_run(client, run_id)
    chosen = evaluations.choose(run, evaluation_id)["id"]
    metrics = evaluations.read_json(client, run_id, chosen, "metrics.json")
    thresholds = evaluations.read_json(client, run_id, chosen, "thresholds.json")
    names = {a.path for a in client.list_artifacts(run_id, CHECKPOINT_DIR)}
    if CHECKPOINT_PATH not in names:
        raise UserInputError(f"run {run_id} has no {CHECKPOINT_PATH} artifact to register.")
    return run, metrics, thresholds


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
    return {
        "version": str(version.version),
        "run_id": version.run_id,
        "mean_auroc": float(mean) if mean else None,
        "data_version": tags.get("data_version"),
        "split_version": tags.get("eval_split_version"),
        "evaluation_id": tags.get(evaluations.VERSION_TAG),
        "per_label": {k.removeprefix("auroc."): float(v) for k, v in tags.items() if k.startswith("auroc.")},
    }


def production_evidence(
    client, name: str, run_id: str, evaluation: dict[str, Any], gate: GateConfig
) -> dict[str, Any] | None:
    """The production model's mean AUROC on the data the candidate was measured on (same
    `split_version`), or why there is none (`reason`). In order: its registry tags; an earlier
    evaluation of its run on that data; a new evaluation of its run with the candidate's evaluation
    config (when `gate.reevaluate_production`). None when no model holds `production`."""
    production = version_summary(client, name, "production")
    if production is None:
        return None
    wanted = evaluation.get("split_version")
    if wanted and production["split_version"] == wanted:
        return {**production, "source": f"its evaluation {production['evaluation_id']}"}
    for entry in reversed(evaluations.index(get_run(client, production["run_id"]))):
        if entry.get("split_version") == wanted and entry.get("mean_auroc") is not None:
            return {
                **production,
                "split_version": wanted,
                "mean_auroc": entry["mean_auroc"],
                "evaluation_id": entry["id"],
                "source": f"evaluation {entry['id']} of its run {production['run_id']}",
            }
    differs = f"it was measured on split {production['split_version'] or 'unknown'}, the candidate on {wanted}"
    if not gate.reevaluate_production:
        return {**production, "reason": differs + ", and reevaluate_production is off"}
    from chexops.evaluation.run import evaluate_run

    log.info(
        "Production version %s was measured on other data (%s): evaluating its run %s on the candidate's data",
        production["version"],
        differs,
        production["run_id"],
    )
    with tempfile.TemporaryDirectory(prefix="chexops-register-") as tmp:
        config = download(
            client, run_id, evaluations.artifact_path(evaluation["evaluation_id"], "config.yaml"), Path(tmp)
        )
        if config is None:
            return {
                **production,
                "reason": differs + "; the candidate's evaluation has no config.yaml to evaluate production with",
            }
        try:
            again = evaluate_run(
                production["run_id"],
                config_path=config,
                rule=evaluation.get("rule") or "youden",
                n_bootstrap=0,
                hard_cases=0,
            )
        except ChexopsError as exc:
            return {**production, "reason": f"{differs}; evaluating it on the candidate's data failed: {exc}"}
    if again.split_version != wanted or again.mean_over != evaluation.get("mean_over"):
        return {
            **production,
            "reason": f"{differs}; evaluated again it is on split {again.split_version} "
            f"over {', '.join(again.mean_over)} (the data changed since the candidate's evaluation?)",
        }
    return {
        **production,
        "split_version": wanted,
        "mean_auroc": again.mean_auroc,
        "evaluation_id": again.evaluation_id,
        "source": f"its run {production['run_id']} evaluated now on the candidate's data as {again.evaluation_id}",
    }


def version_tags(
    run, evaluation: dict[str, Any], thresholds: dict[str, Any], verdicts: list[dict[str, Any]]
) -> dict[str, str]:
    """What a registry version carries: metrics, data fingerprint, code, training run, thresholds, gate."""
    run_tags = run.data.tags
    tags = {
        "run_id": run.info.run_id,
        "mean_auroc": f"{evaluation['mean_auroc']:.6f}" if evaluation.get("mean_auroc") is not None else "",
        "mean_over": ",".join(evaluation.get("mean_over") or []),
        "eval_split": str(evaluation.get("split", "")),
        evaluations.VERSION_TAG: str(evaluation.get("evaluation_id", "")),
        "eval_split_version": str(evaluation.get("split_version", "")),
        "eval_config_sha256": str(evaluation.get("config_sha256", "")),
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
    for source, h in holdout_summary(evaluation).items():  # reported, not judged (chexops.evaluation.run)
        tags[f"holdout.{source}"] = json.dumps(h, sort_keys=True)
    return {k: v for k, v in tags.items() if v != ""}


def holdout_summary(evaluation: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per training source, its hold-out in short: images, mean AUROC, per-finding AUROC (measurable ones)."""
    return {
        source: {
            "n": h.get("n"),
            "mean_auroc": h.get("mean_auroc"),
            "not_measurable": h.get("not_measurable") or [],
            "auroc": {
                metric_key(label): m["auroc"] for label, m in (h.get("per_label") or {}).items() if m.get("measurable")
            },
        }
        for source, h in (evaluation.get("holdouts") or {}).items()
    }


def ensure_registered_model(client, name: str) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

    if _registered_model(client, name) is not None:
        return
    try:
        client.create_registered_model(
            name,
            tags={"created_by": "chexops register"},
            description="chexops chest X-ray classifier; environments are the aliases " + ", ".join(ALIASES) + ".",
        )
    except MlflowException as exc:  # created meanwhile by a concurrent register
        if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise


def existing_version(client, name: str, run_id: str):
    """A version of `name` already made from this run (registering a run twice reuses it)."""
    found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return max(found, key=lambda v: int(v.version)) if found else None


def register_run(
    ref: str,
    *,
    name: str = DEFAULT_MODEL_NAME,
    gate: GateConfig | None = None,
    alias: str = "candidate",
    evaluation_id: str | None = None,
) -> Registration:
    """Judge an evaluation of a run (`evaluation_id`, default the latest); when the gate passes,
    register the run and point `alias` at it.

    Returns the result whether or not the gate passed (`passed`); the caller turns a refusal into
    exit code 3. Nothing is written to the registry on a refusal."""
    gate = gate or GateConfig()
    if alias not in ALIASES:
        raise UserInputError(f"alias {alias!r} is not an environment: use one of {', '.join(ALIASES)}.")
    client = mlflow_client()
    run_id, _ = parse_run_ref(ref)
    run, evaluation, thresholds = read_evaluation(client, run_id, evaluation_id)
    production = production_evidence(client, name, run_id, evaluation, gate)
    judged = judge(evaluation, production, gate)
    ok = passed(judged)
    result = Registration(
        model=name,
        run_id=run_id,
        evaluation_id=evaluation.get("evaluation_id"),
        split=evaluation.get("split"),
        split_version=evaluation.get("split_version"),
        passed=ok,
        gate=judged,
        limits=gate,
        production=production,
        mean_auroc=evaluation.get("mean_auroc"),
        holdouts=holdout_summary(evaluation),
        tracking_uri=client.tracking_uri,
    )
    client.set_tag(run_id, "gate", "passed" if ok else "refused")
    if not ok:
        log.warning("Gate refused run %s: %s", run_id, ", ".join(v.criterion for v in judged if not v.passed))
        return result

    ensure_registered_model(client, name)
    source = f"runs:/{run_id}/{CHECKPOINT_DIR}"
    version = existing_version(client, name, run_id)
    reused = version is not None
    tags = version_tags(run, evaluation, thresholds, [v.to_dict() for v in judged])
    if reused:
        log.info("Run %s is already version %s of %s; updating its tags", run_id, version.version, name)
        for key, value in tags.items():
            client.set_model_version_tag(name, str(version.version), key, value)
    else:
        version = client.create_model_version(
            name=name,
            source=source,
            run_id=run_id,
            tags=tags,
            description=f"Training run {run_id}, mean AUROC {evaluation.get('mean_auroc')}, "
            f"data {tags.get('data_version')}.",
        )
    freight = Freight.from_env()
    if freight is not None:  # a pipeline step: the version carries the run's freight, this version in it
        for key, value in freight.add(model_name=name, model_version=str(version.version)).tags().items():
            client.set_model_version_tag(name, str(version.version), key, value)
    client.set_registered_model_alias(name, alias, str(version.version))
    client.set_tag(run_id, "registered_model", f"{name}/{version.version}")
    log.info("Registered run %s as %s version %s with alias %s", run_id, name, version.version, alias)
    return result.model_copy(
        update={
            "version": str(version.version),
            "alias": alias,
            "source": version.source,
            "reused": reused,
            "model_uri": f"models:/{name}@{alias}",
            "version_uri": f"models:/{name}/{version.version}",
        }
    )
