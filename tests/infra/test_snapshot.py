"""`chexops infra snapshot`: Cinder snapshots of Terraform's volumes before a teardown, against the local Keystone
+ Cinder stub (conftest.py), which refuses to snapshot an attached volume without `force`, as Cinder does."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from chexops.infra import snapshots as snap_mod

pytest.importorskip("hcl2", reason="python-hcl2 is not installed (bash tests/infra/install-tools.sh)")

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def tf_dir(tmp_path):
    """Terraform's variables (the `volumes` default: platform and datasets), without the checkout's tfvars."""
    work = tmp_path / "terraform"
    shutil.copytree(REPO / "terraform", work, ignore=shutil.ignore_patterns(".terraform*", "*.tfstate*", "*.tfvars*"))
    return work


def _snapshot(infra_cli, env, tf_dir, *extra):
    return infra_cli(["snapshot", "--cloud", "stub", "--tf-dir", str(tf_dir), "--poll", "0.01", *extra], env)


def _posted(stub):
    return [
        body["snapshot"] for method, path, body in stub.requests if method == "POST" and path.endswith("/snapshots")
    ]


def test_snapshots_every_volume_and_waits_until_available(infra_cli, clouds_env, openstack_stub, tf_dir):
    platform = openstack_stub.add_volume("chexops-platform", status="in-use", size=100)
    datasets = openstack_stub.add_volume("chexops-datasets", status="available", size=200)
    openstack_stub.add_volume("colleague-platform")
    openstack_stub.snapshot_ready_after = 3
    out = _snapshot(infra_cli, clouds_env, tf_dir, "--json")
    assert out.exit_code == 0, out.stderr
    rows = {row["volume"]: row for row in out.json()["snapshots"]}
    assert set(rows) == {"chexops-platform", "chexops-datasets"}
    posted = {body["volume_id"]: body for body in _posted(openstack_stub)}
    assert set(posted) == {platform["id"], datasets["id"]}
    # Attached: force (Cinder refuses otherwise); detached: no force needed.
    assert posted[platform["id"]]["force"] is True and posted[datasets["id"]]["force"] is False
    for volume in (platform, datasets):
        body = posted[volume["id"]]
        assert re.fullmatch(rf"{volume['name']}-\d{{8}}T\d{{6}}Z", body["name"])
        assert body["metadata"] == {snap_mod.METADATA_KEY: volume["name"]}
        row = rows[volume["name"]]
        assert row["snapshot"] == body["name"] and row["status"] == "available" and row["size_gb"] == volume["size"]
        assert openstack_stub.snapshots[row["snapshot_id"]]["status"] == "available"
        assert openstack_stub.snapshot_polls[row["snapshot_id"]] >= 3  # it waited


def test_human_table(infra_cli, clouds_env, openstack_stub, tf_dir):
    openstack_stub.add_volume("chexops-platform")
    openstack_stub.add_volume("chexops-datasets")
    out = _snapshot(infra_cli, clouds_env, tf_dir)
    assert out.exit_code == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["VOLUME", "SNAPSHOT", "STATUS", "GB", "PRUNED"]
    assert re.match(r"chexops-datasets\s+chexops-datasets-\d{8}T\d{6}Z\s+available\s+100\s+-$", lines[1])
    assert lines[-1] == "2 snapshot(s) available."


def test_keep_prunes_only_older_chexops_snapshots_of_the_same_volume(infra_cli, clouds_env, openstack_stub, tf_dir):
    platform = openstack_stub.add_volume("chexops-platform")
    openstack_stub.add_volume("chexops-datasets")

    def old(name, created_at, ours=True):
        snap = {
            "id": f"old-{name}",
            "name": name,
            "volume_id": platform["id"],
            "size": 100,
            "status": "available",
            "metadata": {snap_mod.METADATA_KEY: "chexops-platform"} if ours else {},
            "created_at": created_at,
        }
        openstack_stub.snapshots[snap["id"]] = snap
        openstack_stub.snapshot_polls[snap["id"]] = 0

    old("chexops-platform-20261101T000000Z", "2026-11-01T00:00:00.000000")
    old("chexops-platform-20261115T000000Z", "2026-11-15T00:00:00.000000")
    old("chexops-platform-20261120T000000Z", "2026-11-20T00:00:00.000000")
    old("before-upgrade", "2026-10-01T00:00:00.000000", ours=False)  # someone's own snapshot
    out = _snapshot(infra_cli, clouds_env, tf_dir, "--keep", "2", "--json")
    assert out.exit_code == 0, out.stderr
    rows = {row["volume"]: row for row in out.json()["snapshots"]}
    assert rows["chexops-platform"]["pruned"] == [
        "chexops-platform-20261101T000000Z",
        "chexops-platform-20261115T000000Z",
    ]
    assert rows["chexops-datasets"]["pruned"] == []
    left = {s["name"] for s in openstack_stub.snapshots.values() if s["volume_id"] == platform["id"]}
    assert left == {"chexops-platform-20261120T000000Z", "before-upgrade", rows["chexops-platform"]["snapshot"]}


def test_a_missing_volume_is_a_user_error_and_nothing_is_snapshotted(infra_cli, clouds_env, openstack_stub, tf_dir):
    openstack_stub.add_volume("chexops-platform")
    out = _snapshot(infra_cli, clouds_env, tf_dir)
    assert out.exit_code == 2
    assert "Volume 'chexops-datasets' does not exist on cloud 'stub'" in out.stderr and "Traceback" not in out.stderr
    assert _posted(openstack_stub) == []


def test_a_failed_snapshot_exits_1_and_prunes_nothing(infra_cli, clouds_env, openstack_stub, tf_dir):
    platform = openstack_stub.add_volume("chexops-platform")
    openstack_stub.add_volume("chexops-datasets")
    openstack_stub.snapshots["older"] = {
        "id": "older",
        "name": "chexops-platform-20261101T000000Z",
        "volume_id": platform["id"],
        "status": "available",
        "metadata": {snap_mod.METADATA_KEY: "chexops-platform"},
        "created_at": "2026-11-01T00:00:00.000000",
    }
    openstack_stub.snapshot_outcome = "error"
    out = _snapshot(infra_cli, clouds_env, tf_dir, "--keep", "1")
    assert out.exit_code == 1
    assert "is error: Cinder could not take it" in out.stderr and "do not tear down" in out.stderr
    assert "older" in openstack_stub.snapshots


def test_waiting_times_out(infra_cli, clouds_env, openstack_stub, tf_dir):
    openstack_stub.add_volume("chexops-platform")
    openstack_stub.add_volume("chexops-datasets")
    openstack_stub.snapshot_ready_after = 10**9
    out = _snapshot(infra_cli, clouds_env, tf_dir, "--timeout", "1", "--poll", "0.2")
    assert out.exit_code == 1 and "is still creating after 1 s" in out.stderr


def test_volumes_and_prefix_follow_the_terraform_settings(infra_cli, clouds_env, openstack_stub, tf_dir):
    (tf_dir / "terraform.tfvars").write_text(
        'name_prefix = "chexops-jd"\n'
        'volumes = {\n  scratch = {\n    size_gb = 10\n    mount_point = "/mnt/scratch"\n    purpose = "x"\n  }\n}\n'
    )
    volume = openstack_stub.add_volume("chexops-jd-scratch", size=10)
    env = {**clouds_env, "CHEXOPS_NAME_PREFIX": None}
    out = _snapshot(infra_cli, env, tf_dir, "--json")
    assert out.exit_code == 0, out.stderr
    assert [row["volume_id"] for row in out.json()["snapshots"]] == [volume["id"]]


def test_expired_credentials_exit_2(infra_cli, clouds_env, openstack_stub, tf_dir):
    out = infra_cli(["snapshot", "--cloud", "stub_expired", "--tf-dir", str(tf_dir)], clouds_env)
    assert out.exit_code == 2 and "rejected the credentials" in out.stderr
