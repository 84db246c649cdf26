"""ansible/ checked without hosts: every playbook passes `--syntax-check`, the whole tree passes
ansible-lint's production profile, roles keep the conventional layout, nothing secret is in git."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"
BIN = Path(sys.executable).parent
ROLES = ("common", "volumes", "gpu", "kubernetes", "secrets", "argo")
# Roles that run inside a stage's play, before its own role (the stage's tag covers them).
HELPER_ROLES = {"kubernetes": ["buildkit_apparmor"]}


def _playbooks() -> list[Path]:
    found = []
    for path in sorted(ANSIBLE.rglob("*.yml")):
        if "roles" in path.parts or "group_vars" in path.parts or "inventory" in path.parts:
            continue
        data = yaml.safe_load(path.read_text())
        if (
            isinstance(data, list)
            and data
            and all(isinstance(p, dict) and ("hosts" in p or "import_playbook" in p) for p in data)
        ):
            found.append(path)
    return found


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "ANSIBLE_HOME": str(tmp_path / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "NO_COLOR": "1",
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
    }


def _need(tool: str) -> Path:
    path = BIN / tool
    if not path.exists():
        pytest.skip(f"{tool} is not installed in {BIN} (bash tests/infra/install-tools.sh installs it)")
    return path


def test_playbooks_found():
    assert [p.name for p in _playbooks()] == ["site.yml"]


@pytest.mark.slow
@pytest.mark.parametrize("playbook", _playbooks(), ids=lambda p: p.name)
def test_syntax_check(playbook, tmp_path):
    tool = _need("ansible-playbook")
    inventory = tmp_path / "hosts.yml"
    groups = {g: {"hosts": {f"{g}-host": None}} for g in ("kvm", "gpu", "k3s_server", "k3s_agent", "storage")}
    inventory.write_text(yaml.safe_dump({"all": {"children": groups}}))
    proc = subprocess.run(
        [str(tool), "--syntax-check", "-i", str(inventory), str(playbook)],
        cwd=ANSIBLE,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
def test_ansible_lint_production_profile(tmp_path):
    tool = _need("ansible-lint")
    proc = subprocess.run(
        [str(tool), "--profile", "production", "--offline", "--nocolor"],
        cwd=ANSIBLE,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert "Profile 'production' was required, and it passed" in proc.stdout + proc.stderr


@pytest.mark.parametrize("role", ROLES + tuple(r for rs in HELPER_ROLES.values() for r in rs))
def test_role_layout(role):
    base = ANSIBLE / "roles" / role
    for part in ("defaults", "tasks", "handlers", "meta"):
        assert (base / part / "main.yml").is_file(), f"role {role} lacks {part}/main.yml"
    meta = yaml.safe_load((base / "meta" / "main.yml").read_text())
    assert meta["galaxy_info"]["license"] and meta["galaxy_info"]["description"]
    defaults = yaml.safe_load((base / "defaults" / "main.yml").read_text()) or {}
    assert all(key.startswith(f"{role}_") for key in defaults), f"role {role}: defaults must carry the role prefix"


def test_site_runs_every_stage_in_order_each_tagged():
    plays = yaml.safe_load((ANSIBLE / "site.yml").read_text())
    order = [p["roles"][-1]["role"] for p in plays]
    assert order == list(ROLES)
    assert [[r["role"] for r in p["roles"][:-1]] for p in plays] == [HELPER_ROLES.get(r, []) for r in ROLES]
    assert [p["tags"] for p in plays] == [[r] for r in ROLES]
    # A private repository's credential exists before Argo CD's first sync.
    assert order.index("secrets") < order.index("argo")
    # kubernetes.core runs with the pinned client (never the distribution's python3-kubernetes).
    for play in plays:
        if play["roles"][-1]["role"] in ("secrets", "argo"):
            assert play["vars"]["ansible_python_interpreter"] == "{{ chexops_kubernetes_python_venv }}/bin/python"
    server = yaml.safe_load((ANSIBLE / "roles" / "kubernetes" / "tasks" / "server.yml").read_text())
    pip = next(t for t in server if "ansible.builtin.pip" in t)
    kube = yaml.safe_load((ANSIBLE / "roles" / "kubernetes" / "defaults" / "main.yml").read_text())
    pins = kube["kubernetes_python_packages"]
    assert pip["ansible.builtin.pip"]["name"] == "{{ kubernetes_python_packages }}"
    assert [p.split("==")[0] for p in pins] == ["kubernetes"] and int(pins[0].split("==")[1].split(".")[0]) >= 24
    assert not any("python3-kubernetes" in json.dumps(t) for t in server)


def test_argo_workflows_server_needs_a_token_and_is_not_exposed():
    defaults = yaml.safe_load((ANSIBLE / "roles" / "argo" / "defaults" / "main.yml").read_text())
    workflows = next(c for c in defaults["argo_charts"] if c["name"] == "argo-workflows")["values"]["server"]
    assert workflows["authModes"] == ["client"]
    assert workflows["ingress"]["enabled"] is False and workflows["serviceType"] == "ClusterIP"


def test_node_wait_retries_until_the_node_registers():
    """`kubectl wait` on a Node that has not registered yet fails at once: every wait retries."""
    for name in ("main.yml", "server.yml"):
        tasks = yaml.safe_load((ANSIBLE / "roles" / "kubernetes" / "tasks" / name).read_text())
        waits = [t for t in tasks if "kubectl wait" in json.dumps(t)]
        assert waits, name
        for task in waits:
            assert task.get("until") and task.get("retries") and task.get("delay"), task["name"]
            assert task["register"] in task["until"]


def test_first_start_is_not_followed_by_a_restart():
    handlers = yaml.safe_load((ANSIBLE / "roles" / "kubernetes" / "handlers" / "main.yml").read_text())
    restart = next(h for h in handlers if h["name"] == "Restart k3s")
    tasks = yaml.safe_load((ANSIBLE / "roles" / "kubernetes" / "tasks" / "main.yml").read_text())
    starts = [t for t in tasks if t["name"].startswith("Start the k3s")]
    assert len(starts) == 2
    for task in starts:
        assert any(f"{task['register']} is not changed" in cond for cond in restart["when"]), task["register"]


def test_registry_mirrors_are_written_before_the_first_start_and_restart_k3s_on_change():
    """/etc/rancher/k3s/registries.yaml on every node: read by the first start, a change restarts k3s."""
    plays = yaml.safe_load((ANSIBLE / "site.yml").read_text())
    assert next(p for p in plays if p["roles"][-1]["role"] == "kubernetes")["hosts"] == "k3s_server:k3s_agent"
    tasks = yaml.safe_load((ANSIBLE / "roles" / "kubernetes" / "tasks" / "main.yml").read_text())
    (index,) = [
        i
        for i, t in enumerate(tasks)
        if t.get("ansible.builtin.template", {}).get("dest") == "/etc/rancher/k3s/registries.yaml"
    ]
    task = tasks[index]
    assert task["ansible.builtin.template"]["src"] == "registries.yaml.j2" and "when" not in task
    assert task["notify"] == "Restart k3s"
    handlers = yaml.safe_load((ANSIBLE / "roles" / "kubernetes" / "handlers" / "main.yml").read_text())
    assert any(h["name"] == "Restart k3s" for h in handlers)
    starts = [i for i, t in enumerate(tasks) if t["name"].startswith("Start the k3s")]
    assert len(starts) == 2 and index < min(starts)
    assert (ANSIBLE / "roles" / "kubernetes" / "templates" / "registries.yaml.j2").is_file()


def test_argo_is_pinned_and_bootstraps_one_root_application():
    defaults = yaml.safe_load((ANSIBLE / "roles" / "argo" / "defaults" / "main.yml").read_text())
    charts = {c["name"]: c["version"] for c in defaults["argo_charts"]}
    # Argo Events and Rollouts are Argo CD Applications in git (argocd/platform/).
    assert set(charts) == {"argo-cd", "argo-workflows"}
    assert all(re.fullmatch(r"\d+\.\d+\.\d+", v) for v in charts.values()), charts
    root = (ANSIBLE / "roles" / "argo" / "templates" / "root-application.yaml.j2").read_text()
    assert "path: {{ argo_repo_path }}" in root and defaults["argo_repo_path"] == "argocd"
    assert "selfHeal: true" in root and "prune: true" in root
    kube = yaml.safe_load((ANSIBLE / "roles" / "kubernetes" / "defaults" / "main.yml").read_text())
    assert re.fullmatch(r"v\d+\.\d+\.\d+\+k3s\d+", kube["kubernetes_k3s_version"])


def test_no_secret_in_git():
    ignored = (ANSIBLE / ".gitignore").read_text()
    assert "group_vars/all/vault.yml" in ignored and "inventory/hosts.yml" in ignored
    example = yaml.safe_load((ANSIBLE / "vault.example.yml").read_text())
    assert all(value in ("", "chexops") for value in example.values()), example
    for path in ANSIBLE.rglob("*"):
        if path.is_file() and path.suffix in {".yml", ".yaml", ".j2", ".cfg"}:
            text = path.read_text()
            assert "$ANSIBLE_VAULT" not in text or path.name == "vault.yml"
            assert not re.search(r"BEGIN (RSA|OPENSSH|EC) PRIVATE KEY", text), path
