"""terraform/ checked offline: formatting, structure of the parsed HCL (python-hcl2), the
variables' validation rules (evaluated by Terraform itself on a provider-free copy), and checkov.

`terraform validate`/`plan` of the real configuration need the OpenStack provider, which
`terraform init` cannot download here (no access to the Terraform registry): they are not run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

hcl2 = pytest.importorskip("hcl2", reason="python-hcl2 is not installed (bash tests/infra/install-tools.sh)")

from chexops.infra.inventory import OPTIONAL_OUTPUTS, REQUIRED_OUTPUTS  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TF = REPO / "terraform"
MODULES = sorted(p for p in (TF / "modules").iterdir() if p.is_dir())
TF_FILES = sorted(TF.rglob("*.tf"))
UUID_A = "c1fb5090-e046-42a5-8287-2aa380a8d31a"
UUID_B = "087bc740-6d2d-410b-9d47-c7b2b55a9d36"


def unq(value):
    """python-hcl2 keeps the quotes of string literals: '"tcp"' -> 'tcp'."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def parse(path: Path) -> dict:
    with path.open() as handle:
        return hcl2.load(handle)


def blocks(kind: str):
    """(file, name, body) for every `kind` block (variable, output, ...) in terraform/."""
    for path in TF_FILES:
        for item in parse(path).get(kind, []):
            for name, body in item.items():
                yield path, unq(name), body


def resources(rtype: str | None = None):
    """(file, type, name, body) for every resource (of one type)."""
    for path in TF_FILES:
        for item in parse(path).get("resource", []):
            for typ, named in item.items():
                for name, body in named.items():
                    if rtype is None or unq(typ) == rtype:
                        yield path, unq(typ), unq(name), body


