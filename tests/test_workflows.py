"""workflows/: Argo WorkflowTemplates, CronWorkflow and Argo Events objects, validated offline.

Strict schemas of the deployed Argo versions (tests/schemas), every {{...}} reference resolves where it is used,
every chexops step parses with the real CLI, images pinned by digest, resources and non-root
security contexts on every container, and the pods Argo would make pass `kubernetes-validate --strict`.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import click
import pytest
import yaml

import schemas
from chexops.cli import cli
from chexops.pipelines.argo_expr import depends_tasks
from chexops.pipelines.runner import REFERENCE
from support import ROOT

WORKFLOWS = ROOT / "workflows"
FILES = sorted(p for p in WORKFLOWS.rglob("*.yaml") if p.name != "kustomization.yaml")
ARGO_KINDS = ("WorkflowTemplate", "Workflow", "CronWorkflow")
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
K8S_VERSION = "1.33"
# Stand-ins for values only known at run time (anything that parses as what the CLI expects).
RUNTIME_VALUES = {
    "image": "registry.platform.svc.cluster.local:5000/chexops-cxr:v1@sha256:" + "0" * 64,
    "analysis-phase": "Successful",
    "status": "Succeeded",
}


def documents() -> list[tuple[Path, dict]]:
    return [(path, doc) for path in FILES for doc in yaml.safe_load_all(path.read_text()) if doc]


def workflow_specs() -> list[tuple[str, dict]]:
    """(file:name, workflow spec) of every WorkflowTemplate and CronWorkflow."""
    specs = []
    for path, doc in documents():
        if doc["kind"] in ("WorkflowTemplate", "Workflow"):
            specs.append((f"{path.name}:{doc['metadata']['name']}", doc["spec"]))
        elif doc["kind"] == "CronWorkflow":
            specs.append((f"{path.name}:{doc['metadata']['name']}", doc["spec"]["workflowSpec"]))
    return specs


def templates_by_ref() -> dict[tuple[str, str], dict]:
    return {
        (doc["metadata"]["name"], t["name"]): t
        for _, doc in documents()
        if doc["kind"] == "WorkflowTemplate"
        for t in doc["spec"]["templates"]
    }


def strings(obj, path=""):
    if isinstance(obj, str):
        yield path, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from strings(value, f"{path}.{key}")
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from strings(value, f"{path}[{i}]")


def test_there_are_the_templates_the_pipeline_needs():
    kinds = {(doc["kind"], doc["metadata"]["name"]) for _, doc in documents()}
    for expected in [
        ("WorkflowTemplate", "chexops-train"),
        ("WorkflowTemplate", "chexops-deliver"),
        ("WorkflowTemplate", "chexops-pipeline"),
        ("CronWorkflow", "chexops-retrain"),
        ("EventSource", "github"),
        ("Sensor", "chexops-train-on-push"),
    ]:
        assert expected in kinds
    listed = set(yaml.safe_load((WORKFLOWS / "kustomization.yaml").read_text())["resources"])
    assert listed == {str(p.relative_to(WORKFLOWS)) for p in FILES}, "kustomization.yaml must list every manifest"


# --- schemas ---------------------------------------------------------------------------------------


def test_argo_objects_match_the_upstream_schemas():
    """Strict schemas of the deployed versions (tests/schemas: Workflows 3.7.0, Events 1.9.7)."""
    checked = 0
    for path, doc in documents():
        if not schemas.is_custom(doc):
            continue
        schemas.check(doc, path.name)
        checked += 1
    assert checked >= 6


def test_the_schemas_are_strict_enough_to_catch_a_typo():
    """A misspelt CronWorkflow or template key is refused, so the validation above can fail."""
    cron = next(doc for _, doc in documents() if doc["kind"] == "CronWorkflow")
    assert not schemas.errors(cron)
    typo = copy.deepcopy(cron)
    typo["spec"]["concurrencyPolicyy"] = "Forbid"
    assert any("concurrencyPolicyy" in e for e in schemas.errors(typo))
    template = copy.deepcopy(next(doc for _, doc in documents() if doc["kind"] == "WorkflowTemplate"))
    template["spec"]["templates"][0]["retryStrategyy"] = {}
    assert any("retryStrategyy" in e for e in schemas.errors(template))


def test_kubernetes_objects_pass_kubernetes_validate_strict():
    import kubernetes_validate

    plain = [(path, doc) for path, doc in documents() if not doc["apiVersion"].startswith("argoproj.io/")]
    assert {doc["kind"] for _, doc in plain} >= {"ServiceAccount", "Role", "RoleBinding", "PersistentVolumeClaim"}
    for _path, doc in plain:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


# --- references ------------------------------------------------------------------------------------


def _outputs(template: dict, kind: str) -> set[str]:
    return {p["name"] for p in (template.get("outputs") or {}).get(kind, [])}


def _task_target(task: dict, templates: dict, refs: dict) -> dict:
    if "templateRef" in task:
        key = (task["templateRef"]["name"], task["templateRef"]["template"])
        assert key in refs, f"templateRef {key} does not exist in workflows/"
        return refs[key]
    assert task["template"] in templates, f"template {task['template']} does not exist"
    return templates[task["template"]]


def reference_problems(specs: list[tuple[str, dict]], refs: dict) -> list[str]:
    problems = []
    for where, spec in specs:
        templates = {t["name"]: t for t in spec["templates"]}
        workflow_params = {p["name"] for p in spec.get("arguments", {}).get("parameters", [])}
        exit_templates = {spec.get("onExit")}
        for template in spec["templates"]:
            known = {f"workflow.parameters.{p}" for p in workflow_params} | {
                "workflow.name",
                "workflow.uid",
                "workflow.namespace",
            }
            known |= {f"inputs.parameters.{p['name']}" for p in (template.get("inputs") or {}).get("parameters", [])}
            if template["name"] in exit_templates:
                known |= {"workflow.status", "workflow.failures", "workflow.duration"}
            for task in (template.get("dag") or {}).get("tasks", []):
                target = _task_target(task, templates, refs)
                known |= {f"tasks.{task['name']}.{k}" for k in ("status", "exitCode", "startedAt", "finishedAt")}
                known |= {f"tasks.{task['name']}.outputs.parameters.{o}" for o in _outputs(target, "parameters")}
                known |= {f"tasks.{task['name']}.outputs.artifacts.{o}" for o in _outputs(target, "artifacts")}
                required = {
                    p["name"]
                    for p in (target.get("inputs") or {}).get("parameters", [])
                    if "value" not in p and "default" not in p
                }
                given = {p["name"] for p in (task.get("arguments") or {}).get("parameters", [])}
                declared = {p["name"] for p in (target.get("inputs") or {}).get("parameters", [])}
                if required - given or given - declared:
                    problems.append(
                        f"{where} {template['name']}.{task['name']}: missing {sorted(required - given)}, "
                        f"unknown {sorted(given - declared)}"
                    )
                for dep in depends_tasks(task.get("depends", "")):
                    if dep not in {t["name"] for t in template["dag"]["tasks"]}:
                        problems.append(f"{where} {template['name']}.{task['name']}: depends on unknown task {dep}")
                given_art = {a["name"] for a in (task.get("arguments") or {}).get("artifacts", [])}
                needed_art = {
                    a["name"]
                    for a in (target.get("inputs") or {}).get("artifacts", [])
                    if "git" not in a and "s3" not in a
                }
                if needed_art - given_art:
                    problems.append(
                        f"{where} {template['name']}.{task['name']}: input artifacts {sorted(needed_art - given_art)} "
                        "not given"
                    )
            for path, text in strings(template):
                for match in REFERENCE.finditer(text):
                    if match.group(1) not in known:
                        problems.append(f"{where} {template['name']}{path}: {match.group(0)} does not resolve")
    return problems


def test_every_reference_resolves_and_every_input_is_given():
    problems = reference_problems(workflow_specs(), templates_by_ref())
    assert not problems, "\n".join(problems)


def test_a_wrong_reference_or_a_missing_input_is_caught():
    """The checker is not vacuous: a misspelt output name and a dropped argument both fail it."""
    where, spec = next((w, s) for w, s in workflow_specs() if w.startswith("training.yaml"))
    broken = copy.deepcopy(spec)
    main = next(t for t in broken["templates"] if t["name"] == "main")
    evaluate = next(t for t in main["dag"]["tasks"] if t["name"] == "evaluate")
    evaluate["arguments"]["parameters"][0]["value"] = "{{tasks.train.outputs.parameters.run_id}}"
    export = next(t for t in main["dag"]["tasks"] if t["name"] == "export")
    export["arguments"]["parameters"].pop(0)
    problems = reference_problems([(where, broken)], templates_by_ref())
    assert any("run_id}} does not resolve" in p for p in problems)
    assert any("main.export: missing ['model']" in p for p in problems)


# --- commands parse with the real CLI ------------------------------------------------------------


def chexops_argv(container: dict) -> list[str] | None:
    argv = [*container.get("command", []), *container.get("args", [])]
    if argv[:1] == ["chexops"]:
        return argv[1:]
    if argv[:1] == ["torchrun"]:
        assert "-m" in argv and argv[argv.index("-m") + 1] == "chexops", f"torchrun must start chexops: {argv}"
        return argv[argv.index("-m") + 2 :]
    return None


def dummy(text: str, defaults: dict[str, str]) -> str:
    def value(match: re.Match) -> str:
        name = match.group(1).rsplit(".", 1)[-1]
        return RUNTIME_VALUES.get(name) or defaults.get(name) or "1"

    return REFERENCE.sub(value, text)


def parse_with_cli(argv: list[str]) -> click.Context | None:
    """Parse like `chexops ARGV` without running it; None when the command is not in this tree."""
    ctx = cli.make_context("chexops", list(argv))
    command = cli
    while isinstance(command, click.Group):
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        if rest and rest[0] not in command.commands:
            return None
        name, command, rest = command.resolve_command(ctx, rest)
        ctx = command.make_context(name, rest, parent=ctx)
    return ctx


def all_containers():
    """(where, template, spec, values): values are the workflow's defaults and the literal arguments
    the DAG tasks pass to that template (run-time values get stand-ins in `dummy`)."""
    for where, spec in workflow_specs():
        defaults = {p["name"]: str(p.get("value", "")) for p in spec.get("arguments", {}).get("parameters", [])}
        literal: dict[str, dict[str, str]] = {}
        for template in spec["templates"]:
            for task in (template.get("dag") or {}).get("tasks", []):
                for param in (task.get("arguments") or {}).get("parameters", []):
                    if "{{" not in str(param.get("value", "{{")):
                        literal.setdefault(task.get("template", ""), {})[param["name"]] = str(param["value"])
        for template in spec["templates"]:
            if "container" in template:
                yield where, template, spec, {**defaults, **literal.get(template["name"], {})}


def test_every_chexops_step_parses_with_the_real_cli():
    parsed = []
    for where, template, _, defaults in all_containers():
        argv = chexops_argv(template["container"])
        if argv is None:
            assert "chexops.io/local-skip" in (template.get("metadata") or {}).get("annotations", {}), (
                f"{where} {template['name']}: not a chexops command and not declared cluster-only"
            )
            continue
        argv = [dummy(a, defaults) for a in argv]
        ctx = parse_with_cli(argv)
        assert ctx is not None, f"{where} {template['name']}: unknown command {argv[:2]}"
        parsed.append(ctx.command.name)
        local = (template.get("metadata") or {}).get("annotations", {}).get("chexops.io/local-run")
        if local:
            assert parse_with_cli([dummy(a, defaults) for a in local.split()[1:]]) is not None
    expected = {"train", "evaluate", "register", "export", "build", "record", "promote", "loadtest", "prepare"}
    assert expected <= set(parsed), sorted(expected - set(parsed))


def test_a_misspelt_option_fails_the_parse():
    with pytest.raises(click.UsageError):
        parse_with_cli(["evaluate", "--runn", "1"])


# --- images, resources, security ------------------------------------------------------------------


def test_every_image_is_pinned_by_digest_and_every_container_is_bounded_and_non_root():
    for where, template, _, _ in all_containers():
        container = template["container"]
        name = f"{where} {template['name']}"
        assert DIGEST.search(container["image"]), f"{name}: image {container['image']} is not pinned by digest"
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container.get("resources", {}).get(kind, {})), f"{name}: resources.{kind}"
        security = container.get("securityContext", {})
        assert security.get("runAsNonRoot") is True and security.get("runAsUser", 0) > 0, f"{name}: not non-root"
        if chexops_argv(container) is not None:
            assert security.get("allowPrivilegeEscalation") is False and security.get("capabilities", {}).get(
                "drop"
            ) == ["ALL"], name
    dockerfile = (ROOT / "training" / "Dockerfile").read_text()
    assert all(DIGEST.search(line.split()[1]) for line in dockerfile.splitlines() if line.startswith("FROM "))


def pod_of(template: dict, spec: dict, defaults: dict[str, str]) -> dict:
    """The Pod Argo makes for a container template (main container only), with placeholders filled."""
    container = {k: v for k, v in template["container"].items()}
    container["name"] = "main"
    pod_spec = {
        "containers": [container],
        "restartPolicy": "Never",
        "serviceAccountName": spec.get("serviceAccountName", "default"),
    }
    volumes = [*spec.get("volumes", []), *template.get("volumes", [])]
    mounted = {m["name"] for m in container.get("volumeMounts", [])}
    if volumes:
        pod_spec["volumes"] = [v for v in volumes if v["name"] in mounted]
    for key in ("nodeSelector", "tolerations", "securityContext"):
        source = template.get(key) or (spec.get(key) if key == "securityContext" else None)
        if source:
            pod_spec[key] = source
    pod = json.loads(
        dummy(
            json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": template["name"]}, "spec": pod_spec}),
            defaults,
        )
    )
    if "podSpecPatch" in template:  # a strategic merge: containers by name, maps key by key
        patch = json.loads(dummy(template["podSpecPatch"], defaults))
        for patched in patch.pop("containers", []):
            target = next(c for c in pod["spec"]["containers"] if c["name"] == patched["name"])
            for kind, values in patched.get("resources", {}).items():
                target.setdefault("resources", {}).setdefault(kind, {}).update(values)
        pod["spec"].update(patch)
    return pod


def test_the_pods_argo_makes_pass_kubernetes_validate_strict():
    import kubernetes_validate

    count = 0
    for where, template, spec, defaults in all_containers():
        pod = pod_of(template, spec, defaults)
        try:
            kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where} {template['name']}: {exc}")
        count += 1
    assert count >= 10


def _jq(filter_: str, document: dict) -> str:
    import shutil
    import subprocess

    if not shutil.which("jq"):
        pytest.skip("jq is not installed (Argo's executor runs gojq; jq stands in here)")
    done = subprocess.run(
        ["jq", "-c", filter_], input=json.dumps(document), capture_output=True, text=True, timeout=30, check=True
    )
    return done.stdout.strip()


def test_the_analysis_run_the_delivery_creates_is_valid():
    """The AnalysisRun as the delivery makes it from the AnalysisTemplate (k8s/analysis/ once it is in
    the tree; a stand-in of the same shape before): every arg has a value, the canary version is set."""
    delivery = yaml.safe_load((WORKFLOWS / "delivery.yaml").read_text())
    templates = {t["name"]: t for t in delivery["spec"]["templates"]}
    get = yaml.safe_load(templates["analysis-template"]["resource"]["manifest"])
    assert (get["kind"], get["metadata"]["name"]) == ("AnalysisTemplate", "chexops-canary")
    source = ROOT / "k8s" / "analysis" / "chexops-canary.yaml"
    if source.is_file():
        analysis_template = next(
            d for d in yaml.safe_load_all(source.read_text()) if d and d["kind"] == "AnalysisTemplate"
        )
    else:
        print("k8s/analysis/chexops-canary.yaml is not in this tree yet: a stand-in of its shape is used")
        analysis_template = {
            "spec": {
                "args": [{"name": "namespace", "value": "production"}, {"name": "canary-version"}],
                "metrics": [
                    {
                        "name": "error-ratio",
                        "interval": "1m",
                        "count": 5,
                        "successCondition": "result[0] <= 0.01",
                        "provider": {"prometheus": {"address": "http://prometheus:9090", "query": "vector(0)"}},
                    }
                ],
            }
        }
    outputs = {
        p["name"]: p["valueFrom"]["jqFilter"].replace("{{inputs.parameters.version}}", "3")
        for p in templates["analysis-template"]["outputs"]["parameters"]
    }
    values = {name: _jq(filter_, analysis_template) for name, filter_ in outputs.items()}
    manifest = templates["analysis"]["resource"]["manifest"]
    for name, value in {**values, "version": "3"}.items():
        manifest = manifest.replace(f"{{{{inputs.parameters.{name}}}}}", value)
    rendered = yaml.safe_load(manifest.replace("{{workflow.name}}", "chexops-deliver-abc"))
    assert not schemas.errors(rendered), schemas.errors(rendered)
    args = {a["name"]: a for a in rendered["spec"]["args"]}
    assert args["canary-version"]["value"] == "3" and all("value" in a or "valueFrom" in a for a in args.values())
    assert rendered["spec"]["metrics"] == analysis_template["spec"]["metrics"]
    resource = templates["analysis"]["resource"]
    assert resource["action"] == "create" and "Successful" in resource["successCondition"]
    assert all(p in resource["failureCondition"] for p in ("Failed", "Error", "Inconclusive"))
    dag = {t["name"]: t for t in templates["main"]["dag"]["tasks"]}
    assert dag["production"]["depends"] == "analysis.Succeeded" and "analysis.Failed" in dag["rollback"]["depends"]
    assert chexops_argv(templates["rollback"]["container"])[:3] == ["promote", "--rollback", "canary"]


def test_training_runs_on_a_gpu_node_with_torchrun_and_survives_errors():
    spec = yaml.safe_load((WORKFLOWS / "training.yaml").read_text())["spec"]
    train = next(t for t in spec["templates"] if t["name"] == "train")
    container = train["container"]
    pod = pod_of(train, spec, {"gpus": "4"})
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert pod["spec"]["runtimeClassName"] == "nvidia"
    assert "--nproc_per_node={{inputs.parameters.gpus}}" in container["args"]
    assert train["nodeSelector"] == {"chexops.io/gpu": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in train["tolerations"]
    shm = next(m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm")
    assert next(v for v in train["volumes"] if v["name"] == shm["name"])["emptyDir"]["medium"] == "Memory"
    assert train["activeDeadlineSeconds"] > 0 and train["retryStrategy"]["retryPolicy"] == "OnError"
    assert train["retryStrategy"]["backoff"]["factor"] >= 2
    for key in ("synchronization", "podGC", "ttlStrategy", "onExit"):
        assert key in spec


def test_every_pipeline_shares_one_training_mutex():
    mutexes = {
        where: [m["name"] for m in spec.get("synchronization", {}).get("mutexes", [])]
        for where, spec in workflow_specs()
    }
    training = {w: m for w, m in mutexes.items() if "deliver" not in w}
    assert all(m == ["chexops-training"] for m in training.values()), training


def test_artifacts_go_to_the_s3_repository_the_workflows_name():
    config_maps = {
        (d["metadata"]["namespace"], d["metadata"]["name"]): d for _, d in documents() if d["kind"] == "ConfigMap"
    }
    roles = yaml.safe_load((ROOT / "ansible" / "roles" / "secrets" / "defaults" / "main.yml").read_text())
    made = {(s["name"], s["namespace"]): set(s["data"]) for s in roles["secrets_kubernetes"]}
    refs = 0
    for where, spec in workflow_specs():
        ref = spec["artifactRepositoryRef"]
        repository = yaml.safe_load(config_maps[("argo", ref["configMap"])]["data"][ref["key"]])["s3"]
        assert repository["bucket"] and repository["endpoint"], where
        for key in ("accessKeySecret", "secretKeySecret"):
            assert repository[key]["key"] in made[(repository[key]["name"], "argo")]
        refs += 1
    assert refs == len(workflow_specs()) >= 4
