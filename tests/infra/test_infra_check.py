"""`chexops infra check` with the real kubectl against a local HTTP server that answers the Kubernetes API
paths kubectl calls (discovery, nodes, pods and their log, Argo CD Applications, the service proxy):
a healthy cluster passes every row; an unhealthy one fails exactly the broken rows and exits 1."""

from __future__ import annotations

import copy
import json
import shutil
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from conftest import local_server, run_infra

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not on PATH"),
]

GPU_LINE = "GPU 0: Quadro RTX 6000 (UUID: GPU-5a1c2f3e-0000-4000-8000-000000000000)"


def _node(name: str, ready: str = "True", gpu: bool = False) -> dict[str, Any]:
    labels = {"kubernetes.io/hostname": name, **({"chexops.io/gpu": "true"} if gpu else {})}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "status": {"conditions": [{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": ready}]},
    }


def _app(name: str, sync: str = "Synced", health: str = "Healthy") -> dict[str, Any]:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Application",
        "metadata": {"name": name, "namespace": "argocd"},
        "status": {"sync": {"status": sync}, "health": {"status": health}},
    }


class KubeStub:
    """The cluster's state; the handler answers from it and records every request."""

    def __init__(self) -> None:
        self.nodes = [_node("node1"), _node("node2"), _node("gpu1", gpu=True)]
        self.apps = [_app("chexops-root"), _app("mlflow"), _app("minio")]
        self.services = {"mlflow:5000": 200, "minio:9000": 200, "prometheus-server:80": 200, "registry:5000": 200}
        self.pod_phase, self.pod_log = "Succeeded", GPU_LINE + "\n"
        self.pods: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []


DISCOVERY = {
    "/api": {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []},
    "/apis": {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [
            {
                "name": "argoproj.io",
                "versions": [{"groupVersion": "argoproj.io/v1alpha1", "version": "v1alpha1"}],
                "preferredVersion": {"groupVersion": "argoproj.io/v1alpha1", "version": "v1alpha1"},
            }
        ],
    },
    "/api/v1": {
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [
            {"name": "nodes", "singularName": "node", "namespaced": False, "kind": "Node", "verbs": ["get", "list"]},
            {
                "name": "pods",
                "singularName": "pod",
                "namespaced": True,
                "kind": "Pod",
                "verbs": ["create", "delete", "get", "list"],
                "shortNames": ["po"],
            },
            {"name": "pods/log", "singularName": "", "namespaced": True, "kind": "Pod", "verbs": ["get"]},
            {"name": "services/proxy", "singularName": "", "namespaced": True, "kind": "Service", "verbs": ["get"]},
        ],
    },
    "/apis/argoproj.io/v1alpha1": {
        "kind": "APIResourceList",
        "groupVersion": "argoproj.io/v1alpha1",
        "resources": [
            {
                "name": "applications",
                "singularName": "application",
                "namespaced": True,
                "kind": "Application",
                "verbs": ["get", "list"],
                "shortNames": ["app", "apps"],
            }
        ],
    },
}


def _status(code: int, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "code": code}


def _handler(stub: KubeStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
            pass

        def _send(self, code: int, body: Any, content_type: str = "application/json") -> None:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _route(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            path = urlsplit(self.path).path.rstrip("/") or "/"
            stub.requests.append((method, path))
            pods = "/api/v1/namespaces/default/pods"
            if method == "GET" and path in DISCOVERY:
                return self._send(200, DISCOVERY[path])
            if method == "GET" and path == "/api/v1/nodes":
                return self._send(200, {"kind": "NodeList", "apiVersion": "v1", "items": stub.nodes})
            if method == "GET" and path == "/apis/argoproj.io/v1alpha1/namespaces/argocd/applications":
                return self._send(
                    200, {"kind": "ApplicationList", "apiVersion": "argoproj.io/v1alpha1", "items": stub.apps}
                )
            if method == "POST" and path == pods:
                pod = json.loads(body)
                pod["status"] = {"phase": "Pending"}
                stub.pods[pod["metadata"]["name"]] = pod
                return self._send(201, pod)
            if path.startswith(pods + "/"):
                name, _, sub = path[len(pods) + 1 :].partition("/")
                if name not in stub.pods:
                    return self._send(404, _status(404, f'pods "{name}" not found'))
                pod = stub.pods[name]
                if method == "DELETE":
                    return self._send(200, stub.pods.pop(name))
                if sub == "log":
                    return self._send(200, stub.pod_log, "text/plain")
                pod["status"] = {"phase": stub.pod_phase}
                return self._send(200, copy.deepcopy(pod))
            prefix = "/api/v1/namespaces/platform/services/"
            if method == "GET" and path.startswith(prefix) and "/proxy" in path:
                service = path[len(prefix) :].split("/proxy")[0]
                code = stub.services.get(service, 503)
                return self._send(code, "ok" if code == 200 else "unavailable", "text/plain")
            return self._send(404, _status(404, f"the server could not find the requested resource ({path})"))

        def _dispatch(self) -> None:
            self._route(self.command)

        do_GET = do_POST = do_DELETE = _dispatch  # noqa: N815 - http.server's method names

    return Handler


def _kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "stub", "cluster": {"server": server}}],
                "users": [{"name": "stub", "user": {}}],
                "contexts": [{"name": "stub", "context": {"cluster": "stub", "user": "stub"}}],
                "current-context": "stub",
            }
        )
    )
    return path


