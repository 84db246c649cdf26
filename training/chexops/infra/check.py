"""The post-deploy smoke test (`chexops infra check`), through the real `kubectl` and the operator's kubeconfig.

Rows of the report: every node Ready; `nvidia-smi -L` in a pod on the GPU node (RuntimeClass
`nvidia`, one `nvidia.com/gpu`); every Argo CD Application Synced and Healthy; MLflow, MinIO,
Prometheus and the registry answering their health paths through the API server's service proxy
(so nothing needs a port-forward or an open NodePort).
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from chexops.core.errors import ChexopsError, UserInputError
from chexops.core.results import Result

log = logging.getLogger(__name__)

GPU_LABEL = "chexops.io/gpu"
GPU_IMAGE = "nvcr.io/nvidia/cuda:12.6.3-base-ubuntu24.04"
CHECK_NAMESPACE = "default"
ARGOCD_NAMESPACE = "argocd"
#: (row, namespace, service:port, health path) of the platform's services (argocd/platform/*.yaml).
SERVICES = (
    ("MLflow", "platform", "mlflow:5000", "health"),
    ("MinIO", "platform", "minio:9000", "minio/health/live"),
    ("Prometheus", "platform", "prometheus-server:80", "-/ready"),
    ("registry", "platform", "registry:5000", "v2/"),
)


class ChecksFailed(ChexopsError):
    """At least one row of the smoke test failed (exit 1, after the table is printed)."""


class Check(Result):
    """One row: what was checked, whether it passed, and what was seen."""

    name: str
    ok: bool
    detail: str


class CheckReport(Result):
    checks: list[Check]

    def table(self) -> str:
        width = max(len(c.name) for c in self.checks)
        rows = [f"{'check':<{width}}  result  detail"]
        rows += [f"{c.name:<{width}}  {'ok' if c.ok else 'FAIL':<6}  {c.detail}" for c in self.checks]
        failed = sum(not c.ok for c in self.checks)
        rows.append(f"{len(self.checks) - failed} of {len(self.checks)} checks passed.")
        return "\n".join(rows)


class Kubectl:
    """`kubectl [--kubeconfig FILE] ...`, its stdout returned; failures as (rc, stderr)."""

    def __init__(self, kubeconfig: Path | None, binary: str = "kubectl", request_timeout: str = "20s") -> None:
        found = shutil.which(binary)
        if found is None:
            raise UserInputError(f"'{binary}' is not on PATH: install kubectl (docs/operations.md, step 0).")
        if kubeconfig is not None and not kubeconfig.is_file():
            raise UserInputError(
                f"Kubeconfig {kubeconfig} does not exist (site.yml writes ansible/.artifacts/kubeconfig)."
            )
        self.base = [found, f"--request-timeout={request_timeout}"]
        self.base += [f"--kubeconfig={kubeconfig}"] if kubeconfig is not None else []

    def run(self, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
        proc = subprocess.run([*self.base, *args], input=stdin, capture_output=True, text=True, check=False)
        log.debug("kubectl %s -> %d", " ".join(args), proc.returncode)
        return proc.returncode, proc.stdout, _last_line(proc.stderr)

    def json(self, *args: str) -> dict[str, Any]:
        code, out, err = self.run(*args, "-o", "json")
        if code != 0:
            raise _KubectlFailed(err or f"kubectl {' '.join(args)} exited {code}")
        try:
            return json.loads(out)
        except json.JSONDecodeError as exc:
            raise _KubectlFailed(f"kubectl {' '.join(args)} printed something that is not JSON: {exc}") from exc


class _KubectlFailed(Exception):
    pass


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _condition(node: dict[str, Any], kind: str) -> str:
    for cond in node.get("status", {}).get("conditions", []):
        if cond.get("type") == kind:
            return str(cond.get("status"))
    return "Unknown"


def node_checks(nodes: list[dict[str, Any]]) -> list[Check]:
    if not nodes:
        return [Check(name="nodes", ok=False, detail="the cluster has no node")]
    return [
        Check(
            name=f"node {n['metadata']['name']}",
            ok=_condition(n, "Ready") == "True",
            detail=f"Ready={_condition(n, 'Ready')}",
        )
        for n in nodes
    ]


def application_checks(apps: list[dict[str, Any]]) -> list[Check]:
    if not apps:
        return [Check(name="argocd applications", ok=False, detail=f"no Application in namespace {ARGOCD_NAMESPACE}")]
    rows = []
    for app in apps:
        sync = app.get("status", {}).get("sync", {}).get("status", "Unknown")
        health = app.get("status", {}).get("health", {}).get("status", "Unknown")
        rows.append(
            Check(
                name=f"app {app['metadata']['name']}",
                ok=sync == "Synced" and health == "Healthy",
                detail=f"{sync} / {health}",
            )
        )
    return rows


def gpu_pod(node: str, image: str) -> dict[str, Any]:
    """A pod that runs `nvidia-smi -L` once on node with one GPU (RuntimeClass nvidia: selector and toleration)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"chexops-check-gpu-{uuid.uuid4().hex[:8]}",
            "namespace": CHECK_NAMESPACE,
            "labels": {"app.kubernetes.io/name": "chexops-check"},
        },
        "spec": {
            "restartPolicy": "Never",
            "runtimeClassName": "nvidia",
            "nodeName": node,
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "automountServiceAccountToken": False,
            "containers": [
                {
                    "name": "nvidia-smi",
                    "image": image,
                    "command": ["nvidia-smi", "-L"],
                    "resources": {"limits": {"nvidia.com/gpu": 1}},
                    "securityContext": {"allowPrivilegeEscalation": False},
                }
            ],
        },
    }


