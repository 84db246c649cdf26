"""Model references: `models:/NAME@ALIAS`, `models:/NAME/VERSION` or `runs:/RUN_ID`, resolved to a
training run and its checkpoint through MLflow (registry alias → version → run).

Every failure to resolve is the user's input (`UserInputError`, exit 2): a model, alias, version
or run that does not exist, or a run without a `checkpoint/model.pt` artifact.

Run references are parsed by `chexops.train.checkpoint.parse_run_ref` (`chexops evaluate` uses it too).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chexops.core import paths
from chexops.core.errors import UserInputError
from chexops.core.labels import DEFAULT_THRESHOLD, DEFAULT_THRESHOLD_RULE
from chexops.core.names import DEFAULT_MODEL_NAME, is_registry_ref  # noqa: F401 - refs.is_registry_ref, as before
from chexops.core.names import REGISTRY_REF as _MODELS
from chexops.tracking import mlflow_client
from chexops.train.checkpoint import CHECKPOINT_FILE, CHECKPOINT_PATH, parse_run_ref

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelRef:
    """A resolved reference: which run trained it and, when it came through the registry, which version."""

    uri: str
    name: str
    run_id: str
    version: str = ""
    alias: str = ""
    checkpoint_uri: str = ""
    version_tags: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def slug(self) -> str:
        """A file-system and tag friendly identifier: `NAME-vN`, or `NAME-run-<id12>`."""
        return f"{self.name}-v{self.version}" if self.version else f"{self.name}-run-{self.run_id[:12]}"

    def to_dict(self) -> dict[str, str]:
        return {"uri": self.uri, "name": self.name, "version": self.version, "alias": self.alias, "run_id": self.run_id}

    def approval(self) -> str:
        """'' when this is a registry version whose gate verdicts (the `gate` tag `chexops register`
        writes) all passed; otherwise why it is not approved."""
        if not self.version or not _MODELS.match(self.uri):
            return f"{self.uri} is a training run, not a registry version that passed the gate"
        try:
            verdicts = json.loads(self.version_tags.get("gate") or "null")
        except ValueError:
            verdicts = None
        if not isinstance(verdicts, list) or not verdicts:
            return (
                f"registry version {self.version} of {self.name!r} carries no gate verdicts "
                "(it was not made by chexops register)"
            )
        failed = [
            str(v.get("criterion") if isinstance(v, dict) else v)
            for v in verdicts
            if not isinstance(v, dict) or v.get("passed") is False
        ]  # a criterion not judged (None) fails nothing
        return (
            f"registry version {self.version} of {self.name!r} failed the gate ({', '.join(failed)})" if failed else ""
        )


def _missing(exc: Exception) -> bool:
    code = getattr(exc, "error_code", "")
    return (
        code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND") or "not found" in str(exc).lower()
    )


def resolve_local(uri: str) -> ModelRef | None:
    """What `resolve(uri)` answers for a registry reference, read from chexops' own SQLite tracking store
    without importing MLflow (about 1.5 s of `chexops serve`'s start-up: docs/benchmarks.md "Start-up").
    None wherever it cannot be sure (another store, MLflow workspaces, `@latest`, a schema it does not know,
    no such model, alias or version): `resolve` then answers, and words the refusal, MLflow's own way."""
    m = _MODELS.match(uri)
    tracking = paths.default_tracking_uri()
    if not m or not tracking.startswith("sqlite:///") or (m["alias"] or "").lower() == "latest":
        return None
    if os.environ.get("MLFLOW_WORKSPACE") or os.environ.get("MLFLOW_ENABLE_WORKSPACES", "").lower() in ("1", "true"):
        return None
    db = Path(tracking[len("sqlite:///") :])
    if not db.is_file():
        return None
    default = " AND workspace = 'default'"  # MLflow 3's tables carry one; its default workspace
    name = m["name"]
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
            if m["alias"]:
                row = conn.execute(
                    f"SELECT version FROM registered_model_aliases WHERE name = ? AND alias = ?{default}",
                    (name, m["alias"]),
                ).fetchone()
                if row is None:
                    return None
                version = int(row[0])
            else:
                version = int(m["version"])
            row = conn.execute(
                "SELECT run_id, source FROM model_versions WHERE name = ? AND version = ? "
                f"AND current_stage != 'Deleted_Internal'{default}",
                (name, version),
            ).fetchone()
            if row is None or not row[0]:
                return None
            tags = conn.execute(
                f"SELECT key, value FROM model_version_tags WHERE name = ? AND version = ?{default}", (name, version)
            ).fetchall()
    except sqlite3.Error as exc:  # locked, another schema: MLflow's way instead
        log.debug("%s: not read from %s directly (%s)", uri, db, exc)
        return None
    run_id, source = row
    source = (source or "").rstrip("/")
    checkpoint = f"{source}/{CHECKPOINT_FILE}" if source and not source.endswith(".pt") else source
    return ModelRef(
        uri,
        name,
        run_id,
        str(version),
        m["alias"] or "",
        checkpoint or f"runs:/{run_id}/{CHECKPOINT_PATH}",
        {k: v for k, v in tags if v is not None},
    )


def resolve(uri: str, default_name: str = DEFAULT_MODEL_NAME) -> ModelRef:
    """`models:/NAME@ALIAS`, `models:/NAME/VERSION` or `runs:/RUN_ID[/checkpoint[/model.pt]]` → a `ModelRef`."""
    from mlflow.exceptions import MlflowException

    c = mlflow_client()
    m = _MODELS.match(uri)
    if m:
        name, alias, version = m["name"], m["alias"], m["version"]
        try:
            mv = c.get_model_version_by_alias(name, alias) if alias else c.get_model_version(name, version)
        except MlflowException as exc:
            if not _missing(exc):
                raise
            what = f"alias {alias!r}" if alias else f"version {version}"
            raise UserInputError(
                f"{uri}: the registry has no model {name!r} with {what} ({_first_line(exc)})."
            ) from None
        if not mv.run_id:
            raise UserInputError(f"{uri}: registry version {mv.version} of {name!r} names no training run.")
        source = (mv.source or "").rstrip("/")
        checkpoint = f"{source}/{CHECKPOINT_FILE}" if source and not source.endswith(".pt") else source
        return ModelRef(
            uri,
            name,
            mv.run_id,
            str(mv.version),
            alias or "",
            checkpoint or f"runs:/{mv.run_id}/{CHECKPOINT_PATH}",
            dict(mv.tags or {}),
        )
    if uri.startswith("runs:/"):
        run_id, path = parse_run_ref(uri)
        if path != CHECKPOINT_PATH:
            raise UserInputError(
                f"{uri}: a run reference is runs:/RUN_ID (its {CHECKPOINT_PATH} is used), not another artifact."
            )
        try:
            c.get_run(run_id)
        except MlflowException as exc:
            if not _missing(exc):
                raise
            raise UserInputError(f"{uri}: there is no MLflow run {run_id} at {paths.default_tracking_uri()}.") from None
        version = _registered_version(c, default_name, run_id)
        return ModelRef(uri, default_name, run_id, version, "", f"runs:/{run_id}/{CHECKPOINT_PATH}")
    raise UserInputError(
        f"{uri!r} is not a model reference: use models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID."
    )


def _registered_version(c, name: str, run_id: str) -> str:
    """The newest registry version of `name` that came from `run_id`, or '' when none did."""
    try:
        versions = c.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    except Exception:  # noqa: BLE001 - a store without a registry simply has no versions
        return ""
    return str(max((int(v.version) for v in versions), default=0) or "")


def _first_line(exc: Exception) -> str:
    return str(getattr(exc, "message", exc)).strip().splitlines()[0][:200]


def download(ref: ModelRef, artifact_path: str, dst: Path, required: bool = True) -> Path | None:
    """One artifact of the reference's training run into `dst`; None when absent and not `required`."""
    import mlflow

    mlflow_client()  # chexops' tracking store, also when `resolve_local` answered and MLflow was never pointed at it
    try:
        return Path(
            mlflow.artifacts.download_artifacts(run_id=ref.run_id, artifact_path=artifact_path, dst_path=str(dst))
        )
    except Exception as exc:  # noqa: BLE001 - missing artifacts surface as several exception types
        if required:
            raise UserInputError(
                f"{ref.uri}: run {ref.run_id} has no artifact {artifact_path!r} ({_first_line(exc)})."
            ) from None
        return None


def download_checkpoint(ref: ModelRef, dst: Path) -> dict[str, Any]:
    """The reference's training checkpoint, loaded and checked (`chexops.train.checkpoint.load_checkpoint`)."""
    import mlflow

    from chexops.train.checkpoint import load_checkpoint

    mlflow_client()  # as in `download`
    dst.mkdir(parents=True, exist_ok=True)
    local = None
    for uri in dict.fromkeys([ref.checkpoint_uri, f"runs:/{ref.run_id}/{CHECKPOINT_PATH}"]):
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst))
            break
        except Exception as exc:  # noqa: BLE001
            log.debug("checkpoint not at %s: %s", uri, exc)
    if local is None:
        raise UserInputError(
            f"{ref.uri}: run {ref.run_id} has no {CHECKPOINT_PATH} artifact (was it trained by chexops train?)."
        )
    payload = load_checkpoint(local)
    if payload.get("run_id") and payload["run_id"] != ref.run_id:
        log.warning("%s: the checkpoint names run %s, the registry run %s", ref.uri, payload["run_id"], ref.run_id)
    return payload