@pytest.fixture()
def cluster(tmp_path):
    stub = KubeStub()
    with local_server(_handler(stub)) as url:
        stub.kubeconfig = _kubeconfig(tmp_path / "kubeconfig", url)
        yield stub


def _check(tmp_path: Path, kubeconfig: Path, *extra: str):
    env = {"HOME": str(tmp_path), "KUBECACHEDIR": str(tmp_path / "kube-cache"), "KUBECONFIG": None}
    return run_infra(["check", "--kubeconfig", str(kubeconfig), "--timeout", "20", *extra], env)


def _rows(out) -> dict[str, tuple[bool, str]]:
    return {c["name"]: (c["ok"], c["detail"]) for c in out.json()["checks"]}


def test_a_healthy_cluster_passes_every_row(tmp_path, cluster):
    out = _check(tmp_path, cluster.kubeconfig, "--json")
    assert out.exit_code == 0, out.stderr
    rows = _rows(out)
    assert all(ok for ok, _ in rows.values()), rows
    assert set(rows) == {
        "node node1",
        "node node2",
        "node gpu1",
        "gpu nvidia-smi (gpu1)",
        "app chexops-root",
        "app mlflow",
        "app minio",
        "MLflow",
        "MinIO",
        "Prometheus",
        "registry",
    }
    assert GPU_LINE in rows["gpu nvidia-smi (gpu1)"][1]
    # The pod asked for a GPU on the GPU node, and it was deleted afterwards.
    created = [p for m, p in cluster.requests if m == "POST"]
    deleted = [p for m, p in cluster.requests if m == "DELETE"]
    assert len(created) == 1 and len(deleted) == 1 and not cluster.pods
    for path in ("/health", "/minio/health/live", "/-/ready", "/v2"):
        assert any(p.endswith("/proxy" + path) for _, p in cluster.requests), path


def test_the_table_names_each_row(tmp_path, cluster):
    out = _check(tmp_path, cluster.kubeconfig, "--no-gpu")
    assert out.exit_code == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["check", "result", "detail"]
    assert any(line.startswith("app mlflow") and " ok " in line for line in lines)
    assert lines[-1] == "10 of 10 checks passed."
    assert not any(m == "POST" for m, _ in cluster.requests)


def test_an_unhealthy_cluster_fails_exactly_the_broken_rows(tmp_path, cluster):
    cluster.nodes[2] = _node("gpu1", ready="False", gpu=True)
    cluster.apps[1] = _app("mlflow", sync="OutOfSync", health="Degraded")
    cluster.services["minio:9000"] = 503
    cluster.pod_phase, cluster.pod_log = "Failed", "Failed to initialize NVML: Driver/library version mismatch\n"
    out = _check(tmp_path, cluster.kubeconfig, "--json")
    assert out.exit_code == 1, out.stderr
    rows = _rows(out)
    failed = {name for name, (ok, _) in rows.items() if not ok}
    assert failed == {"node gpu1", "gpu nvidia-smi (gpu1)", "app mlflow", "MinIO"}
    assert rows["app mlflow"][1] == "OutOfSync / Degraded"
    assert "NVML" in rows["gpu nvidia-smi (gpu1)"][1]
    assert "4 of 11 checks failed." in out.stderr
    assert not cluster.pods, "the nvidia-smi pod must be deleted even when it failed"


def test_a_pod_that_never_runs_fails_after_the_timeout(tmp_path, cluster):
    cluster.pod_phase, cluster.pod_log = "Pending", ""
    env = {"HOME": str(tmp_path), "KUBECACHEDIR": str(tmp_path / "kube-cache"), "KUBECONFIG": None}
    out = run_infra(["check", "--kubeconfig", str(cluster.kubeconfig), "--timeout", "1", "--json"], env)
    assert out.exit_code == 1
    ok, detail = _rows(out)["gpu nvidia-smi (gpu1)"]
    assert not ok and "still Pending" in detail
    assert not cluster.pods


def test_no_gpu_node_and_no_application_fail(tmp_path, cluster):
    cluster.nodes = [_node("node1")]
    cluster.apps = []
    out = _check(tmp_path, cluster.kubeconfig, "--json")
    assert out.exit_code == 1
    rows = _rows(out)
    assert rows["gpu nvidia-smi"] == (False, "no node labelled chexops.io/gpu=true")
    assert rows["argocd applications"][0] is False


def test_an_unreachable_api_is_one_failed_row(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    kubeconfig = _kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{port}")
    out = _check(tmp_path, kubeconfig, "--json")
    assert out.exit_code == 1
    assert list(_rows(out)) == ["kubernetes API"]


def test_a_missing_kubeconfig_is_exit_2(tmp_path):
    out = _check(tmp_path, tmp_path / "nope")
    assert out.exit_code == 2
    assert "does not exist" in out.stderr and "Traceback" not in out.stderr
