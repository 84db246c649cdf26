"""`chexops infra lease ...` against a local Keystone + Blazar + Nova stub (conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from chexops.infra import lease as lease_mod


def _tfvars(tmp_path):
    return tmp_path / "reservations.auto.tfvars.json"


def _create(infra_cli, env, tmp_path, *extra):
    return infra_cli(
        ["lease", "create", *extra, "--cloud", "stub", "--poll", "0.01", "--tfvars", str(_tfvars(tmp_path)), "--json"],
        env,
    )


def test_create_gpu_lease_waits_for_active_and_writes_tfvars(infra_cli, clouds_env, openstack_stub, tmp_path, caplog):
    caplog.set_level("INFO", logger="chexops")
    openstack_stub.activate_after = 3
    out = _create(
        infra_cli,
        clouds_env,
        tmp_path,
        "chexops-gpu",
        "--role",
        "gpu",
        "--node-type",
        "gpu_a100_pcie",
        "--duration",
        "2d",
    )
    assert out.exit_code == 0, out.stderr
    payload = out.json()
    lease = payload["lease"]
    assert payload["created"] is True
    assert lease["status"] == "ACTIVE" and lease["active"] is True
    res_id = lease["reservations"][0]["id"]
    assert json.loads(_tfvars(tmp_path).read_text()) == {"gpu_reservation_id": res_id}

    posted = [
        body for method, path, body in openstack_stub.requests if method == "POST" and path == "/blazar/v1/leases"
    ]
    assert len(posted) == 1
    body = posted[0]
    assert body["start_date"] == "now"
    assert body["reservations"] == [
        {
            "resource_type": "physical:host",
            "min": 1,
            "max": 1,
            "hypervisor_properties": "",
            "resource_properties": '["==", "$node_type", "gpu_a100_pcie"]',
        }
    ]
    end = datetime.strptime(body["end_date"], "%Y-%m-%d %H:%M")
    assert abs((end - datetime.now(timezone.utc).replace(tzinfo=None)) - timedelta(days=2)) < timedelta(minutes=2)
    assert "waiting for ACTIVE" in caplog.text  # progress goes through logging, not stdout


def test_create_kvm_lease_resolves_flavor_and_merges_tfvars(infra_cli, clouds_env, openstack_stub, tmp_path):
    _tfvars(tmp_path).write_text(json.dumps({"gpu_reservation_id": "keep-me"}))
    out = _create(
        infra_cli, clouds_env, tmp_path, "chexops-kvm", "--role", "kvm", "--flavor", "m1.large", "--count", "3"
    )
    assert out.exit_code == 0, out.stderr
    lease = out.json()["lease"]
    res = lease["reservations"][0]
    assert res["resource_type"] == "flavor:instance" and res["flavor_id"] == res["id"]
    posted = next(
        body for method, path, body in openstack_stub.requests if method == "POST" and path == "/blazar/v1/leases"
    )
    # `affinity` explicit and null, as python-chi's Lease.add_flavor_reservation sends it.
    assert posted["reservations"] == [
        {"resource_type": "flavor:instance", "flavor_id": "4", "amount": 3, "affinity": None}
    ]
    assert json.loads(_tfvars(tmp_path).read_text()) == {
        "gpu_reservation_id": "keep-me",
        "kvm_reservation_id": res["id"],
    }


def test_create_reuses_a_live_lease_of_the_same_name(infra_cli, clouds_env, openstack_stub, tmp_path):
    first = _create(infra_cli, clouds_env, tmp_path, "chexops-gpu", "--role", "gpu")
    second = _create(infra_cli, clouds_env, tmp_path, "chexops-gpu", "--role", "gpu")
    assert first.exit_code == 0 and second.exit_code == 0, second.stderr
    assert second.json()["created"] is False
    assert second.json()["lease"]["id"] == first.json()["lease"]["id"]
    assert sum(1 for m, p, _ in openstack_stub.requests if m == "POST" and p == "/blazar/v1/leases") == 1


def test_status_human_and_json(infra_cli, clouds_env, openstack_stub, tmp_path):
    created = _create(infra_cli, clouds_env, tmp_path, "chexops-gpu", "--role", "gpu").json()["lease"]
    human = infra_cli(["lease", "status", "chexops-gpu", "--cloud", "stub"], clouds_env)
    assert human.exit_code == 0, human.stderr
    assert f"Lease chexops-gpu ({created['id']}): ACTIVE" in human.stdout
    assert "-> gpu_reservation_id" in human.stdout
    by_id = infra_cli(["lease", "status", created["id"], "--cloud", "stub", "--require-active", "--json"], clouds_env)
    assert by_id.exit_code == 0, by_id.stderr
    assert by_id.json()["lease"]["tfvars"] == {"gpu_reservation_id": created["reservations"][0]["id"]}


def test_cloud_from_os_cloud_env(infra_cli, clouds_env, openstack_stub, tmp_path):
    _create(infra_cli, clouds_env, tmp_path, "chexops-gpu", "--role", "gpu")
    out = infra_cli(["lease", "status", "chexops-gpu", "--json"], {**clouds_env, "OS_CLOUD": "stub"})
    assert out.exit_code == 0, out.stderr


def test_extend_moves_the_end(infra_cli, clouds_env, openstack_stub, tmp_path):
    created = _create(infra_cli, clouds_env, tmp_path, "chexops-gpu", "--role", "gpu", "--duration", "12h").json()[
        "lease"
    ]
    out = infra_cli(["lease", "extend", "chexops-gpu", "--cloud", "stub", "--by", "1d", "--json"], clouds_env)
    assert out.exit_code == 0, out.stderr
    payload = out.json()
    before = lease_mod.parse_api_date(created["end_date"])
    after = lease_mod.parse_api_date(payload["lease"]["end_date"])
    assert after - before == timedelta(days=1)
    put = [body for method, path, body in openstack_stub.requests if method == "PUT"]
    assert put == [{"end_date": after.strftime("%Y-%m-%d %H:%M")}]


def test_delete_removes_lease_and_its_tfvars(infra_cli, clouds_env, openstack_stub, tmp_path):
    _tfvars(tmp_path).write_text(json.dumps({"kvm_reservation_id": "other"}))
    _create(infra_cli, clouds_env, tmp_path, "chexops-gpu", "--role", "gpu")
    out = infra_cli(
        ["lease", "delete", "chexops-gpu", "--cloud", "stub", "--tfvars", str(_tfvars(tmp_path)), "--json"], clouds_env
    )
    assert out.exit_code == 0, out.stderr
    assert out.json()["tfvars_removed"] == ["gpu_reservation_id"]
    assert openstack_stub.leases == {}
    assert json.loads(_tfvars(tmp_path).read_text()) == {"kvm_reservation_id": "other"}


# ------------------------------------------------------------------------------------------------
# Errors: clear messages and the shared exit codes (1 failed, 2 the user's input is wrong)
# ------------------------------------------------------------------------------------------------


def test_lease_not_found_by_name_and_by_id(infra_cli, clouds_env, openstack_stub):
    by_name = infra_cli(["lease", "status", "no-such-lease", "--cloud", "stub"], clouds_env)
    assert by_name.exit_code == 2
    assert "No lease 'no-such-lease'" in by_name.stderr
    missing_id = "00000000-0000-4000-8000-000000000000"
    by_id = infra_cli(["lease", "delete", missing_id, "--cloud", "stub"], clouds_env)
    assert by_id.exit_code == 2
    assert f"No lease '{missing_id}'" in by_id.stderr
    assert "Traceback" not in by_id.stderr


def test_expired_credentials(infra_cli, clouds_env, openstack_stub):
    out = infra_cli(["lease", "status", "chexops-gpu", "--cloud", "stub_expired"], clouds_env)
    assert out.exit_code == 2
    assert "rejected the credentials of cloud 'stub_expired'" in out.stderr
    assert "expired" in out.stderr and "Application Credentials" in out.stderr
    assert "Traceback" not in out.stderr


def test_reservation_not_active_status(infra_cli, clouds_env, openstack_stub, tmp_path):
    openstack_stub.outcome = "PENDING"
    created = _create(infra_cli, clouds_env, tmp_path, "chexops-gpu", "--role", "gpu", "--no-wait")
    assert created.exit_code == 0, created.stderr
    assert created.json()["lease"]["status"] == "PENDING"
    plain = infra_cli(["lease", "status", "chexops-gpu", "--cloud", "stub"], clouds_env)
    assert plain.exit_code == 0  # reporting a pending lease is not a failure
    strict = infra_cli(["lease", "status", "chexops-gpu", "--cloud", "stub", "--require-active"], clouds_env)
    assert strict.exit_code == 1
    assert "is PENDING" in strict.stderr and "nothing can be launched on it yet" in strict.stderr


def test_create_wait_times_out_when_never_active(infra_cli, clouds_env, openstack_stub, tmp_path):
    openstack_stub.outcome = "PENDING"
    out = _create(infra_cli, clouds_env, tmp_path, "chexops-gpu", "--role", "gpu", "--timeout", "1")
    assert out.exit_code == 1
    assert "Still not active after 1 s" in out.stderr
    # The ids are recorded before waiting, so a later `lease status` + `terraform apply` can go on.
    assert "gpu_reservation_id" in json.loads(_tfvars(tmp_path).read_text())


def test_create_wait_fails_fast_on_error(infra_cli, clouds_env, openstack_stub, tmp_path):
    openstack_stub.outcome = "ERROR"
    out = _create(infra_cli, clouds_env, tmp_path, "chexops-gpu", "--role", "gpu", "--timeout", "60")
    assert out.exit_code == 1
    assert "is ERROR" in out.stderr and "no free host" in out.stderr


def test_extend_refuses_an_ended_lease(infra_cli, clouds_env, openstack_stub, tmp_path):
    created = _create(infra_cli, clouds_env, tmp_path, "chexops-gpu", "--role", "gpu").json()["lease"]
    openstack_stub.leases[created["id"]]["status"] = "TERMINATED"
    out = infra_cli(["lease", "extend", "chexops-gpu", "--cloud", "stub", "--by", "1d"], clouds_env)
    assert out.exit_code == 1
    assert "is TERMINATED" in out.stderr and "Create a new lease" in out.stderr


def test_blazar_refusal_is_reported(infra_cli, clouds_env, openstack_stub, tmp_path):
    _create(infra_cli, clouds_env, tmp_path, "chexops-taken", "--role", "gpu")
    out = _create(infra_cli, clouds_env, tmp_path, "chexops-taken", "--role", "gpu", "--no-reuse")
    assert out.exit_code == 1
    assert "HTTP 409" in out.stderr and "already exists" in out.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["lease", "create", "chexops-x", "--role", "gpu", "--cloud", "stub", "--duration", "8d"], "bare-metal leases last at most 7 days"),
        (["lease", "create", "chexops-x", "--role", "gpu", "--cloud", "stub", "--duration", "soon"], "is not like 90m"),
        (
            ["lease", "create", "chexops-x", "--role", "kvm", "--cloud", "stub", "--flavor", "m9.huge"],
            "Flavor 'm9.huge' does not exist",
        ),
        (
            ["lease", "create", "chexops-x", "--role", "gpu", "--cloud", "stub", "--node-type", "bad type!"],
            "is not a Chameleon node type",
        ),
        (["lease", "status", "x", "--cloud", "nowhere"], "Cloud 'nowhere' is not in"),
        (["lease", "status", "x"], "No cloud named"),
        (["lease", "extend", "x", "--cloud", "stub"], "exactly one of --by"),
    ],
)
def test_user_errors_exit_2(infra_cli, clouds_env, openstack_stub, tmp_path, args, message):
    out = infra_cli([*args, "--tfvars", str(_tfvars(tmp_path))] if args[1] == "create" else args, clouds_env)
    assert out.exit_code == 2, (out.stdout, out.stderr)
    assert message in out.stderr


def test_missing_clouds_yaml(infra_cli, clouds_env, tmp_path):
    env = {**clouds_env, "OS_CLIENT_CONFIG_FILE": str(tmp_path / "absent.yaml")}
    out = infra_cli(["lease", "status", "x", "--cloud", "stub"], env)
    assert out.exit_code == 2
    assert "absent.yaml, which is not a file" in out.stderr


def test_parse_duration():
    assert lease_mod.parse_duration("1d12h") == timedelta(days=1, hours=12)
    assert lease_mod.parse_duration("90m") == timedelta(minutes=90)
    with pytest.raises(lease_mod.UserInputError):
        lease_mod.parse_duration("0h")


def test_main_cli_maps_errors(clouds_env, openstack_stub):
    """Through the real `chexops` entry point: exit code 2 and a message, never a traceback."""
    probe = subprocess.run(
        [sys.executable, "-c", "from chexops.cli import cli, main; assert 'infra' in cli.commands"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip("the main CLI does not have the infra group wired in (chexops.cli.cli.add_command(infra))")
    env = {k: v for k, v in {**os.environ, **clouds_env}.items() if v is not None}
    env.pop("OS_CLOUD", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from chexops.cli import main; main(sys.argv[1:])",
            "infra",
            "lease",
            "status",
            "no-such-lease",
            "--cloud",
            "stub",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "No lease 'no-such-lease'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_no_clouds_yaml_anywhere(infra_cli, clouds_env):
    env = {**clouds_env, "OS_CLIENT_CONFIG_FILE": None}
    out = infra_cli(["lease", "status", "x", "--cloud", "stub"], env)
    if "No clouds.yaml found" not in out.stderr and out.exit_code == 2 and "is not in" in out.stderr:
        pytest.skip("this machine has a clouds.yaml in a standard place")
    assert out.exit_code == 2
    assert "No clouds.yaml found (searched " in out.stderr and "Application Credentials" in out.stderr
