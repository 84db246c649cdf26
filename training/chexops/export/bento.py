"""The exported ONNX model in the BentoML model store (`bentoml.models.create`, BentoML 1.4), and
the one place where a serving reference becomes the exact Bento model to load.

The Bento model holds both files, `model.onnx` (fp32) and `model.int8.onnx` (static QDQ int8), plus
`metadata.json` (the ONNX metadata, decoded). Its tag is `NAME:vVERSION` for a registry version that
passed the gate (`NAME:run-<id12>` for an `--unevaluated` export); its labels carry the model name,
registry version, training run, data version and whether it was evaluated; its metadata the label
list, thresholds, preprocessing spec and the sha256 of each ONNX file. A tag is written once: the
same files again are a no-op, other files under the same tag are refused (exit 2), never replaced.

`serving_tag` resolves what `chexops serve` (and the service) is asked to serve: a registry
reference (`models:/NAME@ALIAS`, `models:/NAME/VERSION`) → its version → `NAME:vVERSION`, imported
from the run's exported files when the store lacks it, and checked (registry version, run, file
hashes) before anything starts. An explicit Bento tag `NAME:VERSION` is accepted as-is (checked
for tampering); `latest` never is.

The store is `$BENTOML_HOME`, by default `$CHEXOPS_HOME/bentoml`: set before bentoml is imported.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chexops.core import paths
from chexops.core.errors import UserInputError
from chexops.core.files import sha256_file
from chexops.core.names import DEFAULT_MODEL_NAME, DEFAULT_SERVE_REF, is_registry_ref
from chexops.core.paths import bentoml_home
from chexops.core.results import Result
from chexops.export.files import FP32_FILE, INT8_FILE, read_metadata

if TYPE_CHECKING:
    from chexops.registry.refs import ModelRef

log = logging.getLogger(__name__)


class BentoModel(Result):
    """A model in the Bento store: tag, folder, labels, the sha256 of each ONNX file, whether it was there already."""

    tag: str
    path: str
    labels: dict[str, str]
    sha256: dict[str, str]
    reused: bool
    bentoml_home: str


class BentoImport(Result):
    """`chexops bento import`'s result."""

    bento_model: BentoModel


class ServingTag(Result):
    """The exact, checked Bento model a serving reference names."""

    tag: str
    reference: str
    model_name: str
    registry_version: str
    run_id: str
    evaluated: bool


def bento_tag(model_name: str, registry_version: str, run_id: str) -> str:
    name = re.sub(r"[^a-z0-9_.-]", "-", model_name.lower()).strip("-_.")[:63] or DEFAULT_MODEL_NAME
    return f"{name}:v{registry_version}" if registry_version else f"{name}:run-{run_id[:12].lower()}"


def file_digests(fp32: Path, int8: Path) -> dict[str, str]:
    """sha256 of each ONNX file, keyed by its file name in the Bento model."""
    return {FP32_FILE: sha256_file(fp32), INT8_FILE: sha256_file(int8)}


