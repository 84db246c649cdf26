"""The exported ONNX model in the BentoML model store (`bentoml.models.create`, BentoML 1.4).

The Bento model holds both files, `model.onnx` (fp32) and `model.int8.onnx` (static QDQ int8), plus
`metadata.json` (the ONNX metadata, decoded). Its tag is `NAME:vVERSION` for a registry version
(`NAME:run-<id12>` for a bare run); its labels carry the model name, registry version, training run
and data version; its metadata the label list, thresholds and preprocessing spec. A service loads it
with `bentoml.models.get(tag).path_of("model.onnx")` and reads the file's own metadata.

The store is `$BENTOML_HOME`, by default `$CHEXOPS_HOME/bentoml`: set before bentoml is imported.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from . import paths
from .errors import UserInputError
from .export import FP32_FILE, INT8_FILE, read_metadata
from .hashing import sha256_file

log = logging.getLogger(__name__)


def bentoml_home() -> Path:
    """`BENTOML_HOME`, defaulting (for this process and its children) to `$CHEXOPS_HOME/bentoml`."""
    os.environ.setdefault("BENTOML_HOME", str(paths.home() / "bentoml"))
    return Path(os.environ["BENTOML_HOME"])


def bento_tag(model_name: str, registry_version: str, run_id: str) -> str:
    name = re.sub(r"[^a-z0-9_.-]", "-", model_name.lower()).strip("-_.")[:63] or "chexops-cxr"
    return f"{name}:v{registry_version}" if registry_version else f"{name}:run-{run_id[:12].lower()}"


def import_onnx(fp32: Path, int8: Path, ref=None, report: dict[str, Any] | None = None) -> dict[str, Any]:
    """Put both ONNX files into the Bento model store; returns {"tag", "path", "labels", "reused"}.
    Importing the same files again reuses the stored model; other files under the same tag replace it."""
    home = bentoml_home()
    import bentoml
    from bentoml.exceptions import NotFound

    meta = read_metadata(fp32)
    if not meta.get("labels") or "run_id" not in meta:
        raise UserInputError(f"{fp32} is not a chexops export (its ONNX metadata has no labels / run_id).")
    tag = bento_tag(meta["model_name"], meta.get("registry_version", ""), meta["run_id"])
    digest = hashlib.sha256((sha256_file(fp32) + sha256_file(int8)).encode()).hexdigest()
    labels = {"model_name": meta["model_name"], "registry_version": meta.get("registry_version", ""), "run_id": meta["run_id"],
              "data_version": meta.get("data_version", ""), "alias": getattr(ref, "alias", "") or "", "source": "chexops-export"}
    try:
        existing = bentoml.models.get(tag)
    except NotFound:
        existing = None
    if existing is not None:
        if existing.info.metadata.get("sha256") == digest:
            log.info("Bento model %s already holds these files", existing.tag)
            return {"tag": str(existing.tag), "path": str(existing.path), "labels": dict(existing.info.labels), "reused": True,
                    "bentoml_home": str(home)}
        log.info("Replacing Bento model %s (other files)", tag)
        bentoml.models.delete(tag)
    metadata = {
        "labels": json.loads(meta["labels"]),
        "thresholds": json.loads(meta["thresholds"]),
        "thresholds_rule": meta.get("thresholds_rule", ""),
        "preprocessing": json.loads(meta["preprocessing"]),
        "files": {"fp32": FP32_FILE, "int8": INT8_FILE},
        "registry_uri": getattr(ref, "uri", "") or "",
        "sha256": digest,
    }
    if report:
        metadata.update({k: report[k] for k in ("parity_max_abs_diff", "int8_auroc_delta", "int8_latency_ratio", "fp32_mean_auroc")
                         if k in report})
    with bentoml.models.create(tag, labels=labels, metadata=metadata) as model:
        shutil.copyfile(fp32, model.path_of(FP32_FILE))
        shutil.copyfile(int8, model.path_of(INT8_FILE))
        Path(model.path_of("metadata.json")).write_text(json.dumps({k: v for k, v in meta.items() if k != "head"}, indent=2) + "\n")
    stored = bentoml.models.get(model.tag)
    log.info("Bento model %s in %s", stored.tag, home)
    return {"tag": str(stored.tag), "path": str(stored.path), "labels": labels, "reused": False, "bentoml_home": str(home)}


def import_reference(uri: str, name: str | None = None) -> dict[str, Any]:
    """`chexops bento import`: the ONNX files a previous `chexops export` logged to the reference's
    training run (`export/`), into the Bento model store. No torch needed."""
    from . import model_ref

    ref = model_ref.resolve(uri, default_name=name or model_ref.DEFAULT_MODEL_NAME)
    with tempfile.TemporaryDirectory() as tmp:
        files = {f: model_ref.download(ref, f"export/{f}", Path(tmp), required=False) for f in (FP32_FILE, INT8_FILE)}
        if any(v is None for v in files.values()):
            raise UserInputError(f"{uri}: run {ref.run_id} has no exported ONNX files (run chexops export --model {uri} first).")
        meta = read_metadata(files[FP32_FILE])
        if ref.version and meta.get("registry_version") != ref.version:
            raise UserInputError(f"{uri}: the ONNX files of run {ref.run_id} were exported for registry version "
                                 f"{meta.get('registry_version') or '(none)'}, not {ref.version}; export this version first.")
        report_path = model_ref.download(ref, "export/report.json", Path(tmp), required=False)
        report = json.loads(report_path.read_text()) if report_path else None
        return import_onnx(files[FP32_FILE], files[INT8_FILE], ref, report)