def test_terraform_fmt():
    if shutil.which("terraform") is None:
        pytest.skip("terraform is not on PATH: `terraform fmt -check` not run (install Terraform >= 1.9)")
    proc = subprocess.run(
        ["terraform", "fmt", "-check", "-recursive", "-diff", str(TF)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, f"terraform fmt would change:\n{proc.stdout}"


def test_every_file_parses_and_layout_is_conventional():
    assert TF_FILES
    for path in TF_FILES:
        parse(path)
    for root in [TF, *MODULES]:
        for name in ("main.tf", "variables.tf", "outputs.tf", "versions.tf"):
            assert (root / name).is_file(), f"{root.relative_to(REPO)} lacks {name}"


def test_provider_pinned_everywhere():
    for root in [TF, *MODULES]:
        terraform = parse(root / "versions.tf")["terraform"][0]
        # The root needs 1.11 (the S3 backend's use_lockfile); the modules only 1.9.
        assert unq(terraform["required_version"]).startswith(">= 1.11" if root == TF else ">= 1.9")
        openstack = terraform["required_providers"][0]["openstack"]
        assert unq(openstack["source"]) == "terraform-provider-openstack/openstack"
        assert re.fullmatch(r"(~>|=)\s*\d+\.\d+\.\d+", unq(openstack["version"])), openstack["version"]


def test_providers_use_clouds_yaml_and_hold_no_credential():
    providers = parse(TF / "providers.tf")["provider"]
    assert len(providers) == 2
    for item in providers:
        body = item['"openstack"']
        assert body["cloud"].startswith("${var."), "providers must name a clouds.yaml entry"
        forbidden = {"password", "token", "application_credential_secret", "application_credential_id", "user_name"}
        assert not forbidden & set(body), f"credential in provider block: {forbidden & set(body)}"
    text = "\n".join(p.read_text() for p in TF_FILES)
    assert not re.search(r"(password|secret)\s*=\s*\"[^\"$]", text, re.I)


def test_every_variable_is_typed_described_and_validated():
    found = 0
    for path, name, body in blocks("variable"):
        found += 1
        where = f"{path.relative_to(REPO)}: variable {name}"
        assert body.get("type"), f"{where} has no type"
        assert len(unq(body.get("description", ""))) >= 10, f"{where} has no description"
        if body["type"] != "bool":
            assert body.get("validation"), f"{where} has no validation block"
            for rule in body["validation"]:
                assert len(unq(rule["error_message"])) > 10, f"{where}: validation without a message"
    assert found > 40


def test_every_output_is_described():
    for path, name, body in blocks("output"):
        assert len(unq(body.get("description", ""))) >= 10, (
            f"{path.relative_to(REPO)}: output {name} has no description"
        )


def test_outputs_the_inventory_needs_exist():
    root_outputs = {name for path, name, _ in blocks("output") if path.parent == TF}
    missing = (set(REQUIRED_OUTPUTS) | set(OPTIONAL_OUTPUTS)) - root_outputs
    assert not missing, f"terraform/outputs.tf lacks outputs chexops infra inventory reads: {missing}"
    nodes = next(body for path, name, body in blocks("output") if path.parent == TF and name == "nodes")
    text = json.dumps(nodes)
    for field in ("private_ip", "public_ip", "groups", "site", "gpu"):
        assert field in text
    for group in ("k3s_server", "k3s_agent", "storage", "gpu", "kvm"):
        assert f'\\"{group}\\"' in text, f"no node is put in group {group}"


def test_every_gpu_instance_carries_a_reservation_hint():
    instances = list(resources("openstack_compute_instance_v2"))
    assert instances
    gpu = [
        (p, n, b)
        for p, _, n, b in instances
        if unq(b.get("flavor_name")) == "baremetal" or unq(b.get("metadata", {}).get("chexops_role")) == "gpu"
    ]
    assert gpu, "no GPU (bare-metal) instance found"
    for path, name, body in gpu:
        hints = body.get("scheduler_hints") or []
        reservation = [h["additional_properties"].get("reservation") for h in hints if "additional_properties" in h]
        assert reservation and "reservation" in str(reservation[0]), (
            f"{path.relative_to(REPO)}: {name} has no reservation scheduler hint"
        )
    # KVM instances boot the reserved flavor instead (its id is the reservation id).
    for path, _, name, body in instances:
        if (path, name, body) not in gpu:
            assert "reservation" in str(body.get("flavor_id")), f"{name} is not bound to a reservation"


def _ports(rule) -> set[int] | None:
    low, high = rule.get("port_range_min"), rule.get("port_range_max")
    if low is None and high is None:
        return None  # all ports
    if isinstance(low, int) and isinstance(high, int):
        return set(range(low, high + 1))
    return set()  # computed below


def test_no_security_group_rule_opens_ssh_to_the_internet():
    network = parse(TF / "modules" / "network" / "main.tf")
    locals_text = json.dumps(network.get("locals", []))
    checked = 0
    for path, _, name, rule in resources("openstack_networking_secgroup_rule_v2"):
        if unq(rule.get("direction")) != "ingress" or unq(rule.get("protocol")) == "icmp":
            continue
        checked += 1
        prefix = unq(rule.get("remote_ip_prefix"))
        ports = _ports(rule)
        where = f"{path.relative_to(REPO)}: {name}"
        if ports == set() and re.fullmatch(r"\$\{var\.[a-z_]+\}", str(rule["port_range_min"])):
            # A port from a variable: its validation (here and in the root) must keep it above 1023.
            var_name = rule["port_range_min"][6:-1]
            for vpath, vname, vbody in blocks("variable"):
                if vname == var_name and vpath.parent in (path.parent, TF):
                    assert ">= 1024" in json.dumps(vbody["validation"]), f"{where}: {var_name} may be 22"
            continue
        if ports == set():
            # Ports from a for_each local: it must enumerate literal ports, none of them 22.
            match = re.search(r"for port in \[([0-9, ]+)\]", locals_text)
            assert match and "each.value.port" in str(rule["port_range_min"]), f"{where}: ports not traceable"
            ports = {int(p) for p in match.group(1).split(",")}
            assert 22 not in ports, where
            continue
        if prefix is None:
            assert rule.get("remote_group_id"), f"{where}: ingress from anywhere on all ports"
            continue
        if ports is None or 22 in ports:
            assert prefix not in ("0.0.0.0/0", "::/0"), f"{where} opens SSH to the internet"
            if prefix == "${each.value}":
                # Sources come from a variable whose validation refuses /0 (proved in the next test).
                assert re.search(r"var\.(ssh_allowed_cidrs|peer_cidrs)", rule["for_each"]), where
    assert checked >= 8


@pytest.fixture(scope="module")
def variables_only(tmp_path_factory):
    """terraform/variables.tf alone (no provider needed), initialised, to let Terraform evaluate
    the validation rules with `terraform plan`."""
    if shutil.which("terraform") is None:
        pytest.skip("terraform is not on PATH: validation rules not evaluated")
    work = tmp_path_factory.mktemp("tf-variables")
    shutil.copy(TF / "variables.tf", work / "variables.tf")
    (work / "versions.tf").write_text('terraform {\n  required_version = ">= 1.9.0"\n}\n')
    env = {**os.environ, "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1", "TF_DATA_DIR": str(work / ".terraform")}
    proc = subprocess.run(
        ["terraform", "init", "-backend=false", "-input=false", "-no-color"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr

    def plan(**overrides):
        values = {
            "key_pair": "laptop",
            "kvm_reservation_id": UUID_A,
            "gpu_reservation_id": UUID_B,
            "ssh_allowed_cidrs": ["198.51.100.0/24"],
        }
        values.update(overrides)
        (work / "test.tfvars.json").write_text(json.dumps(values))
        return subprocess.run(
            ["terraform", "plan", "-input=false", "-no-color", "-lock=false", "-var-file=test.tfvars.json"],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )

    return plan


def test_valid_settings_pass_validation(variables_only):
    proc = variables_only()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = variables_only(gpu_enabled=False, gpu_reservation_id="")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"ssh_allowed_cidrs": ["0.0.0.0/0"]}, "must not open SSH to the whole internet"),
        ({"ssh_allowed_cidrs": []}, "non-empty list of IPv4 CIDRs"),
        ({"ssh_allowed_cidrs": ["10.0.0.1"]}, "non-empty list of IPv4 CIDRs"),
        ({"kvm_reservation_id": "m1.large"}, "kvm_reservation_id must be a reservation UUID"),
        ({"gpu_reservation_id": ""}, "gpu_reservation_id must be a reservation UUID when gpu_enabled"),
        ({"kvm_node_count": 0}, "kvm_node_count must be a whole number from 1 to 10"),
        ({"name_prefix": "Chexops_"}, "name_prefix must be"),
        ({"private_network_cidr": "192.168.50.0/29"}, "/27 or larger"),
        (
            {"volumes": {"a": {"size_gb": 10, "mount_point": "/etc/x", "purpose": "p"}}},
            "mount_point must be an absolute path",
        ),
        ({"volumes": {"a": {"size_gb": 0, "mount_point": "/mnt/a", "purpose": "p"}}}, "size_gb must be a whole number"),
        ({"k8s_api_allowed_cidrs": ["0.0.0.0/0"]}, "k8s_api_allowed_cidrs must be IPv4 CIDRs of /8 or longer"),
    ],
)
def test_invalid_settings_are_refused(variables_only, overrides, message):
    proc = variables_only(**overrides)
    assert proc.returncode != 0
    assert message in " ".join((proc.stdout + proc.stderr).split()), proc.stderr


