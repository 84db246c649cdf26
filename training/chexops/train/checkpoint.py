"""The training checkpoint: its format, its artifact path in a run, a safe load (weights only, no pickle).

torch is imported where a checkpoint is written or read, so that the constants and `parse_run_ref` cost nothing."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chexops.config import Config
from chexops.core.errors import UserInputError
from chexops.core.files import atomic_write

if TYPE_CHECKING:
    import torch


CHECKPOINT_FORMAT = 2  # tensors plus a JSON string: loadable with torch.load(weights_only=True)


READABLE_FORMATS = (1, 2)  # format 1 held the same fields as plain containers


@dataclass
class RunState:
    """Where a training run stands: what `last.pt` carries besides the tensors (its `state`, as JSON)
    and the best weights so far (`best_model`, tensors of their own)."""

    epoch: int = 0
    batch: int = 0  # the next batch of `epoch`
    step: int = 0  # optimiser steps
    best: float = -math.inf  # the best validation mean AUROC
    best_epoch: int = -1
    bad_epochs: int = 0  # epochs since the best (early stopping)
    run_id: str | None = None  # the MLflow run, continued on resume
    history: list[dict[str, float]] = field(default_factory=list)
    best_model: dict[str, torch.Tensor] | None = None

    @property
    def is_new(self) -> bool:
        return self.step == 0 and self.epoch == 0

    def to_json(self, epoch: int, batch: int) -> str:
        """The JSON `state` of a checkpoint written at (`epoch`, `batch`)."""
        plain = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "best_model"}
        return json.dumps({**plain, "epoch": epoch, "batch": batch})

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any]) -> RunState:
        plain = (
            saved["state"] if isinstance(saved["state"], dict) else json.loads(saved["state"])
        )  # a dict before format 2
        known = {f.name for f in fields(cls)} - {"best_model"}
        best_model = saved.get("best_model", plain.get("best_model"))
        return cls(**{k: v for k, v in plain.items() if k in known}, best_model=best_model)


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save through a temporary file and a rename: a kill never leaves half a checkpoint."""
    import torch

    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def model_payload(model: torch.nn.Module, config: Config, labels: list[str], extra: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint artifact holds: weights (tensors) plus, as one JSON string, everything
    needed to rebuild and use them. Nothing in it needs pickle to load."""
    meta = {
        "model_config": config.model.model_dump(mode="json"),
        "labels": labels,
        "preprocessing": config.preprocess.spec().to_dict(),
        "config": config.to_dict(),
        **extra,
    }
    return {
        "format": CHECKPOINT_FORMAT,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": json.dumps(meta, sort_keys=True),
    }


def safe_load(path: str | Path) -> Any:
    """`torch.load` with `weights_only=True`: tensors and plain containers only, never a pickle that
    runs code (raises `pickle.UnpicklingError` for one)."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A training checkpoint artifact (`model.pt`), loaded without unpickling code (`weights_only`)
    and checked for the keys every consumer needs: `model` (tensors) and the JSON fields, flat."""
    import pickle

    try:
        payload = safe_load(path)
    except FileNotFoundError:
        raise UserInputError(f"checkpoint {path} does not exist.") from None
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserInputError(
            f"checkpoint {path} was refused: it holds more than tensors and plain data, and "
            f"loading it could run code ({first[:200]})."
        ) from None
    except Exception as exc:  # noqa: BLE001 - a corrupt file surfaces in many ways
        raise UserInputError(f"checkpoint {path} is not a readable chexops checkpoint: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") not in READABLE_FORMATS:
        raise UserInputError(
            f"checkpoint {path} is not a chexops checkpoint (format {', '.join(map(str, READABLE_FORMATS))})."
        )
    if "meta" in payload:
        try:
            meta = json.loads(payload["meta"])
        except (TypeError, ValueError) as exc:
            raise UserInputError(f"checkpoint {path} has unreadable metadata: {exc}") from None
        payload = {"format": payload["format"], "model": payload["model"], **meta}
    missing = [k for k in ("model", "model_config", "labels", "preprocessing") if k not in payload]
    if missing:
        raise UserInputError(f"checkpoint {path} lacks {', '.join(missing)}.")
    return payload


CHECKPOINT_DIR, CHECKPOINT_FILE = "checkpoint", "model.pt"


CHECKPOINT_PATH = f"{CHECKPOINT_DIR}/{CHECKPOINT_FILE}"


def parse_run_ref(ref: str) -> tuple[str, str]:
    """`RUN_ID` or `runs:/RUN_ID[/path]` → (run id, checkpoint artifact path; `checkpoint/model.pt` by default)."""
    ref = ref.strip()
    artifact = CHECKPOINT_PATH
    if ref.startswith("runs:/"):
        run_id, _, rest = ref[len("runs:/") :].strip("/").partition("/")
        if rest:
            artifact = rest if rest.endswith(".pt") else rest.rstrip("/") + "/" + CHECKPOINT_FILE
    else:
        run_id = ref
    if not run_id or not run_id.isalnum():
        raise UserInputError(f"{ref!r} is neither a run id nor a runs:/RUN_ID/... URI.")
    return run_id, artifact
