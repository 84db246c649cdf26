"""What only a real cloud used to reveal, caught offline.

Terraform refuses a plan whose `for_each` (or `count`) depends on values known only after apply,
such as a floating IP's address ("Invalid for_each argument"). Two checks, on the real files:

- structural (python-hcl2): no `count`/`for_each` in any module reads a resource or data source,
  nor a variable or local that the root fills from another module's outputs or a resource;
- a `terraform plan` of the same configuration with every resource and data source turned into a
  provider-free `terraform_data` that keeps its meta-arguments (`count`, `for_each`, `depends_on`)
  and whose attributes are all unknown until apply, as a floating IP's address is. Terraform itself
  then evaluates every `count`/`for_each` expression, across module boundaries.
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

REPO = Path(__file__).resolve().parents[2]
TF = REPO / "terraform"
UUID_A = "c1fb5090-e046-42a5-8287-2aa380a8d31a"
UUID_B = "087bc740-6d2d-410b-9d47-c7b2b55a9d36"
_REF = re.compile(r"\b(?:data\.)?(openstack_[a-z0-9_]+)\.([a-z0-9_]+)((?:\[[^\]]*\])?)(?:\.[a-z0-9_]+(?:\[\d+\])?)*")
_BLOCK_START = re.compile(r'^(resource|data) "([a-z0-9_]+)" "([a-z0-9_]+)" \{$')
META_ARGS = ("count", "for_each", "depends_on")


def _load(path: Path) -> dict:
    with path.open() as handle:
        return hcl2.load(handle)


def _module_dirs() -> dict[str, Path]:
    """Module call name -> directory, from the root's `module` blocks."""
    calls = {}
    for path in TF.glob("*.tf"):
        for item in _load(path).get("module", []):
            for name, body in item.items():
                calls[name.strip('"')] = (TF / body["source"].strip('"')).resolve()
    return calls


def _refs(expr) -> set[str]:
    text = json.dumps(expr)
    found = {f"var.{m}" for m in re.findall(r"\bvar\.([a-z0-9_]+)", text)}
    found |= {f"local.{m}" for m in re.findall(r"\blocal\.([a-z0-9_]+)", text)}
    if re.search(r"\b(module\.|data\.|openstack_[a-z0-9_]+\.[a-z0-9_]+)", text):
        found.add("<apply-time value>")
    return found


def _tainted_locals(files: list[Path], tainted_vars: set[str]) -> set[str]:
    """Locals that depend on apply-time values (iterated to a fixed point)."""
    local_exprs = {}
    for path in files:
        for block in _load(path).get("locals", []):
            local_exprs.update(block)
    tainted = {f"var.{v}" for v in tainted_vars} | {"<apply-time value>"}
    changed = True
    while changed:
        changed = False
        for name, expr in local_exprs.items():
            key = f"local.{name}"
            if key not in tainted and _refs(expr) & tainted:
                tainted.add(key)
                changed = True
    return tainted


def _meta_exprs(body: dict, where: str):
    """(where, expression) of count/for_each on a resource and its dynamic blocks."""
    for arg in ("count", "for_each"):
        if arg in body:
            yield f"{where}.{arg}", body[arg]
    for dyn in body.get("dynamic", []) or []:
        for name, inner in dyn.items():
            if "for_each" in inner:
                yield f"{where}.dynamic.{name}.for_each", inner["for_each"]


def test_no_count_or_for_each_depends_on_apply_time_values():
    root_files = sorted(TF.glob("*.tf"))
    root_tainted = _tainted_locals(root_files, set())
    problems = []
    checked = 0
    calls = _module_dirs()
    # The root's own resources and module calls.
    for path in root_files:
        data = _load(path)
        for item in data.get("resource", []) + data.get("module", []):
            for name, body in item.items():
                if "count" in body or "for_each" in body:
                    for where, expr in _meta_exprs(body, name.strip('"')):
                        checked += 1
                        if _refs(expr) & root_tainted:
                            problems.append(f"terraform/{path.name}: {where} = {expr}")
    # Each module, with the variables the root fills from apply-time values.
    for call, directory in calls.items():
        body = next(b[f'"{call}"'] for p in root_files for b in _load(p).get("module", []) if f'"{call}"' in b)
        tainted_vars = {
            arg
            for arg, expr in body.items()
            if arg not in ("source", "providers", "count", "for_each", "depends_on") and _refs(expr) & root_tainted
        }
        files = sorted(directory.glob("*.tf"))
        tainted = _tainted_locals(files, tainted_vars)
        for path in files:
            for item in _load(path).get("resource", []):
                for rtype, named in item.items():
                    for rname, rbody in named.items():
                        for where, expr in _meta_exprs(rbody, f"{rtype.strip(chr(34))}.{rname.strip(chr(34))}"):
                            checked += 1
                            if _refs(expr) & tainted:
                                problems.append(f"{path.relative_to(REPO)}: {where} = {expr}")
    assert checked >= 5
    assert not problems, (
        "count/for_each over values known only after apply (Terraform: 'Invalid for_each argument'):\n"
        + "\n".join(problems)
    )