def _checkov() -> Path:
    configured = os.environ.get("CHECKOV")
    candidates = [Path(configured)] if configured else []
    candidates += [REPO / ".venv-checkov" / "bin" / "checkov"]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    pytest.skip("checkov is not installed in .venv-checkov (bash tests/infra/install-tools.sh installs it)")


def test_checkov_is_clean_or_every_skip_is_justified():
    checkov = _checkov()
    proc = subprocess.run(
        [str(checkov), "-d", str(TF), "--framework", "terraform", "--skip-download", "--compact", "-o", "json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"},
    )
    report = json.loads(proc.stdout)
    reports = report if isinstance(report, list) else [report]
    for item in reports:
        summary = item["summary"]
        failed = [f"{c['check_id']} {c['resource']} ({c['file_path']})" for c in item["results"]["failed_checks"]]
        assert summary["failed"] == 0, "checkov findings:\n" + "\n".join(failed)
        assert summary["parsing_errors"] == 0
        assert summary["passed"] > 0
    # A skip must say why, where it is written: `# checkov:skip=CKV_X_1:reason`.
    for path in TF_FILES:
        for line in path.read_text().splitlines():
            if "checkov:skip" in line:
                assert re.search(r"checkov:skip=[A-Z0-9_]+:\s*\S.{10,}", line), f"{path}: unjustified skip: {line}"


def test_edge_floating_ip_association_waits_for_the_router_interface():
    associations = [(p, n, b) for p, _, n, b in resources("openstack_networking_floatingip_associate_v2")]
    edge = [(p, b) for p, n, b in associations if "edge" in str(b.get("floating_ip"))]
    assert len(edge) == 1, associations
    path, body = edge[0]
    depends = " ".join(body.get("depends_on") or [])
    assert "openstack_networking_router_interface_v2." in depends, (
        f"{path.relative_to(REPO)}: edge association does not wait for the router interface"
    )
    # ... and that interface connects the very subnet node1's port is on, to the router on the external network.
    interface = next(b for p, _, n, b in resources("openstack_networking_router_interface_v2") if p == path)
    assert "openstack_networking_subnet_v2.private" in interface["subnet_id"]


