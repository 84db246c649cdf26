"""The one output path of every command: `@result_output` adds `--json`, keeps stdout for the result,
writes the step's outputs (`$CHEXOPS_OUTPUTS`, for Argo) and prints the human summary otherwise."""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import sys
from pathlib import Path

import click

from chexops.core import freight as freight_record
from chexops.core.console import ENV as OUTPUTS_ENV
from chexops.core.console import Output, emit

__all__ = ["Output", "result_output"]


def result_output(func):
    """Decorate a click command's function (below `@click.command`) that returns an `Output`.

    While the command works, stdout goes to stderr, so that its result is all stdout holds whatever
    libraries print (MLflow prints run links). The function gets `as_json` when it asks for it; an
    `Output.refusal` is raised after the result is printed (a gate's exit 3 still reports why)."""
    wants_json = "as_json" in inspect.signature(func).parameters

    @click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
    @functools.wraps(func)
    def wrapper(*args, as_json: bool = False, **kwargs):
        stream = sys.stdout
        with contextlib.redirect_stdout(sys.stderr):
            out = func(*args, **kwargs, **({"as_json": as_json} if wants_json else {}))
        if out is None:  # nothing to report (a non-zero rank under torchrun)
            return
        emit(out.result, as_json, out.human, stream)
        _carry_freight(out)
        if out.refusal is not None:
            raise out.refusal

    return wrapper


def _carry_freight(out: Output) -> None:
    """The step's output `freight`: the carried record (`$CHEXOPS_FREIGHT`) with this step's facts added,
    or the record a step created (`chexops freight create`)."""
    directory = os.environ.get(OUTPUTS_ENV)
    carried = freight_record.Freight.from_env()
    if carried is not None:
        updated = carried.add(**(out.freight or {}))
    elif isinstance(out.result, freight_record.Freight):
        updated = out.result
    else:
        return
    if not directory:
        return
    Path(directory).mkdir(parents=True, exist_ok=True)
    (Path(directory) / "freight").write_text(updated.to_json())