def gpu_check(kubectl: Kubectl, nodes: list[dict[str, Any]], image: str, timeout: float, poll: float) -> Check:
    gpu_nodes = [n["metadata"]["name"] for n in nodes if n["metadata"].get("labels", {}).get(GPU_LABEL) == "true"]
    if not gpu_nodes:
        return Check(name="gpu nvidia-smi", ok=False, detail=f"no node labelled {GPU_LABEL}=true")
    pod = gpu_pod(gpu_nodes[0], image)
    name = pod["metadata"]["name"]
    code, _, err = kubectl.run("create", "--validate=false", "-f", "-", stdin=json.dumps(pod))
    if code != 0:
        return Check(name="gpu nvidia-smi", ok=False, detail=f"cannot create pod: {err}")
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                pod_now = kubectl.json("get", "pod", name, "-n", CHECK_NAMESPACE)
            except _KubectlFailed as exc:
                return Check(name=f"gpu nvidia-smi ({gpu_nodes[0]})", ok=False, detail=f"pod {name}: {exc}")
            phase = pod_now.get("status", {}).get("phase", "Unknown")
            if phase in ("Succeeded", "Failed") or time.monotonic() >= deadline:
                break
            time.sleep(poll)
        code, logs, err = kubectl.run("logs", name, "-n", CHECK_NAMESPACE)
        seen = _last_line(logs) if code == 0 else err
        ok = phase == "Succeeded" and logs.lstrip().startswith("GPU ")
        if phase not in ("Succeeded", "Failed"):
            seen = f"pod still {phase} after {timeout:.0f} s"
        return Check(name=f"gpu nvidia-smi ({gpu_nodes[0]})", ok=ok, detail=f"{phase}: {seen}")
    finally:
        kubectl.run("delete", "pod", name, "-n", CHECK_NAMESPACE, "--wait=false", "--ignore-not-found")


def service_check(kubectl: Kubectl, row: str, namespace: str, service: str, path: str) -> Check:
    raw = f"/api/v1/namespaces/{namespace}/services/{service}/proxy/{path}"
    code, out, err = kubectl.run("get", "--raw", raw)
    detail = f"{service} /{path}: " + ("answered" if code == 0 else err or f"exit {code}")
    return Check(name=row, ok=code == 0, detail=detail[:160])


def run_checks(
    kubeconfig: Path | None, *, gpu: bool = True, image: str = GPU_IMAGE, timeout: float = 300, poll: float = 2
) -> CheckReport:
    """Every row of the smoke test; a row that cannot be checked fails with what kubectl said."""
    kubectl = Kubectl(kubeconfig)
    checks: list[Check] = []
    try:
        nodes = kubectl.json("get", "nodes")["items"]
    except _KubectlFailed as exc:
        return CheckReport(checks=[Check(name="kubernetes API", ok=False, detail=str(exc))])
    checks += node_checks(nodes)
    if gpu:
        checks.append(gpu_check(kubectl, nodes, image, timeout, poll))
    try:
        apps = kubectl.json("get", "applications.argoproj.io", "-n", ARGOCD_NAMESPACE)["items"]
        checks += application_checks(apps)
    except _KubectlFailed as exc:
        checks.append(Check(name="argocd applications", ok=False, detail=str(exc)))
    checks += [service_check(kubectl, *spec) for spec in SERVICES]
    return CheckReport(checks=checks)
