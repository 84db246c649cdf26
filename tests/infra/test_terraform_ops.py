"""`chexops infra init|plan|apply|destroy|drift` with the real terraform binary, on provider-free root
modules (`terraform_data`, built into Terraform: nothing to download), and the S3 remote state with
its lock file against a real S3 server (moto_server), configured by terraform/backend.hcl.example."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import REPO, run_infra

pytestmark = pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform is not on PATH")

MAIN_TF = """
variable "size" {
  type = string
}

resource "terraform_data" "volume" {
  input = "kept"
}

resource "terraform_data" "instance" {
  input = var.size
}
"""
TF_ENV = {"TF_PLUGIN_CACHE_DIR": None, "TF_CLI_CONFIG_FILE": "/dev/null"}


def _module(root: Path, size: str = "1", backend: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "versions.tf").write_text(f'terraform {{\n  required_version = ">= 1.11.0"\n{backend}}}\n')
    (root / "main.tf").write_text(MAIN_TF)
    (root / "terraform.tfvars").write_text(f'size = "{size}"\n')
    return root


def _infra(*args: str, env: dict | None = None):
    return run_infra(list(args), {**TF_ENV, **(env or {})})


def _state(mod: Path) -> list[str]:
    proc = subprocess.run(["terraform", f"-chdir={mod}", "state", "list"], capture_output=True, text=True, check=True)
    return proc.stdout.split()


@pytest.fixture()
def applied(tmp_path):
    """A provider-free root module with local state, initialised and applied through the CLI."""
    mod = _module(tmp_path / "root")
    assert _infra("init", "--tf-dir", str(mod)).exit_code == 0
    out = _infra("apply", "--tf-dir", str(mod), "--yes", "--json")
    assert out.exit_code == 0, out.stderr
    assert (out.json()["add"], out.json()["destroy"]) == (2, 0)
    return mod


def test_apply_lists_what_it_touches_and_refuses_without_yes(tmp_path):
    mod = _module(tmp_path / "root")
    assert _infra("init", "--tf-dir", str(mod)).exit_code == 0
    out = _infra("apply", "--tf-dir", str(mod))
    assert out.exit_code == 2, out.stderr
    assert "terraform_data.instance" in out.stderr and "pass --yes" in out.stderr
    assert "Plan: 2 to add, 0 to change, 0 to destroy." in out.stderr
    assert not (mod / "terraform.tfstate").exists() or _state(mod) == []


def test_plan_summarises_a_change(applied):
    (applied / "terraform.tfvars").write_text('size = "2"\n')
    out = _infra("plan", "--tf-dir", str(applied), "--json")
    assert out.exit_code == 0, out.stderr
    changes = {c["address"]: c["actions"] for c in out.json()["changes"]}
    assert changes == {"terraform_data.instance": ["update"]}
    assert (out.json()["add"], out.json()["change"], out.json()["destroy"]) == (0, 1, 0)


def test_drift_exit_codes(applied):
    clean = _infra("drift", "--tf-dir", str(applied))
    assert clean.exit_code == 0, clean.stderr
    assert "No drift" in clean.stdout

    (applied / "terraform.tfvars").write_text('size = "2"\n')
    drifted = _infra("drift", "--tf-dir", str(applied), "--json")
    assert drifted.exit_code == 3, drifted.stderr
    assert [c["address"] for c in drifted.json()["changes"]] == ["terraform_data.instance"]
    assert "Drift in" in drifted.stderr

    (applied / "main.tf").write_text(MAIN_TF + "\nresource broken {\n")
    failed = _infra("drift", "--tf-dir", str(applied))
    assert failed.exit_code == 1
    assert "terraform plan failed" in failed.stderr


def test_destroy_keeps_what_it_is_told_to_keep(applied):
    refused = _infra("destroy", "--tf-dir", str(applied), "--keep", "terraform_data.volume")
    assert refused.exit_code == 2
    assert "keeps   terraform_data.volume" in refused.stderr
    assert sorted(_state(applied)) == ["terraform_data.instance", "terraform_data.volume"]

    out = _infra("destroy", "--tf-dir", str(applied), "--keep", "terraform_data.volume", "--yes", "--json")
    assert out.exit_code == 0, out.stderr
    assert out.json() == {"destroyed": ["terraform_data.instance"], "kept": ["terraform_data.volume"]}
    assert _state(applied) == ["terraform_data.volume"]


def test_split_kept_keeps_volumes_and_skips_data_sources():
    from chexops.infra.terraform import split_kept

    addresses = [
        'module.volumes.openstack_blockstorage_volume_v3.this["platform"]',
        'module.volumes.openstack_compute_volume_attach_v2.this["platform"]',
        "data.openstack_images_image_v2.ubuntu",
        'module.m["a.b"].openstack_compute_instance_v2.node[0]',
        "module.object_store.openstack_objectstorage_container_v1.this",
    ]
    destroy, kept = split_kept(addresses)
    assert kept == [addresses[0], addresses[4]]
    assert destroy == [addresses[1], addresses[3]]


def test_init_without_backend_hcl_says_to_copy_the_example(tmp_path):
    mod = _module(tmp_path / "root", backend='  backend "s3" {}\n')
    shutil.copy(REPO / "terraform" / "backend.hcl.example", mod / "backend.hcl.example")
    out = _infra("init", "--tf-dir", str(mod))
    assert out.exit_code == 2
    assert "backend.hcl.example" in out.stderr and "Traceback" not in out.stderr
    assert not (mod / ".terraform").exists()


def test_missing_terraform_dir_is_one_line(tmp_path):
    out = _infra("plan", "--tf-dir", str(tmp_path / "nope"))
    assert out.exit_code == 2
    assert "is not a directory" in out.stderr and "Traceback" not in out.stderr


# --- Remote state: S3 backend with a lock file, against moto_server --------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def s3_server():
    binary = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    if not Path(binary).exists():
        pytest.skip("moto_server is not installed (moto[server] in the dev extra)")
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("moto_server did not start")
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


# moto accepts any key pair: one made per run, so no credential-looking literal lives in git.
_MOTO_KEYS = (f"moto-{uuid.uuid4().hex[:12]}", uuid.uuid4().hex)
S3_ENV = {
    "AWS_ACCESS_KEY_ID": _MOTO_KEYS[0],
    "AWS_SECRET_ACCESS_KEY": _MOTO_KEYS[1],
    "AWS_PROFILE": None,
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
}


def _s3(url: str):
    import boto3

    return boto3.Session().client(
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=_MOTO_KEYS[0],
        aws_secret_access_key=_MOTO_KEYS[1],
    )


def _backend_config(tmp_path: Path, url: str) -> tuple[Path, str, str]:
    """The documented backend.hcl.example with only its endpoint pointed at the local server."""
    text = (REPO / "terraform" / "backend.hcl.example").read_text()
    text, n = re.subn(r'(s3\s*=\s*)"https://[^"]+"', rf'\1"{url}"', text)
    assert n == 1, "backend.hcl.example names no S3 endpoint"
    bucket = re.search(r'^bucket\s*=\s*"([^"]+)"', text, re.M).group(1)
    key = re.search(r'^key\s*=\s*"([^"]+)"', text, re.M).group(1)
    path = tmp_path / "backend.hcl"
    path.write_text(text)
    return path, bucket, key


def test_the_repository_uses_a_partial_s3_backend():
    hcl2 = pytest.importorskip("hcl2", reason="python-hcl2 is not installed")
    with (REPO / "terraform" / "versions.tf").open() as handle:
        terraform = hcl2.load(handle)["terraform"][0]
    backends = terraform["backend"]
    assert [list(b) for b in backends] == [['"s3"']] or [list(b) for b in backends] == [["s3"]]


@pytest.mark.slow
def test_state_lands_in_s3_and_a_held_lock_stops_plan_and_apply(tmp_path, s3_server):
    s3 = _s3(s3_server)
    config, bucket, key = _backend_config(tmp_path, s3_server)
    s3.create_bucket(Bucket=bucket)
    mod = _module(tmp_path / "root", backend='  backend "s3" {}\n')

    out = _infra("init", "--tf-dir", str(mod), "--backend-config", str(config), env=S3_ENV)
    assert out.exit_code == 0, out.stderr
    out = _infra("apply", "--tf-dir", str(mod), "--yes", env=S3_ENV)
    assert out.exit_code == 0, out.stderr

    state = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    assert sorted(r["name"] for r in state["resources"]) == ["instance", "volume"]
    assert not (mod / "terraform.tfstate").exists()
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert listed == [key], "the lock file must be released after apply"

    # Another operator's lock: the lock file Terraform writes (conditional PUT) is already there.
    lock = {"ID": "0d9e3c1a-0000-4000-8000-000000000000", "Operation": "OperationTypeApply", "Who": "colleague@host"}
    s3.put_object(Bucket=bucket, Key=f"{key}.tflock", Body=json.dumps(lock).encode())
    (mod / "terraform.tfvars").write_text('size = "2"\n')
    for command in (["plan"], ["apply", "--yes"]):
        held = _infra(*command, "--tf-dir", str(mod), env=S3_ENV)
        assert held.exit_code == 1, held.stderr
        assert "Error acquiring the state lock" in held.stderr
    assert _remote_input(s3, bucket, key) == "1", "nothing may be applied while the lock is held"

    s3.delete_object(Bucket=bucket, Key=f"{key}.tflock")
    out = _infra("apply", "--tf-dir", str(mod), "--yes", env=S3_ENV)
    assert out.exit_code == 0, out.stderr
    assert _remote_input(s3, bucket, key) == "2"


def _remote_input(s3, bucket: str, key: str) -> str:
    state = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    instance = next(r for r in state["resources"] if r["name"] == "instance")
    return instance["instances"][0]["attributes"]["input"]["value"]


@pytest.mark.slow
def test_init_migrates_a_local_state_into_s3(tmp_path, s3_server):
    s3 = _s3(s3_server)
    config, bucket, key = _backend_config(tmp_path, s3_server)
    s3.create_bucket(Bucket=bucket)
    mod = _module(tmp_path / "root")
    assert _infra("init", "--tf-dir", str(mod)).exit_code == 0
    assert _infra("apply", "--tf-dir", str(mod), "--yes").exit_code == 0

    _module(mod, backend='  backend "s3" {}\n')
    plain = _infra("init", "--tf-dir", str(mod), "--backend-config", str(config), env=S3_ENV)
    assert plain.exit_code == 1, "a local state must not be left behind silently"
    out = _infra("init", "--tf-dir", str(mod), "--backend-config", str(config), "--migrate-state", env=S3_ENV)
    assert out.exit_code == 0, out.stderr
    assert _remote_input(s3, bucket, key) == "1"
    assert _infra("drift", "--tf-dir", str(mod), env=S3_ENV).exit_code == 0


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not on PATH")
def test_the_make_targets_run_the_commands_in_order(tmp_path):
    """`make -n` (nothing runs): each operator target is the chexops command docs/operations.md names."""

    def dry(*args: str) -> list[str]:
        proc = subprocess.run(
            ["make", "-n", "-C", str(REPO), f"VENV={tmp_path / 'venv'}", *args],
            capture_output=True,
            text=True,
            check=True,
        )
        return [line.split("/bin/", 1)[1] for line in proc.stdout.splitlines() if "/bin/chexops " in line]

    assert dry("infra-apply") == ["chexops infra apply "]
    assert dry("destroy", "YES=1") == [
        "chexops infra snapshot --cloud kvm_tacc --keep 3",
        "chexops infra destroy --yes",
    ]
    assert dry("site", "ANSIBLE_VAULT_PASSWORD_FILE=") == ["chexops infra site -- --ask-vault-pass"]
    assert dry("rebuild-after-lease", "YES=1", f"ANSIBLE_VAULT_PASSWORD_FILE={tmp_path / 'vault-pass'}") == [
        "chexops infra apply --yes",
        "chexops infra inventory",
        "chexops infra site -- ",
        "chexops infra check",
    ]
    phony = " ".join(line for line in (REPO / "Makefile").read_text().splitlines() if line.startswith(".PHONY"))
    for target in (
        "infra-init",
        "infra-plan",
        "infra-apply",
        "inventory",
        "site",
        "infra-check",
        "drift",
        "destroy",
        "rebuild-after-lease",
    ):
        assert f" {target}" in phony, target