def import_onnx(fp32: Path, int8: Path, ref=None, report: dict[str, Any] | None = None) -> BentoModel:
    """Put both ONNX files into the Bento model store (`report`: the export's report.json, whose figures go
    into the model's metadata). The same files again reuse the stored model; other files under the same
    tag are refused (exit 2)."""
    home = bentoml_home()
    import bentoml
    from bentoml.exceptions import NotFound

    meta = read_metadata(fp32)
    if not meta.get("labels") or "run_id" not in meta:
        raise UserInputError(f"{fp32} is not a chexops export (its ONNX metadata has no labels / run_id).")
    tag = bento_tag(meta["model_name"], meta.get("registry_version", ""), meta["run_id"])
    digests = file_digests(fp32, int8)
    labels = {
        "model_name": meta["model_name"],
        "registry_version": meta.get("registry_version", ""),
        "run_id": meta["run_id"],
        "data_version": meta.get("data_version", ""),
        "evaluated": meta.get("evaluated", "false"),
        "alias": getattr(ref, "alias", "") or "",
        "source": "chexops-export",
    }
    try:
        existing = bentoml.models.get(tag)
    except NotFound:
        existing = None
    if existing is not None:
        if existing.info.metadata.get("sha256") == digests:
            log.info("Bento model %s already holds these files", existing.tag)
            return BentoModel(
                tag=str(existing.tag),
                path=str(existing.path),
                labels=dict(existing.info.labels),
                sha256=digests,
                reused=True,
                bentoml_home=str(home),
            )
        raise UserInputError(
            f"Bento model {tag} already holds other files for {meta['model_name']} "
            f"{'version ' + meta['registry_version'] if meta.get('registry_version') else 'run ' + meta['run_id']} "
            f"(sha256 {_short(existing.info.metadata.get('sha256'))} there, {_short(digests)} here): a version is "
            "imported "
            f"once and never replaced. If the stored one is wrong, delete it (`bentoml models delete {tag}` with "
            f"BENTOML_HOME={home}) and import again."
        )
    metadata = {
        "labels": json.loads(meta["labels"]),
        "thresholds": json.loads(meta["thresholds"]),
        "thresholds_rule": meta.get("thresholds_rule", ""),
        "int8_thresholds": json.loads(read_metadata(int8).get("thresholds") or "{}"),
        "preprocessing": json.loads(meta["preprocessing"]),
        "files": {"fp32": FP32_FILE, "int8": INT8_FILE},
        "registry_uri": getattr(ref, "uri", "") or "",
        "evaluated": meta.get("evaluated") == "true",
        "sha256": digests,
    }
    if report:
        metadata.update(
            {
                k: report[k]
                for k in (
                    "parity_max_abs_diff",
                    "parity_features_max_abs_diff",
                    "int8_auroc_delta",
                    "int8_latency_ratio",
                    "fp32_mean_auroc",
                )
                if k in report
            }
        )
    with bentoml.models.create(tag, labels=labels, metadata=metadata) as model:
        shutil.copyfile(fp32, model.path_of(FP32_FILE))
        shutil.copyfile(int8, model.path_of(INT8_FILE))
        Path(model.path_of("metadata.json")).write_text(
            json.dumps({k: v for k, v in meta.items() if k != "head"}, indent=2) + "\n"
        )
    stored = bentoml.models.get(model.tag)
    log.info("Bento model %s in %s", stored.tag, home)
    return BentoModel(
        tag=str(stored.tag), path=str(stored.path), labels=labels, sha256=digests, reused=False, bentoml_home=str(home)
    )


def _short(digests: Any) -> str:
    if not isinstance(digests, dict):
        return "(none recorded)"
    return ", ".join(f"{name} {str(value)[:12]}" for name, value in sorted(digests.items()))


def import_reference(uri: str, name: str | None = None) -> BentoModel:
    """`chexops bento import`: the ONNX files a previous `chexops export` logged to the reference's
    training run (`export/`), into the Bento model store. No torch needed."""
    from chexops.registry import refs as model_ref  # MLflow: only when a reference is resolved

    ref = model_ref.resolve(uri, default_name=name or DEFAULT_MODEL_NAME)
    return _import_ref(ref)


def _import_ref(ref: ModelRef) -> BentoModel:
    from chexops.registry import refs as model_ref

    # A registry reference takes the approved export only; a run also its --unevaluated one.
    folders = ("export",) if is_registry_ref(ref.uri) else ("export", "export-unevaluated")
    with tempfile.TemporaryDirectory() as tmp:
        for folder in folders:
            files = {
                f: model_ref.download(ref, f"{folder}/{f}", Path(tmp) / folder, required=False)
                for f in (FP32_FILE, INT8_FILE)
            }
            if all(v is not None for v in files.values()):
                break
        else:
            raise UserInputError(
                f"{ref.uri}: run {ref.run_id} has no exported ONNX files (run chexops export --model {ref.uri} first)."
            )
        meta = read_metadata(files[FP32_FILE])
        if ref.version and is_registry_ref(ref.uri) and meta.get("registry_version") != ref.version:
            raise UserInputError(
                f"{ref.uri}: the ONNX files of run {ref.run_id} were exported for registry version "
                f"{meta.get('registry_version') or '(none: an --unevaluated export)'}, not {ref.version}; "
                f"export this version first (chexops export --model {ref.uri})."
            )
        report_path = model_ref.download(ref, f"{folder}/report.json", Path(tmp) / folder, required=False)
        report = json.loads(report_path.read_text()) if report_path else None
        return import_onnx(files[FP32_FILE], files[INT8_FILE], ref, report)


# --- what to serve ---------------------------------------------------------------------------------


