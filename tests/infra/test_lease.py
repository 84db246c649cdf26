"""`chexops infra lease ...` against a local Keystone + Blazar + Nova stub (conftest.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from chexops.infra import lease as lease_mod

REPO = Path(__file__).resolve().parents[2]


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
        (
            ["lease", "create", "chexops-x", "--role", "gpu", "--cloud", "stub", "--duration", "8d"],
            "bare-metal leases last at most 7 days",
        ),
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


# ------------------------------------------------------------------------------------------------
# An Unrestricted application credential (Blazar makes a Keystone trust with it)
# ------------------------------------------------------------------------------------------------


def _blazar_requests(stub):
    return [(m, p) for m, p, _ in stub.requests if p.startswith("/blazar/")]


def test_create_refuses_a_restricted_credential_before_blazar(infra_cli, clouds_env, openstack_stub, tmp_path):
    out = infra_cli(
        ["lease", "create", "--role", "gpu", "--cloud", "stub_restricted", "--tfvars", str(_tfvars(tmp_path))],
        clouds_env,
    )
    assert out.exit_code == 2, out.stderr
    assert "application credential 'chexops-operator' of cloud 'stub_restricted' is restricted" in out.stderr
    assert "*Unrestricted* ticked" in out.stderr and "Traceback" not in out.stderr
    assert _blazar_requests(openstack_stub) == []  # (Blazar itself would answer HTTP 500)
    assert not _tfvars(tmp_path).exists()


# ------------------------------------------------------------------------------------------------
# Names and ownership in a shared project: <name_prefix>-<role>, and only leases the caller created
# ------------------------------------------------------------------------------------------------


def test_leases_are_named_after_the_prefix_and_the_role(infra_cli, clouds_env, openstack_stub, tmp_path):
    default = _create(infra_cli, clouds_env, tmp_path, "--role", "gpu")
    assert default.exit_code == 0, default.stderr
    assert default.json()["lease"]["name"] == "chexops-gpu"
    mine = _create(infra_cli, clouds_env, tmp_path, "--role", "kvm", "--name-prefix", "chexops-abc123")
    assert mine.exit_code == 0, mine.stderr
    assert mine.json()["lease"]["name"] == "chexops-abc123-kvm"
    posts = sum(1 for m, p in _blazar_requests(openstack_stub) if m == "POST")
    for name in ("gpu-lease", "chexops", "chexopsgpu"):
        refused = _create(infra_cli, clouds_env, tmp_path, name, "--role", "gpu")
        assert refused.exit_code == 2, refused.stderr
        assert f"Lease name '{name}' does not start with the name prefix 'chexops-'" in refused.stderr
    assert sum(1 for m, p in _blazar_requests(openstack_stub) if m == "POST") == posts
    bad = _create(infra_cli, clouds_env, tmp_path, "--role", "gpu", "--name-prefix", "Chexops_")
    assert bad.exit_code == 2 and "Name prefix 'Chexops_'" in bad.stderr


def test_the_prefix_defaults_to_terraforms_name_prefix(infra_cli, clouds_env, openstack_stub, tmp_path):
    pytest.importorskip("hcl2", reason="python-hcl2 is not installed (pip install -e '.[infra]')")
    tf_dir = tmp_path / "terraform"
    repo_tf = REPO / "terraform"
    shutil.copytree(repo_tf, tf_dir, ignore=shutil.ignore_patterns(".terraform*", "*.tfstate*", "*.tfvars*"))
    (tf_dir / "terraform.tfvars").write_text('name_prefix = "chexops-netid7"\n')
    env = {**clouds_env, "CHEXOPS_NAME_PREFIX": None}
    out = _create(infra_cli, env, tmp_path, "--role", "kvm", "--tf-dir", str(tf_dir))
    assert out.exit_code == 0, out.stderr
    assert out.json()["lease"]["name"] == "chexops-netid7-kvm"
    missing = _create(infra_cli, env, tmp_path, "--role", "kvm", "--tf-dir", str(tmp_path / "nowhere"))
    assert missing.exit_code == 2 and "Pass --name-prefix" in missing.stderr


def test_a_colleagues_lease_of_the_same_name_is_never_touched(infra_cli, clouds_env, openstack_stub, tmp_path):
    theirs = infra_cli(
        [
            "lease",
            "create",
            "--role",
            "gpu",
            "--cloud",
            "stub_colleague",
            "--poll",
            "0.01",
            "--tfvars",
            str(tmp_path / "theirs.json"),
            "--json",
        ],
        clouds_env,
    )
    assert theirs.exit_code == 0, theirs.stderr
    lease = theirs.json()["lease"]
    assert lease["name"] == "chexops-gpu"  # the same default name: a colleague who kept the default prefix
    assert openstack_stub.leases[lease["id"]]["user_id"] == openstack_stub.colleague_user_id
    reuse = _create(infra_cli, clouds_env, tmp_path, "--role", "gpu")
    assert reuse.exit_code == 2, reuse.stderr
    assert "Refusing to reuse lease 'chexops-gpu'" in reuse.stderr and "another user of the project" in reuse.stderr
    assert not _tfvars(tmp_path).exists()  # the colleague's reservation never reaches our tfvars
    for args, action in ((["extend", "chexops-gpu", "--by", "1d"], "extend"), (["delete", lease["id"]], "delete")):
        out = infra_cli(
            ["lease", *args, "--cloud", "stub", "--tfvars", str(_tfvars(tmp_path))]
            if action == "delete"
            else ["lease", *args, "--cloud", "stub"],
            clouds_env,
        )
        assert out.exit_code == 2, out.stderr
        assert f"Refusing to {action} lease 'chexops-gpu'" in out.stderr
    assert [m for m, _ in _blazar_requests(openstack_stub) if m in ("PUT", "DELETE")] == []
    assert lease["id"] in openstack_stub.leases
    listed = infra_cli(["lease", "status", "--cloud", "stub", "--json"], clouds_env)
    assert listed.exit_code == 0 and listed.json()["leases"] == []


def test_a_lease_of_ours_without_our_prefix_is_refused(infra_cli, clouds_env, openstack_stub, tmp_path):
    made = _create(infra_cli, clouds_env, tmp_path, "--role", "gpu", "--name-prefix", "other-team")
    assert made.exit_code == 0, made.stderr
    out = infra_cli(["lease", "delete", "other-team-gpu", "--cloud", "stub"], clouds_env)
    assert out.exit_code == 2
    assert "its name does not start with your name prefix 'chexops-'" in out.stderr
    assert len(openstack_stub.leases) == 1


# ------------------------------------------------------------------------------------------------
# Lengths: the 7-day cap is bare metal's (CHI), not KVM's
# ------------------------------------------------------------------------------------------------


def test_kvm_flavor_leases_may_last_longer_than_a_week(infra_cli, clouds_env, openstack_stub, tmp_path):
    out = _create(infra_cli, clouds_env, tmp_path, "--role", "kvm", "--duration", "60d")
    assert out.exit_code == 0, out.stderr
    posted = next(b for m, p, b in openstack_stub.requests if m == "POST" and p == "/blazar/v1/leases")
    end = datetime.strptime(posted["end_date"], "%Y-%m-%d %H:%M")
    assert abs((end - datetime.now(timezone.utc).replace(tzinfo=None)) - timedelta(days=60)) < timedelta(minutes=2)
    gpu = _create(infra_cli, clouds_env, tmp_path, "--role", "gpu", "--duration", "7d1h")
    assert gpu.exit_code == 2 and "bare-metal leases last at most 7 days" in gpu.stderr


# ------------------------------------------------------------------------------------------------
# Expiry: what ends when, the allocation it uses, and the metric the alerts read
# ------------------------------------------------------------------------------------------------


def test_create_estimates_the_allocation(infra_cli, clouds_env, openstack_stub, tmp_path, caplog):
    caplog.set_level("INFO", logger="chexops")
    out = _create(infra_cli, clouds_env, tmp_path, "--role", "kvm", "--count", "3", "--duration", "1d12h")
    assert out.exit_code == 0, out.stderr
    assert out.json()["su_estimate"] == 108.0
    assert "will consume about 108.0 SU (3 node(s) x 36.0 h" in caplog.text
    assert "check Chameleon's current rates" in caplog.text


def test_status_lists_our_leases_soonest_end_first(infra_cli, clouds_env, openstack_stub, tmp_path):
    assert _create(infra_cli, clouds_env, tmp_path, "--role", "gpu", "--duration", "2d").exit_code == 0
    assert _create(infra_cli, clouds_env, tmp_path, "--role", "kvm", "--count", "3", "--duration", "12h").exit_code == 0
    colleague = infra_cli(
        [
            "lease",
            "create",
            "--role",
            "kvm",
            "--cloud",
            "stub_colleague",
            "--name-prefix",
            "chexops-bob",
            "--duration",
            "1h",
            "--tfvars",
            str(tmp_path / "bob.json"),
        ],
        clouds_env,
    )
    assert colleague.exit_code == 0, colleague.stderr
    out = infra_cli(["lease", "status", "--cloud", "stub", "--json"], clouds_env)
    assert out.exit_code == 0, out.stderr
    rows = out.json()["leases"]
    assert [r["name"] for r in rows] == ["chexops-kvm", "chexops-gpu"]
    kvm, gpu = rows
    assert abs(kvm["hours_left"] - 12) <= 0.1 and abs(gpu["hours_left"] - 48) <= 0.1
    assert (kvm["nodes"], gpu["nodes"]) == (3, 1)
    assert abs(kvm["su_left"] - 36) <= 0.5 and gpu["su_total"] == 48.0
    human = infra_cli(["lease", "status", "--cloud", "stub"], clouds_env)
    first, second = human.stdout.splitlines()
    assert first.startswith("chexops-kvm") and "h left" in first and "SU left of 36.0" in first
    assert second.startswith("chexops-gpu")


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian prometheus) is not installed: tests/install-tools.sh")
def test_lease_ends_reach_prometheus_and_the_alerts_fire(infra_cli, clouds_env, openstack_stub, tmp_path):
    """The generated rule file, loaded with the repository's alerts by promtool: the GPU lease
    (ending at 50 h, Unix time) is soon at 3 h and today at 45 h; the KVM lease (ending at 200 h) neither."""
    gpu = _create(infra_cli, clouds_env, tmp_path, "--role", "gpu").json()["lease"]
    kvm = _create(infra_cli, clouds_env, tmp_path, "--role", "kvm").json()["lease"]
    for lease, hours in ((gpu, 50), (kvm, 200)):
        end = datetime(1970, 1, 1) + timedelta(hours=hours)
        openstack_stub.leases[lease["id"]].update(
            start_date="1970-01-01T00:00:00.000000", end_date=end.strftime("%Y-%m-%dT%H:%M:%S.000000")
        )
    rules, textfile = tmp_path / "lease-ends.yaml", tmp_path / "leases.prom"
    out = infra_cli(
        ["lease", "status", "--cloud", "stub", "--rules", str(rules), "--textfile", str(textfile)], clouds_env
    )
    assert out.exit_code == 0, out.stderr
    check = subprocess.run([PROMTOOL, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and "2 rules found" in check.stdout, check.stdout + check.stderr
    metrics = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=textfile.read_text(), capture_output=True, text=True, timeout=60
    )
    assert metrics.returncode == 0, metrics.stdout + metrics.stderr
    assert f'lease="chexops-gpu",lease_id="{gpu["id"]}",cloud="stub"}} 180000' in textfile.read_text()
    gpu_labels = {"lease": "chexops-gpu", "lease_id": gpu["id"], "cloud": "stub"}
    alerts = REPO / "k8s" / "monitoring" / "rules" / "leases.yaml"

    runbook = "docs/operations.md#a-lease-is-ending"
    soon = {
        "summary": "Lease chexops-gpu on stub ends in 1d 23h 0m 0s",
        "description": "Extend it (chexops infra lease extend chexops-gpu --cloud stub --by 1d) and regenerate "
        "lease-ends.yaml, or plan the rebuild after it ends.",
        "runbook": runbook,
    }
    today = {"summary": "Lease chexops-gpu on stub ends in 5h 0m 0s: its instances go with it", "runbook": runbook}

    def case(name, at, severity=None, annotations=None):
        fired = [{"exp_labels": {**gpu_labels, "severity": severity}, "exp_annotations": annotations}]
        return {"alertname": name, "eval_time": at, "exp_alerts": fired if severity else []}

    unit = {
        "rule_files": [str(rules), str(alerts)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1h",
                "input_series": [],
                "promql_expr_test": [
                    {
                        "expr": "chexops_lease_end_timestamp_seconds",
                        "eval_time": "1h",
                        "exp_samples": [
                            {
                                "labels": 'chexops_lease_end_timestamp_seconds{lease="chexops-gpu",lease_id="%s",'
                                'cloud="stub"}' % gpu["id"],
                                "value": 180000,
                            },
                            {
                                "labels": 'chexops_lease_end_timestamp_seconds{lease="chexops-kvm",lease_id="%s",'
                                'cloud="stub"}' % kvm["id"],
                                "value": 720000,
                            },
                        ],
                    }
                ],
                "alert_rule_test": [
                    case("ChexopsLeaseEndingSoon", "1h"),
                    case("ChexopsLeaseEndingSoon", "3h", "ticket", soon),
                    case("ChexopsLeaseEndsToday", "3h"),
                    case("ChexopsLeaseEndsToday", "45h", "page", today),
                    case("ChexopsLeaseEndsToday", "51h"),
                ],
            }
        ],
    }
    test_file = tmp_path / "lease-ends.test.yaml"
    test_file.write_text(json.dumps(unit))
    done = subprocess.run([PROMTOOL, "test", "rules", str(test_file)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr
