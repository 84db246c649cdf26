"""The AppArmor profile rootless BuildKit runs under (ansible/roles/buildkit_apparmor), compiled by a
real AppArmor 4 parser (the nodes' Ubuntu 24.04 has AppArmor 4; tests/install-tools.sh unpacks
Debian trixie's under /opt/chexops/apparmor): it parses, `userns` is in the compiled policy, a
broken rule is refused, and its name is the one the workflows' BuildKit steps ask for."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "ansible" / "roles" / "buildkit_apparmor"
DEFAULTS = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
PROFILE_NAME = DEFAULTS["buildkit_apparmor_profile"]
UNPACKED = Path("/opt/chexops/apparmor")
BUILDKIT_IMAGE = "moby/buildkit:"


def _parser() -> tuple[Path, Path]:
    """(apparmor_parser of AppArmor >= 4, the apparmor.d its abi/ and tunables/ come from)."""
    candidates = [(UNPACKED / "bin" / "apparmor_parser", UNPACKED / "etc" / "apparmor.d")]
    system = shutil.which("apparmor_parser")
    if system:
        candidates.append((Path(system), Path("/etc/apparmor.d")))
    for parser, base in candidates:
        if not parser.exists() or not (base / "abi" / "4.0").exists():
            continue
        version = subprocess.run(
            [str(parser), "--config-file=/dev/null", "--version"], capture_output=True, text=True, check=False
        )
        found = re.search(r"version (\d+)\.", version.stdout)
        if found and int(found.group(1)) >= 4:
            return parser, base
    pytest.skip("no AppArmor >= 4 parser (bash tests/install-tools.sh unpacks trixie's under /opt/chexops/apparmor)")


def _render() -> str:
    """The role's profile template, rendered with the role's defaults as Ansible would."""
    text = (ROLE / "templates" / "profile.j2").read_text()
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.from_string(text).render(ansible_managed="Ansible managed", **DEFAULTS)


def _compile(source: str, tmp_path: Path, name: str) -> subprocess.CompletedProcess[str]:
    """Compiles `source` for AppArmor ABI 4.0 (Ubuntu 24.04's kernels) into tmp_path/name.bin."""
    parser, base = _parser()
    profile = tmp_path / f"{name}.aa"
    profile.write_text(source)
    return subprocess.run(
        [
            str(parser),
            "--config-file=/dev/null",
            f"--base={base}",
            f"--features-file={base / 'abi' / '4.0'}",
            "--skip-kernel-load",
            "--skip-cache",
            "-o",
            str(tmp_path / f"{name}.bin"),
            str(profile),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_profile_compiles_and_userns_is_in_the_policy(tmp_path):
    source = _render()
    assert re.search(rf"^profile {re.escape(PROFILE_NAME)} flags=\(unconfined\) \{{$", source, re.M), source
    granted = _compile(source, tmp_path, "granted")
    assert granted.returncode == 0, granted.stderr
    without = _compile(re.sub(r"^\s*userns,\n", "", source, flags=re.M), tmp_path, "without")
    assert without.returncode == 0, without.stderr
    compiled = (tmp_path / "granted.bin").read_bytes()
    assert compiled and compiled != (tmp_path / "without.bin").read_bytes(), "userns, changes nothing compiled"


def test_a_broken_rule_is_refused(tmp_path):
    source = _render()
    assert "  userns,\n" in source
    proc = _compile(source.replace("  userns,\n", "  userns bogus,\n"), tmp_path, "broken")
    assert proc.returncode != 0
    line = source[: source.index("  userns,")].count("\n") + 1
    assert f"at line {line}" in proc.stderr, proc.stderr


def test_the_profile_declares_the_name_of_the_defaults(tmp_path):
    parser, base = _parser()
    profile = tmp_path / "profile"
    profile.write_text(_render())
    proc = subprocess.run(
        [str(parser), "--config-file=/dev/null", f"--base={base}", "--names", str(profile)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [PROFILE_NAME]


def _templates() -> list[tuple[str, dict]]:
    out = []
    for path in sorted((REPO / "workflows").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") in ("WorkflowTemplate", "CronWorkflow", "Workflow"):
                spec = doc["spec"].get("workflowSpec", doc["spec"])
                out += [(f"{path.name}:{t['name']}", t) for t in spec.get("templates", [])]
    return out


def _app_armor(node) -> list[dict]:
    """Every appArmorProfile anywhere under node."""
    if isinstance(node, dict):
        found = [node["appArmorProfile"]] if "appArmorProfile" in node else []
        return found + [p for v in node.values() for p in _app_armor(v)]
    if isinstance(node, list):
        return [p for v in node for p in _app_armor(v)]
    return []


def test_buildkit_steps_run_under_the_profile_and_nothing_is_unconfined():
    builds = {}
    for where, template in _templates():
        container = template.get("container") or template.get("script") or {}
        profiles = _app_armor(template)
        if profiles:
            builds[where] = (container.get("image", ""), profiles)
    assert len(builds) >= 2, builds
    for where, (image, profiles) in builds.items():
        assert image.startswith(BUILDKIT_IMAGE), f"{where}: an AppArmor profile on a non-BuildKit step ({image})"
        assert profiles == [{"type": "Localhost", "localhostProfile": PROFILE_NAME}], where
    everywhere = [
        p
        for root in ("workflows", "k8s", "argocd")
        for path in (REPO / root).rglob("*.yaml")
        for doc in yaml.safe_load_all(path.read_text())
        for p in _app_armor(doc)
    ]
    assert everywhere and all(p.get("type") != "Unconfined" for p in everywhere), everywhere


def test_every_kubernetes_node_loads_it_before_k3s():
    plays = yaml.safe_load((REPO / "ansible" / "site.yml").read_text())
    roles = {p["hosts"]: [r["role"] for r in p["roles"]] for p in plays}
    kube = roles["k3s_server:k3s_agent"]
    assert kube.index("buildkit_apparmor") < kube.index("kubernetes"), kube
    earlier = [r for p in plays[: [p["hosts"] for p in plays].index("k3s_server:k3s_agent")] for r in p["roles"]]
    assert "kubernetes" not in [r["role"] for r in earlier]


@pytest.mark.slow
def test_the_role_stops_on_a_host_without_apparmor(tmp_path):
    """Run by Ansible: without AppArmor's securityfs the role stops before touching the host
    (a Localhost profile could never be applied there)."""
    playbook_bin = Path(sys.executable).parent / "ansible-playbook"
    if not playbook_bin.exists():
        pytest.skip(f"ansible-playbook is not in {playbook_bin.parent} (bash tests/infra/install-tools.sh installs it)")
    playbook = tmp_path / "play.yml"
    playbook.write_text(
        "- hosts: localhost\n  gather_facts: false\n  connection: local\n  roles:\n    - role: buildkit_apparmor\n"
    )
    missing = tmp_path / "securityfs" / "apparmor" / "profiles"
    env = {
        **os.environ,
        "ANSIBLE_HOME": str(tmp_path / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_ROLES_PATH": str(ROLE.parent),
        "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
        "PATH": f"{playbook_bin.parent}:{os.environ.get('PATH', '')}",
    }
    proc = subprocess.run(
        [str(playbook_bin), "-i", "localhost,", str(playbook), "-e", f"buildkit_apparmor_loaded_profiles={missing}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    out = " ".join(proc.stdout.split())
    assert proc.returncode != 0 and f"AppArmor is not enabled on localhost ({missing} is missing)" in out, out[-3000:]
    assert "TASK [buildkit_apparmor : AppArmor's tools" not in proc.stdout