def serving_tag(reference: str) -> ServingTag:
    """The exact Bento model to serve for `reference` (a registry reference, or an explicit Bento tag
    `NAME:VERSION`), checked.
    Every refusal is a `UserInputError` that says what to do."""
    reference = (reference or "").strip() or DEFAULT_SERVE_REF
    bentoml_home()
    if is_registry_ref(reference):
        return _from_registry(reference)
    if reference.startswith("runs:/"):
        raise UserInputError(
            f"{reference}: serve a registry reference (models:/NAME@ALIAS or models:/NAME/VERSION), not a "
            "training run; an --unevaluated export can be served by its Bento tag (NAME:run-ID) only."
        )
    name, _, version = reference.partition(":")
    if not name or not version or version == "latest":
        raise UserInputError(
            f"{reference!r} names no exact model: use models:/NAME@ALIAS, models:/NAME/VERSION or a Bento "
            "tag NAME:VERSION (never :latest)."
        )
    model = _stored(reference)
    if model is None:
        raise UserInputError(
            f"no Bento model {reference} in {bentoml_home()}: export it (chexops export) or import it "
            "(chexops bento import --model models:/NAME/VERSION) first."
        )
    return _checked(model, reference)


def _from_registry(reference: str) -> ServingTag:
    if not _registry_exists():
        raise UserInputError(
            _nothing_to_serve(reference, f"there is no MLflow registry at {paths.default_tracking_uri()}")
        )
    from chexops.registry import refs as model_ref

    try:  # read from the SQLite registry when it can be (no MLflow import), through MLflow otherwise
        ref = model_ref.resolve_local(reference) or model_ref.resolve(reference)
    except UserInputError as exc:
        raise UserInputError(_nothing_to_serve(reference, str(exc))) from None
    why = ref.approval()
    if why:
        raise UserInputError(f"{reference}: {why}; only a version the gate approved is served.")
    tag = bento_tag(ref.name, ref.version, ref.run_id)
    model = _stored(tag)
    if model is None:
        log.info(
            "%s is version %s (run %s); Bento model %s is not in %s yet: importing its exported files",
            reference,
            ref.version,
            ref.run_id,
            tag,
            bentoml_home(),
        )
        _import_ref(ref)
        model = _stored(tag)
    served = _checked(model, reference)
    labels = model.info.labels
    if (labels.get("registry_version"), labels.get("run_id"), labels.get("model_name")) != (
        ref.version,
        ref.run_id,
        ref.name,
    ):
        raise UserInputError(
            f"Bento model {tag} says {labels.get('model_name')} version {labels.get('registry_version')} run "
            f"{labels.get('run_id')}, but {reference} is {ref.name} version {ref.version} run {ref.run_id}."
        )
    if labels.get("evaluated") != "true":
        raise UserInputError(
            f"Bento model {tag} was exported --unevaluated; {reference} must serve the gated export "
            f"(chexops export --model {reference})."
        )
    recorded = {
        f: ref.version_tags.get(f"export.{key}_sha256") for key, f in (("fp32", FP32_FILE), ("int8", INT8_FILE))
    }
    if all(recorded.values()) and recorded != model.info.metadata.get("sha256"):
        raise UserInputError(
            f"Bento model {tag} holds other files ({_short(model.info.metadata.get('sha256'))}) than registry "
            f"version {ref.version} was exported with ({_short(recorded)})."
        )
    return served


def _stored(tag: str):
    import bentoml
    from bentoml.exceptions import BentoMLException

    try:
        return bentoml.models.get(tag)
    except BentoMLException:  # NotFound, or an invalid tag
        return None


def _checked(model, reference: str) -> ServingTag:
    """The stored model's files still hash to what was imported (nothing edited them in place)."""
    recorded = model.info.metadata.get("sha256")
    actual = {f: sha256_file(model.path_of(f)) for f in (FP32_FILE, INT8_FILE) if os.path.exists(model.path_of(f))}
    if not isinstance(recorded, dict) or recorded != actual:
        raise UserInputError(
            f"Bento model {model.tag}: its ONNX files do not match the sha256 recorded at import "
            f"({_short(recorded)} recorded, {_short(actual)} found); re-export or re-import it."
        )
    labels = model.info.labels
    return ServingTag(
        tag=str(model.tag),
        reference=reference,
        model_name=labels.get("model_name", ""),
        registry_version=labels.get("registry_version", ""),
        run_id=labels.get("run_id", ""),
        evaluated=labels.get("evaluated") == "true",
    )


def _registry_exists() -> bool:
    """False when the tracking store is a SQLite file that does not exist (nothing was ever registered):
    say so without creating an empty database."""
    uri = paths.default_tracking_uri()
    return not uri.startswith("sqlite:///") or Path(uri[len("sqlite:///") :]).exists()


def _nothing_to_serve(reference: str, why: str) -> str:
    return (
        f"nothing to serve for {reference}: {why}. Make a model first (`make demo`, or chexops train → evaluate → "
        "register → export), or name one with --model models:/NAME@ALIAS | models:/NAME/VERSION (or a Bento tag "
        "NAME:VERSION)."
    )