def thresholds(ref: ModelRef, labels: list[str], dst: Path) -> tuple[dict[str, float], str, float | None]:
    """The operating thresholds (`evaluation/<id>/thresholds.json` of the evaluation the registry
    version was judged on, else of the run's latest), their rule and target sensitivity; DEFAULT_THRESHOLD
    each (rule DEFAULT_THRESHOLD_RULE), with a warning, when the run has not been evaluated."""
    from chexops.evaluation import records as evaluations

    judged = evaluations.judged(mlflow_client(), ref.run_id, ref.version_tags)
    path = download(ref, evaluations.artifact_path(judged, "thresholds.json"), dst, required=False) if judged else None
    if path is None:
        log.warning(
            "%s: run %s has no evaluation/thresholds.json (run chexops evaluate first); using %s for every label.",
            ref.uri,
            ref.run_id,
            DEFAULT_THRESHOLD,
        )
        return {label: DEFAULT_THRESHOLD for label in labels}, DEFAULT_THRESHOLD_RULE, None
    try:
        data = json.loads(path.read_text())
        found = {str(k): float(v) for k, v in data["thresholds"].items() if v is not None}
        target = float(data["target_sensitivity"]) if data.get("target_sensitivity") is not None else None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserInputError(f"{ref.uri}: evaluation/thresholds.json of run {ref.run_id} is malformed: {exc}") from None
    missing = [label for label in labels if label not in found]  # absent, or null where validation had one class
    if missing:
        log.warning("evaluation/thresholds.json has no threshold for %s; using %s there.", missing, DEFAULT_THRESHOLD)
    return {label: found.get(label, DEFAULT_THRESHOLD) for label in labels}, str(data.get("rule", "")), target
