"""A command's result: one JSON object or a human summary on stdout, and the step's output files.

`emit` prints either; `Output` is what a command returns to the CLI's `result_output` decorator.

When `$CHEXOPS_OUTPUTS` names a directory, every command's result is also written there: the whole
object as `result.json`, and each scalar field as a file of its own named by its dotted path
(`run_id`, `version`, `bento_model.tag`), so a WorkflowTemplate reads a field without a shell.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

ENV = "CHEXOPS_OUTPUTS"
RESULT_FILE = "result.json"


def scalar_fields(obj: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Dotted path → text for every string, number and boolean (JSON spelling: true/false)."""
    fields: dict[str, str] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            fields.update(scalar_fields(value, f"{name}."))
        elif isinstance(value, (bool, int, float)):
            fields[name] = json.dumps(value)
        elif isinstance(value, str):
            fields[name] = value
    return fields


def write_outputs(obj: dict[str, Any], directory: str | os.PathLike | None = None) -> Path | None:
    """Write `obj` under `directory` (default `$CHEXOPS_OUTPUTS`); nothing when neither is set."""
    directory = directory or os.environ.get(ENV)
    if not directory:
        return None
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULT_FILE).write_text(json.dumps(obj, default=str) + "\n")
    for name, text in scalar_fields(obj).items():
        if "/" not in name and not name.startswith("."):
            (out / name).write_text(text)
    return out


def as_dict(result: Any) -> dict[str, Any]:
    """A typed result (pydantic model, dataclass) or a dict, as the JSON object a command prints."""
    if hasattr(result, "model_dump"):
        return result.model_dump(mode="json")
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return dataclasses.asdict(result)
    return dict(result)


def emit(result: Any, as_json: bool, human: str, stream: IO[str]) -> None:
    """Write the step's outputs (when `$CHEXOPS_OUTPUTS` is set), then print JSON or the human text."""
    obj = as_dict(result)
    write_outputs(obj)
    print(json.dumps(obj, default=str) if as_json else human, file=stream, flush=True)


@dataclass
class Output:
    """What a command returns: its result, the human summary, and a refusal to raise once both are out."""

    result: Any
    human: str
    refusal: Exception | None = None
    # Facts this step established for the run's freight (chexops.core.freight): data_version, model_version ...
    freight: dict[str, str] | None = None
