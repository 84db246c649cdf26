"""checkov (kubernetes framework) on what the cluster would apply: every environment's render and
the platform's own manifests, once per session. Clean, or each skip justified where it is written
(annotation `checkov.io/skipN: CKV_K8S_NN=<reason>`)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from .render import REPO

pytestmark = pytest.mark.slow

SKIP = re.compile(r"^CKV2?_K8S_\d+=\S.{10,}$")


def _checkov() -> Path:
    configured = os.environ.get("CHECKOV")
    for candidate in ([Path(configured)] if configured else []) + [REPO / ".venv-checkov" / "bin" / "checkov"]:
        if candidate.exists():
            return candidate
    pytest.skip("checkov is not installed in .venv-checkov (bash tests/infra/install-tools.sh installs it)")


def _deployed(renders) -> dict[Path, str]:
    """Renders of what is applied (the base alone never is: it has no namespace; nor is a kustomize Component,
    which overlays include)."""
    out = {}
    for directory, text in renders.items():
        rel = directory.relative_to(REPO)
        component = "kind: Component" in (directory / "kustomization.yaml").read_text()
        if rel.parts[0] == "k8s" and directory.name != "base" and not component and not isinstance(text, Exception):
            out[directory] = text
    return out


def test_checkov_is_clean_or_every_skip_is_justified(renders, all_docs, tmp_path):
    checkov = _checkov()
    for directory, text in _deployed(renders).items():
        (tmp_path / ("-".join(directory.relative_to(REPO).parts) + ".yaml")).write_text(text)
    proc = subprocess.run(
        [str(checkov), "-d", str(tmp_path), "--framework", "kubernetes", "--skip-download", "--compact", "-o", "json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"},
    )
    report = json.loads(proc.stdout)
    for item in report if isinstance(report, list) else [report]:
        failed = [f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in item["results"]["failed_checks"]]
        assert item["summary"]["failed"] == 0, "checkov findings:\n" + "\n".join(failed)
        assert item["summary"]["parsing_errors"] == 0
        assert item["summary"]["passed"] > 100
    for _, doc in all_docs:
        for key, value in (doc["metadata"].get("annotations") or {}).items():
            if key.startswith("checkov.io/skip"):
                assert SKIP.match(value), f"{doc['kind']}/{doc['metadata']['name']}: unjustified skip {value!r}"
