"""A re-leased GPU node joins again: the kubernetes role's tasks/forget_node.yml, run by Ansible with the real
`kubectl` against a small Kubernetes API server on 127.0.0.1 (discovery, GET and DELETE of Nodes and Secrets),
deletes the old `node/gpu1` and its `gpu1.node-password.k3s` Secret when another machine takes the name, and
leaves a Node of the same machine alone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"
BIN = Path(sys.executable).parent
OLD_MACHINE = uuid.uuid4().hex  # a machine-id: 32 hex digits
SECRET = "/api/v1/namespaces/kube-system/secrets/gpu1.node-password.k3s"
NODE = "/api/v1/nodes/gpu1"

PLAY = """
- name: The agent's pre-join step, on gpu1, with node1 as the server
  hosts: gpu1
  gather_facts: false
  connection: local
  tasks:
    - name: Forget the Node of another machine
      ansible.builtin.include_tasks: ANSIBLE/roles/kubernetes/tasks/forget_node.yml
"""


class KubeAPI:
    """The objects the API server holds ({path: object}) and the requests it was sent."""

    def __init__(self, objects: dict[str, dict[str, Any]]) -> None:
        self.objects = objects
        self.requests: list[tuple[str, str]] = []


RESOURCES = {
    "kind": "APIResourceList",
    "groupVersion": "v1",
    "resources": [
        {"name": "nodes", "singularName": "node", "namespaced": False, "kind": "Node", "verbs": ["get", "delete"]},
        {"name": "secrets", "singularName": "secret", "namespaced": True, "kind": "Secret", "verbs": ["get", "delete"]},
    ],
}


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _handler(api: KubeAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
            pass

        def _send(self, code: int, body: dict[str, Any]) -> None:
            payload = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:  # noqa: N802
            path = self.path.split("?")[0]
            api.requests.append(("GET", path))
            if path == "/api":
                return self._send(200, {"kind": "APIVersions", "versions": ["v1"]})
            if path == "/apis":
                return self._send(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": []})
            if path == "/api/v1":
                return self._send(200, RESOURCES)
            if path in api.objects:
                return self._send(200, api.objects[path])
            return self._send(404, _status(404, "NotFound", f"{path.rsplit('/', 1)[1]} not found"))

        def do_DELETE(self) -> None:  # noqa: N802
            path = self.path.split("?")[0]
            api.requests.append(("DELETE", path))
            if path in api.objects:
                del api.objects[path]
                return self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})
            return self._send(404, _status(404, "NotFound", f"{path.rsplit('/', 1)[1]} not found"))

    return Handler


def _node(machine_id: str) -> dict[str, Any]:
    return {
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {"name": "gpu1", "uid": "5d6f0c5e-0000-4000-8000-000000000001"},
        "status": {"nodeInfo": {"machineID": machine_id}},
    }


def _rejoin(tmp_path: Path, objects: dict[str, dict[str, Any]], machine_id: str, ran_before: bool) -> KubeAPI:
    """Run forget_node.yml for gpu1 (machine MACHINE_ID; k3s ran there before or not) against OBJECTS."""
    if not (BIN / "ansible-playbook").exists():
        pytest.skip(f"ansible-playbook is not in {BIN} (bash tests/infra/install-tools.sh installs it)")
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (tests/infra/install-tools.sh installs it)")
    api = KubeAPI(objects)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(api))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {"name": "k3s", "cluster": {"server": f"http://127.0.0.1:{server.server_address[1]}"}}
                    ],
                    "users": [{"name": "admin", "user": {}}],
                    "contexts": [{"name": "k3s", "context": {"cluster": "k3s", "user": "admin"}}],
                    "current-context": "k3s",
                }
            )
        )
        (tmp_path / "machine-id").write_text(machine_id + "\n")
        password = tmp_path / "node" / "password"
        if ran_before:
            password.parent.mkdir()
            password.write_text("a5e0b1c2d3e4f5a6b7c8d9e0f1a2b3c4\n")
        inventory = {
            "all": {
                "vars": {"ansible_python_interpreter": "/usr/bin/python3"},
                "children": {
                    "k3s_server": {"hosts": {"node1": None}},
                    "k3s_agent": {"hosts": {"gpu1": None}},
                },
            }
        }
        (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inventory))
        (tmp_path / "play.yml").write_text(PLAY.replace("ANSIBLE", str(ANSIBLE)))
        variables = {
            "kubernetes_server_host": "node1",
            "kubernetes_kubectl": f"{kubectl} --kubeconfig {kubeconfig} --cache-dir {tmp_path / 'kube-cache'}",
            "kubernetes_machine_id_file": str(tmp_path / "machine-id"),
            "kubernetes_node_password_file": str(password),
        }
        env = {
            **os.environ,
            "ANSIBLE_HOME": str(tmp_path / "ansible-home"),
            "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"),
            "KUBECONFIG": str(kubeconfig),
        }
        proc = subprocess.run(
            [str(BIN / "ansible-playbook"), "-i", "hosts.yml", "play.yml", "-e", json.dumps(variables)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=180,
        )
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    return api


def _deleted(api: KubeAPI) -> list[str]:
    return [path for method, path in api.requests if method == "DELETE"]


def test_a_new_machine_with_the_old_name_has_the_old_node_forgotten(tmp_path):
    api = _rejoin(tmp_path, {NODE: _node(OLD_MACHINE), SECRET: {"kind": "Secret"}}, "b" * 32, ran_before=False)
    assert _deleted(api) == [NODE, SECRET]
    assert api.objects == {}


def test_a_new_machine_is_told_apart_by_its_machine_id(tmp_path):
    """k3s already ran on the new machine (e.g. a first try that k3s refused): its node password exists."""
    api = _rejoin(tmp_path, {NODE: _node(OLD_MACHINE), SECRET: {"kind": "Secret"}}, "c" * 32, ran_before=True)
    assert _deleted(api) == [NODE, SECRET]


@pytest.mark.parametrize("registered", [OLD_MACHINE, ""], ids=["same-machine-id", "no-machine-id-yet"])
def test_the_same_machine_keeps_its_node(tmp_path, registered):
    objects = {NODE: _node(registered), SECRET: {"kind": "Secret"}}
    api = _rejoin(tmp_path, dict(objects), OLD_MACHINE, ran_before=True)
    assert ("GET", NODE) in api.requests and _deleted(api) == []
    assert api.objects == objects


def test_a_first_join_deletes_nothing(tmp_path):
    api = _rejoin(tmp_path, {}, "d" * 32, ran_before=False)
    assert ("GET", NODE) in api.requests and _deleted(api) == []
