"""`chexops infra preflight`: the look-ups openstacksdk makes before `terraform plan` (flavors,
images, networks, floating-IP pools, key pairs), against the local Keystone + Nova + Glance +
Neutron stub (conftest.py), with the settings read from a copy of this repository's terraform/."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("hcl2", reason="python-hcl2 is not installed (pip install -e '.[infra]')")

REPO = Path(__file__).resolve().parents[2]
KVM_RESERVATION = "c1fb5090-e046-42a5-8287-2aa380a8d31a"


@pytest.fixture()
def tf_dir(tmp_path, openstack_stub):
    """terraform/ as an operator has it after `lease create`: tfvars naming the stub's clouds, the
    reservation's flavor present on Nova (Blazar creates it with the reservation's id)."""
    work = tmp_path / "terraform"
    shutil.copytree(REPO / "terraform", work, ignore=shutil.ignore_patterns(".terraform*", "*.tfstate*", "*.tfvars*"))
    (work / "terraform.tfvars").write_text(
        'kvm_cloud = "stub"\nchi_cloud = "stub"\nkey_pair = "laptop"\nssh_allowed_cidrs = ["203.0.113.0/24"]\n'
    )
    (work / "reservations.auto.tfvars.json").write_text(json.dumps({"kvm_reservation_id": KVM_RESERVATION}))
    openstack_stub.flavors.append(
        {"id": KVM_RESERVATION, "name": f"reservation:{KVM_RESERVATION}", "vcpus": 4, "ram": 8192, "disk": 40}
    )
    openstack_stub.flavors.append({"id": "baremetal-id", "name": "baremetal", "vcpus": 1, "ram": 1, "disk": 1})
    return work


def _preflight(infra_cli, env, tf_dir, *extra):
    return infra_cli(["preflight", "--tf-dir", str(tf_dir), *extra], env)


def test_everything_found(infra_cli, clouds_env, openstack_stub, tf_dir):
    out = _preflight(infra_cli, clouds_env, tf_dir, "--json")
    assert out.exit_code == 0, out.stderr
    checks = out.json()["checks"]
    assert [(c["kind"], c["name"]) for c in checks] == [
        ("credential", "chexops-operator"),
        ("flavor", KVM_RESERVATION),
        ("image", "CC-Ubuntu24.04"),
        ("floating-IP pool", "public"),
        ("key pair", "laptop"),
        ("flavor", "baremetal"),
        ("image", "CC-Ubuntu24.04-CUDA"),
        ("network", "sharednet1"),
        ("floating-IP pool", "public"),
        ("key pair", "laptop"),
    ]
    assert all(c["ok"] for c in checks)
    # Through the SDK's compute, image and network proxies, each authenticated once per cloud.
    paths = {p for m, p, _ in openstack_stub.requests if m == "GET"}
    assert f"/nova/v2.1/flavors/{KVM_RESERVATION}" in paths
    assert (
        "/glance/v2/images" in paths and "/neutron/v2.0/networks" in paths and "/nova/v2.1/os-keypairs/laptop" in paths
    )
    assert sum(1 for m, p, _ in openstack_stub.requests if p == "/identity/v3/auth/tokens") == 1


def test_cpu_only_checks_one_cloud(infra_cli, clouds_env, tf_dir):
    (tf_dir / "gpu.auto.tfvars.json").write_text(json.dumps({"gpu_enabled": False}))
    out = _preflight(infra_cli, clouds_env, tf_dir)
    assert out.exit_code == 0, out.stderr
    assert "All 5 look-ups found" in out.stdout and "sharednet1" not in out.stdout


@pytest.mark.parametrize(
    ("tfvar", "value", "message"),
    [
        (
            "gpu_image_name",
            "CC-Ubuntu99",
            "gpu_image_name: Image 'CC-Ubuntu99' does not exist on cloud 'stub' (images: CC-Ubuntu24.04, "
            "CC-Ubuntu24.04-CUDA)",
        ),
        (
            "gpu_network_name",
            "sharednet9",
            "gpu_network_name: Network 'sharednet9' does not exist on cloud 'stub' (networks: public, sharednet1)",
        ),
        (
            "external_network_name",
            "sharednet1",
            "Network 'sharednet1' on cloud 'stub' is not external, so it is no floating-IP pool (pools: public)",
        ),
        (
            "external_network_name",
            "ext-net",
            "Floating-IP pool 'ext-net' does not exist on cloud 'stub' (pools: public)",
        ),
        ("key_pair", "desktop", "key_pair: Key pair 'desktop' does not exist on cloud 'stub' (key pairs: laptop)"),
        (
            "kvm_reservation_id",
            "087bc740-6d2d-410b-9d47-c7b2b55a9d36",
            "Flavor '087bc740-6d2d-410b-9d47-c7b2b55a9d36' does not exist on cloud 'stub' (flavors: baremetal, "
            "m1.large",
        ),
    ],
)
def test_a_missing_resource_is_named_before_terraform_runs(infra_cli, clouds_env, tf_dir, tfvar, value, message):
    (tf_dir / "zz.auto.tfvars.json").write_text(json.dumps({tfvar: value}))
    out = _preflight(infra_cli, clouds_env, tf_dir)
    assert out.exit_code == 2, (out.stdout, out.stderr)
    assert message in out.stderr
    assert "before `terraform plan`" in out.stderr and "Traceback" not in out.stderr


def test_every_missing_resource_is_reported_at_once(infra_cli, clouds_env, openstack_stub, tf_dir):
    openstack_stub.images = []
    out = _preflight(infra_cli, clouds_env, tf_dir)
    assert out.exit_code == 2
    assert "2 of 10 look-ups failed" in out.stderr
    assert (
        "kvm_image_name: Image 'CC-Ubuntu24.04'" in out.stderr
        and "gpu_image_name: Image 'CC-Ubuntu24.04-CUDA'" in out.stderr
    )


def test_no_reservation_yet(infra_cli, clouds_env, tf_dir):
    (tf_dir / "reservations.auto.tfvars.json").unlink()
    out = _preflight(infra_cli, clouds_env, tf_dir)
    assert (
        out.exit_code == 2
        and "kvm_reservation_id is not set (run `chexops infra lease create --role kvm`)" in out.stderr
    )


def test_expired_credentials(infra_cli, clouds_env, tf_dir):
    (tf_dir / "terraform.tfvars").write_text('kvm_cloud = "stub_expired"\nkey_pair = "laptop"\n')
    out = _preflight(infra_cli, clouds_env, tf_dir)
    assert out.exit_code == 2
    assert "rejected the credentials of cloud 'stub_expired'" in out.stderr and "Traceback" not in out.stderr


def test_not_a_terraform_dir(infra_cli, clouds_env, tmp_path):
    out = _preflight(infra_cli, clouds_env, tmp_path)
    assert out.exit_code == 2 and "variables.tf does not exist" in out.stderr


def test_a_restricted_application_credential_is_named(infra_cli, clouds_env, tf_dir):
    """Blazar answers HTTP 500 to a lease created with a restricted credential: say so before any lease."""
    (tf_dir / "zz.auto.tfvars.json").write_text(json.dumps({"chi_cloud": "stub_restricted"}))
    out = _preflight(infra_cli, clouds_env, tf_dir)
    assert out.exit_code == 2, (out.stdout, out.stderr)
    assert "1 of 11 look-ups failed" in out.stderr
    assert (
        "clouds.yaml (Unrestricted, for Blazar): The application credential 'chexops-operator' of cloud "
        "'stub_restricted' is restricted" in out.stderr
    )
    assert "*Unrestricted* ticked" in out.stderr


def test_reserved_floating_ips_must_still_be_in_the_project(infra_cli, clouds_env, openstack_stub, tf_dir):
    """`<role>_floating_ips` (a floating-IP reservation's addresses) are looked up: once the reservation has ended
    they are gone, and the plan's data source would fail."""
    openstack_stub.add_reserved_floatingips({"id": "r1", "amount": 1, "network_id": "public-id"})
    held = openstack_stub.floatingips[0]["floating_ip_address"]
    tfvars = tf_dir / "reservations.auto.tfvars.json"
    tfvars.write_text(json.dumps({"kvm_reservation_id": KVM_RESERVATION, "kvm_floating_ips": [held]}))
    out = _preflight(infra_cli, clouds_env, tf_dir, "--json")
    assert out.exit_code == 0, out.stderr
    assert ("reserved floating IP", held, True) in [(c["kind"], c["name"], c["ok"]) for c in out.json()["checks"]]
    tfvars.write_text(json.dumps({"kvm_reservation_id": KVM_RESERVATION, "gpu_floating_ips": ["129.114.108.99"]}))
    gone = _preflight(infra_cli, clouds_env, tf_dir)
    assert gone.exit_code == 2
    assert "gpu_floating_ips: Floating IP 129.114.108.99 is not in the project on cloud 'stub'" in gone.stderr
