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

from chexops.core.errors import ChexopsError, UserInputError
from chexops.core.results import Result

log = logging.getLogger(__name__)

BENTOFILE = Path("bentos") / "bentofile.yaml"
DOCKERFILE = Path("env") / "docker" / "Dockerfile"


class BentoContext(Result):
    """What `chexops bento build` built: the Bento's tag, its model's, the context folder and its Dockerfile in it."""

    bento: str
    bento_model: str
    context: str
    dockerfile: str


def _bentoml(*args: str, env: dict[str, str], cwd: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "bentoml", *args], capture_output=True, text=True, cwd=cwd, env=env)
    if proc.returncode != 0:
        raise ChexopsError(f"bentoml {' '.join(args)} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def build_context(model_uri: str, out: Path, source: Path, name: str | None = None) -> BentoContext:
    """Bento of the service with the model `model_uri`, copied to `out`."""
    from chexops.core.paths import bentoml_home
    from chexops.export.bento import import_reference

    if not (source / BENTOFILE).is_file():
        raise UserInputError(f"{source / BENTOFILE} does not exist: --source must be the repository root.")
    if out.exists() and any(out.iterdir()):
        raise UserInputError(f"{out} exists and is not empty.")
    model = import_reference(model_uri, name)
    env = {**os.environ, "BENTOML_HOME": str(bentoml_home()), "CHEXOPS_MODEL": model.tag, "COLUMNS": "4000"}
    built = _bentoml("build", "-f", str(BENTOFILE), ".", "-o", "tag", env=env, cwd=source)
    tag = built.strip().splitlines()[-1].replace("__tag__:", "").strip()
    path = Path("".join(_bentoml("get", tag, "-o", "path", env=env, cwd=source).split()))
    shutil.copytree(path, out, dirs_exist_ok=True)
    if not (out / DOCKERFILE).is_file():
        raise ChexopsError(f"bentoml build made no {DOCKERFILE} in {path}.")
    log.info("Bento %s (model %s) copied to %s", tag, model.tag, out)
    return BentoContext(bento=tag, bento_model=model.tag, context=str(out), dockerfile=str(DOCKERFILE))
