"""`chexops bento build`: the serving image's build context, made in a pipeline step.

Imports the model's exported ONNX files into the Bento store, runs `bentoml build` on
`bentos/bentofile.yaml` with that model (`CHEXOPS_MODEL`), and copies the Bento to `--out`: a
directory whose `env/docker/Dockerfile` (BentoML's own) builds the image with the directory as
context. In the cluster BuildKit builds and pushes it; no Docker engine is needed here.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

from .errors import ChexopsError, UserInputError

log = logging.getLogger(__name__)

BENTOFILE = Path("bentos") / "bentofile.yaml"
DOCKERFILE = Path("env") / "docker" / "Dockerfile"


def _bentoml(*args: str, env: dict[str, str], cwd: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "bentoml", *args], capture_output=True, text=True, cwd=cwd, env=env)
    if proc.returncode != 0:
        raise ChexopsError(f"bentoml {' '.join(args)} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def build_context(model_uri: str, out: Path, source: Path, name: str | None = None) -> dict[str, Any]:
    """Bento of the service with the model `model_uri`, copied to `out`; returns what was built."""
    from .bento_store import bentoml_home, import_reference

    if not (source / BENTOFILE).is_file():
        raise UserInputError(f"{source / BENTOFILE} does not exist: --source must be the repository root.")
    if out.exists() and any(out.iterdir()):
        raise UserInputError(f"{out} exists and is not empty.")
    model = import_reference(model_uri, name)
    env = {**os.environ, "BENTOML_HOME": str(bentoml_home()), "CHEXOPS_MODEL": model["tag"], "COLUMNS": "4000"}
    built = _bentoml("build", "-f", str(BENTOFILE), ".", "-o", "tag", env=env, cwd=source)
    tag = built.strip().splitlines()[-1].replace("__tag__:", "").strip()
    path = Path("".join(_bentoml("get", tag, "-o", "path", env=env, cwd=source).split()))
    shutil.copytree(path, out, dirs_exist_ok=True)
    if not (out / DOCKERFILE).is_file():
        raise ChexopsError(f"bentoml build made no {DOCKERFILE} in {path}.")
    log.info("Bento %s (model %s) copied to %s", tag, model["tag"], out)
    return {"bento": tag, "bento_model": model["tag"], "context": str(out), "dockerfile": str(DOCKERFILE)}


@click.command("build")
@click.option("--model", "model_uri", required=True, help="models:/NAME/VERSION, models:/NAME@ALIAS or runs:/RUN_ID (exported).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory to write the Bento to: the image's build context.")
@click.option("--source", type=click.Path(file_okay=False, path_type=Path), default=".", show_default=True,
              help="Repository root holding bentos/bentofile.yaml.")
@click.option("--name", default=None, help="Registered model name for a runs:/ reference (default chexops-cxr).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bento_build(model_uri: str, out: Path, source: Path, name: str | None, as_json: bool) -> None:
    """Build the Bento (service + model) and copy it to --out, ready for an image build (BuildKit)."""
    from .cli import emit, quiet_stdout

    @quiet_stdout
    def run(result_stream) -> None:
        result = build_context(model_uri, out.resolve(), source.resolve(), name)
        emit(result, as_json, f"Bento {result['bento']} with {result['bento_model']} in {result['context']} "
             f"(Dockerfile {result['dockerfile']})", result_stream)

    run()
