"""Renders of the GitOps tree (k8s/, argocd/) with `kubectl kustomize`, shared by the tests and by
the golden refresh:

    .venv/bin/python -m tests.gitops.render --update-golden      # from the repository root

A golden file is one environment's render with what `chexops promote` changes (image tag and
digest, model-version label, freight annotation) written as placeholders, so promotions never
change it and any other change to what an environment runs shows as a diff."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
ENVIRONMENTS = ("staging", "production")
OVERLAYS = REPO / "k8s" / "chexops" / "overlays"


def kustomization_dirs() -> list[Path]:
    """Every directory under k8s/ and argocd/ that holds a kustomization (a Component is rendered
    only as part of those that include it)."""
    found = {
        p.parent
        for root in ("k8s", "argocd")
        for p in (REPO / root).rglob("kustomization.yaml")
        if yaml.safe_load(p.read_text()).get("kind") != "Component"
    }
    return sorted(found)


def kubectl() -> str | None:
    return shutil.which("kubectl")


def render(directory: Path) -> str:
    proc = subprocess.run(
        [kubectl() or "kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=120, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {directory.relative_to(REPO)} failed:\n{proc.stderr}")
    return proc.stdout


def render_all(dirs: list[Path]) -> dict[Path, str | RuntimeError]:
    """Renders in parallel; a failure is kept as its error, for the test of that directory."""

    def one(directory: Path) -> str | RuntimeError:
        try:
            return render(directory)
        except RuntimeError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(dirs, pool.map(one, dirs)))


def documents(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


_IMAGE = re.compile(r"(chexops-cxr):v\d+@sha256:[0-9a-f]{64}")
_VERSION = re.compile(r'(chexops\.io/model-version): "\d+"')
_FREIGHT = re.compile(r"(chexops\.io/freight): '\{.*\}'")


def normalise(environment: str, text: str) -> str:  # noqa: ARG001 - one rule for every environment
    """The render without what a promotion changes."""
    text = _IMAGE.sub(r"\1:vN@sha256:DIGEST", text)
    text = _VERSION.sub(r'\1: "N"', text)
    return _FREIGHT.sub(r"\1: '{FREIGHT}'", text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--update-golden", action="store_true", help="rewrite tests/gitops/golden/<env>.yaml")
    args = parser.parse_args(argv)
    if not args.update_golden:
        parser.print_help()
        return 2
    GOLDEN.mkdir(exist_ok=True)
    for env in ENVIRONMENTS:
        (GOLDEN / f"{env}.yaml").write_text(normalise(env, render(OVERLAYS / env)))
        print(f"wrote {(GOLDEN / f'{env}.yaml').relative_to(REPO)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