# ---------------------------------------------------------------------------------------------
# The same configuration, planned by Terraform with terraform_data stand-ins
# ---------------------------------------------------------------------------------------------


def _stand_in(text: str) -> str:
    """A module's .tf text with each resource/data block reduced to a terraform_data that keeps
    its meta-arguments, and every reference to a resource attribute made an apply-time value."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = _BLOCK_START.match(lines[i])
        if not match:
            out.append(lines[i])
            i += 1
            continue
        kind, rtype, rname = match.groups()
        end = lines.index("}", i)
        body = lines[i + 1 : end]
        out.append(f'resource "terraform_data" "{rtype}__{rname}" {{')
        j = 0
        while j < len(body):
            line = body[j]
            if re.match(rf"^  ({'|'.join(META_ARGS)})\s*=", line):
                expr = [line]
                depth = (
                    line.count("[")
                    + line.count("(")
                    + line.count("{")
                    - line.count("]")
                    - line.count(")")
                    - line.count("}")
                )
                while depth > 0:
                    j += 1
                    expr.append(body[j])
                    depth += body[j].count("[") + body[j].count("(") + body[j].count("{")
                    depth -= body[j].count("]") + body[j].count(")") + body[j].count("}")
                out.extend(expr)
            j += 1
        out.append("}")
        i = end + 1
    converted = "\n".join(out) + "\n"
    return _REF.sub(lambda m: f"terraform_data.{m.group(1)}__{m.group(2)}{m.group(3)}.id", converted)


def _fix_depends_on(text: str) -> str:
    # depends_on takes whole objects: `terraform_data.x.id` -> `terraform_data.x`.
    return re.sub(r"(depends_on\s*=\s*\[[^\]]*\])", lambda m: m.group(1).replace(".id", ""), text)


def _outputs_unknown(text: str) -> str:
    """Every output of a module becomes an apply-time value of no particular type."""
    names = re.findall(r'^output "([a-z0-9_]+)" \{$', text, re.M)
    return "".join(f'output "{n}" {{\n  value = terraform_data.apply_time.output\n}}\n' for n in names)


def _build_stand_in(work: Path) -> None:
    shutil.copytree(TF, work, ignore=shutil.ignore_patterns(".terraform*", "*.tfstate*", "*.tfvars*", "tfplan"))
    (work / "providers.tf").unlink()
    for versions in work.rglob("versions.tf"):
        versions.write_text('terraform {\n  required_version = ">= 1.9.0"\n}\n')
    (work / "outputs.tf").write_text("")
    for moved in work.rglob("moved.tf"):  # `moved` blocks name the real resources, which the stand-in renames
        moved.unlink()
    main = (work / "main.tf").read_text()
    (work / "main.tf").write_text(re.sub(r"\n  providers = \{\n(?:    .*\n)*?  \}\n", "\n", main))
    for module in (work / "modules").iterdir():
        for path in module.glob("*.tf"):
            if path.name == "outputs.tf":
                path.write_text(_outputs_unknown(path.read_text()))
            elif path.name == "main.tf":
                path.write_text(_fix_depends_on(_stand_in(path.read_text())))
        # An apply-time value (input = an id unknown until apply), shared by the outputs.
        (module / "stand_in.tf").write_text(
            'resource "terraform_data" "seed" {}\n\n'
            'resource "terraform_data" "apply_time" {\n  input = terraform_data.seed.id\n}\n'
        )


@pytest.fixture(scope="module")
def stand_in_plan(tmp_path_factory):
    if shutil.which("terraform") is None:
        pytest.skip("terraform is not on PATH: the stand-in configuration is not planned")
    work = tmp_path_factory.mktemp("tf-stand-in") / "terraform"
    _build_stand_in(work)
    env = {**os.environ, "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1", "TF_DATA_DIR": str(work / ".terraform")}
    proc = subprocess.run(
        ["terraform", "init", "-backend=false", "-input=false", "-no-color"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

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
            timeout=300,
        )

    return work, plan


def test_stand_in_keeps_every_resource_and_its_meta_arguments(stand_in_plan):
    work, _plan = stand_in_plan
    real = sum(
        1 for p in (TF / "modules").rglob("main.tf") for line in p.read_text().splitlines() if _BLOCK_START.match(line)
    )
    standin = sum(
        len(re.findall(r'^resource "terraform_data" "openstack_', p.read_text(), re.M))
        for p in (work / "modules").rglob("main.tf")
    )
    assert real > 10 and standin == real
    text = "\n".join(p.read_text() for p in (work / "modules").rglob("main.tf"))
    assert "for_each" in text and "count" in text and "depends_on" in text
    assert "openstack_networking_floatingip_v2.gpu.address" not in text


@pytest.mark.parametrize("gpu_enabled", [True, False], ids=["with-gpu", "cpu-only"])
def test_first_plan_succeeds(stand_in_plan, gpu_enabled):
    _work, plan = stand_in_plan
    overrides = {"gpu_enabled": gpu_enabled} | ({} if gpu_enabled else {"gpu_reservation_id": ""})
    proc = plan(**overrides)
    output = proc.stdout + proc.stderr
    assert "Invalid for_each argument" not in output and "Invalid count argument" not in output, output[-3000:]
    assert proc.returncode == 0, output[-3000:]
    assert "Plan:" in proc.stdout


@pytest.mark.parametrize("role", ["kvm", "gpu"])
def test_reserved_floating_ip_replaces_the_pool_allocation(stand_in_plan, role):
    """With `<role>_floating_ips` (a Blazar floating-IP reservation) no address is allocated from the pool; the
    reserved one is used (looked up for node1, whose association needs its id). Without it, as before."""
    _work, plan = stand_in_plan
    resource = {"kvm": "module.network", "gpu": "module.gpu_node[0]"}[role]
    name = {"kvm": "edge", "gpu": "gpu"}[role]
    allocated = f"{resource}.terraform_data.openstack_networking_floatingip_v2__{name}[0] will be created"
    plain = plan()
    assert plain.returncode == 0, (plain.stdout + plain.stderr)[-3000:]
    assert allocated in plain.stdout
    reserved = plan(**{f"{role}_floating_ips": ["129.114.108.23"]})
    assert reserved.returncode == 0, (reserved.stdout + reserved.stderr)[-3000:]
    assert allocated not in reserved.stdout
    if role == "kvm":
        assert "openstack_networking_floatingip_v2__edge_reserved[0]" in reserved.stdout
    bad = plan(**{f"{role}_floating_ips": ["not-an-ip"]})
    assert bad.returncode != 0 and f"{role}_floating_ips must be a list" in bad.stdout + bad.stderr


def test_the_api_follows_the_ssh_networks_unless_set(stand_in_plan):
    """k8s_api_allowed_cidrs unset: node1's 6443 rule opens to ssh_allowed_cidrs (the docs' kubectl check works
    from where the operator SSHes); an explicit [] opens it to nobody; a list is used as given."""
    _work, plan = stand_in_plan
    rule = 'module.network.terraform_data.openstack_networking_secgroup_rule_v2__edge_k8s_api["{}"] will be created'
    unset = plan()
    assert unset.returncode == 0, (unset.stdout + unset.stderr)[-3000:]
    assert rule.format("198.51.100.0/24") in unset.stdout
    closed = plan(k8s_api_allowed_cidrs=[])
    assert closed.returncode == 0 and "edge_k8s_api" not in closed.stdout
    given = plan(k8s_api_allowed_cidrs=["192.0.2.0/24"])
    assert rule.format("192.0.2.0/24") in given.stdout and rule.format("198.51.100.0/24") not in given.stdout