def test_volumes_are_protected_from_destroy():
    volumes = list(resources("openstack_blockstorage_volume_v3"))
    assert volumes
    for path, _, name, body in volumes:
        lifecycle = (body.get("lifecycle") or [{}])[0]
        assert lifecycle.get("prevent_destroy") is True, (
            f"{path.relative_to(REPO)}: volume {name} lacks prevent_destroy"
        )


def test_cross_site_rules_match_the_site_link_topology():
    """The GPU node is reachable from the internet only for SSH (operators) and the site link (from
    node1's floating IP); node1 accepts the link from the GPU node's address; the cluster trusts the
    link's CIDR; node1's port may forward it; the router sends node2..N's link traffic via node1."""
    gpu = {n: b for p, _, n, b in resources("openstack_networking_secgroup_rule_v2") if p.parent.name == "gpu_node"}
    assert set(gpu) == {"ssh", "site_link"}, gpu
    assert unq(gpu["site_link"]["remote_ip_prefix"]) == "${var.site_link_peer_ip}/32"
    assert unq(gpu["site_link"]["protocol"]) == "udp"
    net = {n: b for p, _, n, b in resources("openstack_networking_secgroup_rule_v2") if p.parent.name == "network"}
    assert unq(net["edge_site_link"]["remote_ip_prefix"]) == "${var.site_link_peer_ip}/32"
    assert net["edge_site_link"]["port_range_min"] == gpu["site_link"]["port_range_min"] == "${var.site_link_port}"
    assert net["cluster_from_site_link"]["remote_ip_prefix"] == "${var.site_link_cidr}"
    # Nothing cross-site goes over the internet any more: no API/kubelet rule from peers.
    assert all("peer" not in json.dumps(b) or n in ("edge_site_link",) for n, b in net.items())
    route = next(b for _, _, n, b in resources("openstack_networking_router_route_v2"))
    assert route["destination_cidr"] == "${var.site_link_cidr}" and route["next_hop"] == "${var.edge_private_ip}"
    port = next(b for p, _, n, b in resources("openstack_networking_port_v2") if p.parent.name == "kvm_cluster")
    assert "forwarded_cidrs" in json.dumps(port.get("dynamic"))
    main = parse(TF / "main.tf")
    network = main["module"][[list(m)[0] for m in main["module"]].index('"network"')]['"network"']
    kvm = main["module"][[list(m)[0] for m in main["module"]].index('"kvm_cluster"')]['"kvm_cluster"']
    assert network["site_link_cidr"] == "${var.site_link_cidr}" and "var.site_link_cidr" in kvm["forwarded_cidrs"]


def _minutes(text: str) -> float:
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?", text)
    assert match and any(match.groups()), f"not a Terraform duration: {text}"
    return int(match.group(1) or 0) * 60 + int(match.group(2) or 0)


def test_the_bare_metal_instance_waits_for_a_slow_deploy():
    """The provider's default (30 min) is shorter than a slow bare-metal deploy, which then ends as a
    tainted instance that the next apply destroys."""
    gpu = [
        (p, n, b)
        for p, _, n, b in resources("openstack_compute_instance_v2")
        if unq(b.get("flavor_name")) == "baremetal"
    ]
    assert gpu
    for path, name, body in gpu:
        timeouts = (body.get("timeouts") or [{}])[0]
        where = f"{path.relative_to(REPO)}: {name}"
        assert _minutes(unq(timeouts.get("create", ""))) >= 90, f"{where}: timeouts.create under 90m"
        assert _minutes(unq(timeouts.get("delete", ""))) >= 30, f"{where}: timeouts.delete under 30m"


def test_the_object_store_container_carries_the_name_prefix():
    """Operators sharing a project each get <name_prefix>-data, never one fixed container name."""
    containers = list(resources("openstack_objectstorage_container_v1"))
    assert containers
    for path, _, name, body in containers:
        assert unq(body["name"]).startswith("${var.name_prefix}-"), f"{path.relative_to(REPO)}: {name} is unprefixed"
    main = parse(TF / "main.tf")
    call = next(m['"object_store"'] for m in main["module"] if '"object_store"' in m)
    assert call["name_prefix"] == "${var.name_prefix}"
