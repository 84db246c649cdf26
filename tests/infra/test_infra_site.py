"""`chexops infra site`: the inventory's hosts listed, then the real ansible-playbook runs site.yml on them
(here a one-task site.yml on hosts reached with the local connection, in the inventory
`chexops infra inventory` writes from a recorded terraform output)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from conftest import FIXTURES, run_infra

PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("ansible-playbook") is None and not PLAYBOOK.exists(), reason="ansible is not installed"
    ),
]

SITE = """
- name: Mark every host
  hosts: all
  gather_facts: false
  tasks:
    - name: Write a file per host
      ansible.builtin.copy:
        content: "{{ inventory_hostname }} {{ chexops_bastion_ip }}\\n"
        dest: "{{ marks }}/{{ inventory_hostname }}"
        mode: "0644"
"""


@pytest.fixture()
def ansible_dir(tmp_path):
    folder = tmp_path / "ansible"
    folder.mkdir()
    (folder / "site.yml").write_text(SITE)
    (folder / "ansible.cfg").write_text("[defaults]\nretry_files_enabled = False\n")
    out = run_infra(
        ["inventory", "--from-json", str(FIXTURES / "terraform_output.json"), "-o", str(folder / "hosts.yml")]
    )
    assert out.exit_code == 0, out.stderr
    inventory = yaml.safe_load((folder / "hosts.yml").read_text())
    for host in inventory["all"]["hosts"].values():
        host.update({"ansible_connection": "local", "ansible_python_interpreter": sys.executable})
        host.pop("ansible_ssh_common_args", None)
    inventory["all"]["vars"]["ansible_python_interpreter"] = sys.executable
    (folder / "hosts.yml").write_text(yaml.safe_dump(inventory))
    return folder, sorted(inventory["all"]["hosts"]), inventory["all"]["vars"]["chexops_bastion_ip"]


def _env(tmp_path: Path) -> dict:
    return {"PATH": f"{PLAYBOOK.parent}:{os.environ['PATH']}", "ANSIBLE_LOCAL_TEMP": str(tmp_path / "t")}


def test_site_lists_the_hosts_then_runs_the_playbook_on_each(tmp_path, ansible_dir):
    folder, hosts, bastion = ansible_dir
    marks = tmp_path / "marks"
    marks.mkdir()
    args = ["site", "--ansible-dir", str(folder), "--inventory", str(folder / "hosts.yml"), "--json"]
    out = run_infra([*args, "--", "-e", f"marks={marks}"], _env(tmp_path))
    assert out.exit_code == 0, out.stderr
    assert out.json()["hosts"] == hosts
    assert sorted(p.name for p in marks.iterdir()) == hosts
    assert (marks / hosts[0]).read_text() == f"{hosts[0]} {bastion}\n"


def test_a_failed_play_is_exit_1(tmp_path, ansible_dir):
    folder, _, _ = ansible_dir
    args = ["site", "--ansible-dir", str(folder), "--inventory", str(folder / "hosts.yml")]
    out = run_infra([*args, "--", "-e", f"marks={tmp_path / 'missing' / 'dir'}"], _env(tmp_path))
    assert out.exit_code == 1
    assert "ansible-playbook site.yml failed" in out.stderr


def test_a_missing_inventory_is_exit_2(tmp_path, ansible_dir):
    folder, _, _ = ansible_dir
    out = run_infra(["site", "--ansible-dir", str(folder), "--inventory", str(tmp_path / "none.yml")])
    assert out.exit_code == 2
    assert "make inventory" in out.stderr and "Traceback" not in out.stderr
