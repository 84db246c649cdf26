"""`chexops infra lease create --floating-ips N`: a Blazar virtual:floatingip reservation beside the nodes', and
the reserved addresses (Neutron tag `reservation:<id>`) in the tfvars Terraform reads (conftest.py's stub)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chexops.infra import lease as lease_mod

hcl2 = pytest.importorskip("hcl2", reason="python-hcl2 is not installed (bash tests/infra/install-tools.sh)")

REPO = Path(__file__).resolve().parents[2]
PUBLIC_NETWORK_ID = "a1f0c7e2-3b4d-4c5e-8f9a-0b1c2d3e4f50"  # fixtures/neutron_networks.json


def _create(infra_cli, env, tfvars, *extra):
    return infra_cli(
        ["lease", "create", *extra, "--cloud", "stub", "--poll", "0.01", "--tfvars", str(tfvars), "--json"], env
    )


def _posted(stub):
    return [body for method, path, body in stub.requests if method == "POST" and path == "/blazar/v1/leases"]


@pytest.mark.parametrize("role", ["kvm", "gpu"])
def test_floating_ips_are_reserved_and_written_to_tfvars(infra_cli, clouds_env, openstack_stub, tmp_path, role):
    tfvars = tmp_path / "reservations.auto.tfvars.json"
    openstack_stub.activate_after = 2
    out = _create(infra_cli, clouds_env, tfvars, "--role", role, "--floating-ips", "2")
    assert out.exit_code == 0, out.stderr
    (body,) = _posted(openstack_stub)
    assert body["reservations"][1] == {
        "resource_type": "virtual:floatingip",
        "network_id": PUBLIC_NETWORK_ID,
        "amount": 2,
    }
    assert len(body["reservations"]) == 2
    payload = out.json()
    fip = next(r for r in payload["lease"]["reservations"] if r["resource_type"] == "virtual:floatingip")
    tagged = sorted(
        ip["floating_ip_address"] for ip in openstack_stub.floatingips if f"reservation:{fip['id']}" in ip["tags"]
    )
    assert len(tagged) == 2 and payload["floating_ips"] == tagged
    written = json.loads(tfvars.read_text())
    key = f"{role}_floating_ips"
    assert written[key] == tagged
    assert written[lease_mod.ROLES[role].tfvars_key] == payload["lease"]["reservations"][0]["id"]
    # Only the node reservation counts towards the allocation estimate.
    assert lease_mod.node_count(payload["lease"]) == (3 if role == "kvm" else 1)

    deleted = infra_cli(
        ["lease", "delete", payload["lease"]["name"], "--cloud", "stub", "--tfvars", str(tfvars)], clouds_env
    )
    assert deleted.exit_code == 0, deleted.stderr
    assert key not in json.loads(tfvars.read_text())


def test_without_floating_ips_nothing_changes(infra_cli, clouds_env, openstack_stub, tmp_path):
    tfvars = tmp_path / "reservations.auto.tfvars.json"
    out = _create(infra_cli, clouds_env, tfvars, "--role", "gpu")
    assert out.exit_code == 0, out.stderr
    assert [r["resource_type"] for r in _posted(openstack_stub)[0]["reservations"]] == ["physical:host"]
    assert "floating_ips" not in out.json() and "gpu_floating_ips" not in json.loads(tfvars.read_text())


def test_a_pending_lease_writes_its_addresses_on_the_next_run(infra_cli, clouds_env, openstack_stub, tmp_path, caplog):
    caplog.set_level("INFO", logger="chexops")
    tfvars = tmp_path / "reservations.auto.tfvars.json"
    openstack_stub.activate_after = 3
    first = _create(infra_cli, clouds_env, tfvars, "--role", "gpu", "--floating-ips", "1", "--no-wait")
    assert first.exit_code == 0, first.stderr
    assert "gpu_floating_ips" not in json.loads(tfvars.read_text())
    assert "run this command again once it is" in caplog.text
    openstack_stub.activate_after = 1
    second = _create(infra_cli, clouds_env, tfvars, "--role", "gpu", "--floating-ips", "1")
    assert second.exit_code == 0, second.stderr
    assert second.json()["created"] is False and len(_posted(openstack_stub)) == 1
    assert json.loads(tfvars.read_text())["gpu_floating_ips"] == second.json()["floating_ips"] != []


def test_missing_addresses_fail_clearly(infra_cli, clouds_env, openstack_stub, tmp_path, monkeypatch):
    """Blazar says ACTIVE but Neutron has not got the addresses (yet): exit 1 with what to do, no partial tfvars."""
    monkeypatch.setattr(openstack_stub, "add_reserved_floatingips", lambda res: None)
    tfvars = tmp_path / "reservations.auto.tfvars.json"
    out = _create(infra_cli, clouds_env, tfvars, "--role", "gpu", "--floating-ips", "1", "--timeout", "1")
    assert out.exit_code == 1
    assert "too few of its reserved floating IPs" in out.stderr and "Traceback" not in out.stderr
    assert "gpu_floating_ips" not in json.loads(tfvars.read_text())


def test_an_unknown_floating_ip_network_is_a_user_error(infra_cli, clouds_env, openstack_stub, tmp_path):
    tfvars = tmp_path / "reservations.auto.tfvars.json"
    out = _create(
        infra_cli, clouds_env, tfvars, "--role", "kvm", "--floating-ips", "1", "--floating-ip-network", "sharednet1"
    )
    assert out.exit_code == 2 and "is not external" in out.stderr
    assert _posted(openstack_stub) == []


def test_terraform_declares_the_keys_lease_writes():
    with (REPO / "terraform" / "variables.tf").open() as handle:
        declared = {name.strip('"'): body for item in hcl2.load(handle)["variable"] for name, body in item.items()}
    for key in lease_mod.FLOATING_IP_TFVARS.values():
        assert key in declared and "list(string)" in json.dumps(declared[key]["type"]), key
        assert declared[key]["default"] == []
