"""Session fixtures of the GitOps tests: every kustomization rendered once (in parallel)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from .render import OVERLAYS, REPO, documents, kubectl, kustomization_dirs, render_all


@pytest.fixture(scope="session")
def renders() -> dict[Path, str | RuntimeError]:
    if kubectl() is None:
        pytest.skip("kubectl is not installed (it renders the kustomizations: apt-get install kubectl)")
    version = subprocess.run([kubectl(), "version", "--client"], capture_output=True, text=True, check=False).stdout
    found = re.search(r"Kustomize Version: v(\d+)", version)
    if not found or int(found.group(1)) < 5:
        pytest.skip(
            f"kubectl's kustomize is older than v5 ({version.strip()!r}): the overlays use `labels` and `replicas`"
        )
    return render_all(kustomization_dirs())


def _docs(renders, directory: Path) -> list[dict]:
    text = renders[directory]
    if isinstance(text, Exception):
        raise text
    return documents(text)


@pytest.fixture(scope="session")
def env_docs(renders) -> dict[str, list[dict]]:
    """The rendered objects of each environment's overlay."""
    return {env: _docs(renders, OVERLAYS / env) for env in ("staging", "production")}


@pytest.fixture(scope="session")
def argocd_docs(renders) -> list[dict]:
    return _docs(renders, REPO / "argocd")


@pytest.fixture(scope="session")
def all_docs(renders) -> list[tuple[Path, dict]]:
    """Every rendered object of every kustomization (failed renders excluded: their own test fails)."""
    out = []
    for directory, text in renders.items():
        if not isinstance(text, Exception):
            out += [(directory, d) for d in documents(text)]
    return out


@pytest.fixture(scope="session")
def ansible_secrets() -> dict[tuple[str, str], set[str]]:
    """(namespace, name) -> keys of the Secrets the Ansible `secrets` role creates."""
    defaults = yaml.safe_load((REPO / "ansible" / "roles" / "secrets" / "defaults" / "main.yml").read_text())
    return {(s["namespace"], s["name"]): set(s["data"]) for s in defaults["secrets_kubernetes"]}


@pytest.fixture(scope="session")
def schemas(shared) -> Path:
    path = shared.parent / "schemas"
    if not (path / "index.json").is_file():
        pytest.skip(f"the team's Argo schemas are not at {path}")
    return path
