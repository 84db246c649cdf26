"""GPU pods run with the `nvidia` runtime: the kubernetes role creates the RuntimeClass (checked in
test_cluster_config.py), and every pod or Argo Workflows template that asks for `nvidia.com/gpu`
must ask for that RuntimeClass (GitOps contract: `runtimeClassName: nvidia`). Argo templates have
no runtimeClassName field: they set it with `podSpecPatch` (template or workflow level)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ROLE_CLASSES = REPO / "ansible" / "roles" / "kubernetes" / "templates" / "cluster-classes.yaml.j2"


def _documents():
    for top in ("workflows", "k8s"):
        for path in sorted((REPO / top).rglob("*.y*ml")) if (REPO / top).is_dir() else []:
            try:
                docs = list(yaml.safe_load_all(path.read_text()))
            except yaml.YAMLError:
                continue
            for doc in docs:
                if isinstance(doc, dict):
                    yield path, doc


def _asks_for_gpu(node) -> bool:
    return "nvidia.com/gpu" in json.dumps(node.get("resources", {})) if isinstance(node, dict) else False


def _runtime_class(*patches) -> str | None:
    for patch in patches:
        if isinstance(patch, str) and patch.strip():
            try:
                value = yaml.safe_load(patch)
            except yaml.YAMLError:
                continue
            if isinstance(value, dict) and value.get("runtimeClassName"):
                return value["runtimeClassName"]
        if isinstance(patch, dict) and patch.get("runtimeClassName"):
            return patch["runtimeClassName"]
    return None


def _gpu_consumers():
    """(where, runtime class it runs with) for every GPU-requesting Argo template or pod spec."""
    for path, doc in _documents():
        spec = doc.get("spec") or {}
        kind = doc.get("kind", "")
        if kind in ("WorkflowTemplate", "Workflow", "ClusterWorkflowTemplate", "CronWorkflow"):
            wf = spec.get("workflowSpec", spec) if kind == "CronWorkflow" else spec
            for template in wf.get("templates", []) or []:
                containers = [template.get("container"), template.get("script")] + [
                    c for c in template.get("containerSet", {}).get("containers", []) or []
                ]
                if any(_asks_for_gpu(c) for c in containers if c):
                    yield (
                        f"{path.relative_to(REPO)}: {doc['metadata']['name']}/{template['name']}",
                        _runtime_class(template.get("podSpecPatch"), wf.get("podSpecPatch")),
                    )
        pod = (
            (spec.get("template") or {}).get("spec")
            if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job")
            else None
        )
        pod = pod or (spec if kind == "Pod" else None)
        if pod and any(_asks_for_gpu(c) for c in pod.get("containers", [])):
            yield f"{path.relative_to(REPO)}: {kind}/{doc['metadata']['name']}", pod.get("runtimeClassName")


def test_every_gpu_step_asks_for_the_nvidia_runtime_class():
    consumers = list(_gpu_consumers())
    if not consumers:
        pytest.skip("no pod or workflow template in workflows/ or k8s/ asks for nvidia.com/gpu yet")
    created = yaml.safe_load(ROLE_CLASSES.read_text().split("---")[0].split("\n", 1)[1].split("scheduling:")[0])
    assert created["kind"] == "RuntimeClass"
    wrong = [f"{where} (runtimeClassName: {rc})" for where, rc in consumers if rc != created["metadata"]["name"]]
    assert not wrong, "GPU steps without runtimeClassName nvidia:\n" + "\n".join(wrong)
