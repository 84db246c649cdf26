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
# A step's image may be the run's own training image, passed down as a parameter (the freight's digest).
IMAGE_PARAMETER = re.compile(r"^\{\{(inputs|workflow)\.parameters\.(image|training-image)\}\}$")
K8S_VERSION = "1.33"
# Stand-ins for values only known at run time (anything that parses as what the CLI expects).
RUNTIME_VALUES = {
    "image": "registry.platform.svc.cluster.local:5000/chexops-cxr:v1@sha256:" + "0" * 64,
    "training-image": "registry.platform.svc.cluster.local:5000/chexops-train:" + "a" * 40 + "@sha256:" + "0" * 64,
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


def global_outputs(spec: dict, refs: dict) -> set[str]:
    """The `globalName`s of the outputs of every template this workflow can run: its own and those of
    the WorkflowTemplates it reaches by templateRef (`{{workflow.outputs.parameters.NAME}}`)."""
    names, owners = set(), set()
    pending = list(spec["templates"])
    while pending:
        template = pending.pop()
        names |= {p["globalName"] for p in (template.get("outputs") or {}).get("parameters", []) if "globalName" in p}
        for task in (template.get("dag") or {}).get("tasks", []):
            owner = task.get("templateRef", {}).get("name")
            if owner and owner not in owners:
                owners.add(owner)
                pending.extend(t for (name, _), t in refs.items() if name == owner)
    return names


def reference_problems(specs: list[tuple[str, dict]], refs: dict) -> list[str]:
    problems = []
    for where, spec in specs:
        templates = {t["name"]: t for t in spec["templates"]}
        workflow_params = {p["name"] for p in spec.get("arguments", {}).get("parameters", [])}
        exit_templates = {spec.get("onExit")}
        exit_dag = templates.get(spec.get("onExit"), {}).get("dag") or {}
        exit_templates |= {t["template"] for t in exit_dag.get("tasks", []) if "template" in t}
        globals_ = {f"workflow.outputs.parameters.{name}" for name in global_outputs(spec, refs)}
        for template in spec["templates"]:
            known = {f"workflow.parameters.{p}" for p in workflow_params} | {
                "workflow.name",
                "workflow.uid",
                "workflow.namespace",
            }
            if template["name"] in exit_templates:
                known |= globals_
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
    export["arguments"]["parameters"] = [p for p in export["arguments"]["parameters"] if p["name"] != "model"]
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


# The image the run's `build` step made from its commit (its output `image`, by digest), as a step
# gets it: an input, or (the exit handler) the build's global output.
TRAINING_IMAGE = {"{{inputs.parameters.training-image}}", "{{workflow.outputs.parameters.training-image}}"}


def test_every_image_is_pinned_by_digest_and_every_container_is_bounded_and_non_root():
    for where, template, _, _ in all_containers():
        container = template["container"]
        name = f"{where} {template['name']}"
        assert (
            DIGEST.search(container["image"])
            or container["image"] in TRAINING_IMAGE
            or IMAGE_PARAMETER.match(container["image"])
        ), f"{name}: image {container['image']} is not pinned by digest"
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container.get("resources", {}).get(kind, {})), f"{name}: resources.{kind}"
        security = container.get("securityContext", {})
        assert security.get("runAsNonRoot") is True and security.get("runAsUser", 0) > 0, f"{name}: not non-root"
        if chexops_argv(container) is not None:
            assert security.get("allowPrivilegeEscalation") is False and security.get("capabilities", {}).get(
                "drop"
            ) == ["ALL"], name
    dockerfile = (ROOT / "training" / "Dockerfile").read_text()
    stages = re.findall(r"^FROM \S+ AS (\S+)$", dockerfile, re.M)
    base = re.search(r"^ARG BASE=(\S+)$", dockerfile, re.M).group(1)
    for line in dockerfile.splitlines():
        if line.startswith("FROM "):
            image = line.split()[1]
            # an external image by digest, or a stage of this file (BASE's default names one)
            assert DIGEST.search(image) or image in stages or (image == "${BASE}" and base in stages), line


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


def test_the_delivery_checks_each_version_it_judges_and_rolls_back_on_any_non_success():
    """chexops-deliver: every check waits for what was promoted, names the version, and anything after the
    canary commit that does not succeed reverts it, in the DAG and in the exit handler."""
    delivery = yaml.safe_load((WORKFLOWS / "delivery.yaml").read_text())["spec"]
    templates = {t["name"]: t for t in delivery["templates"]}
    dag = {t["name"]: t for t in templates["main"]["dag"]["tasks"]}
    args = {name: {p["name"]: p["value"] for p in t["arguments"]["parameters"]} for name, t in dag.items()}
    order = ["staging-synced", "staging-serving", "loadtest", "canary", "production-synced", "rollout"]
    for before, after in zip(order, order[1:]):
        assert before in depends_tasks(dag[after]["depends"]), (before, after)
    assert args["staging-synced"]["revision"] == "{{inputs.parameters.staging-commit}}"
    assert args["production-synced"]["revision"] == "{{tasks.canary.outputs.parameters.commit}}"
    version = "{{inputs.parameters.version}}"
    assert args["staging-serving"]["version"] == args["production-verify"]["version"] == version
    assert args["loadtest"]["model"].endswith("/" + version) and args["rollout"]["version"] == version
    assert "--record" in templates["loadtest"]["container"]["args"]  # --record implies --expect-version
    # Production only after the Rollout promoted the canary and production held N for the window.
    assert dag["production-verify"]["depends"] == "rollout.Succeeded"
    assert "== promoted" in dag["production-verify"]["when"]
    assert dag["production"]["depends"] == "production-verify.Succeeded"
    assert args["production"]["analysis-phase"] == "{{tasks.rollout.outputs.parameters.analysis-phase}}"
    assert args["production-verify"]["hold"] == "{{inputs.parameters.verify-window}}"
    after_canary = ["production-synced", "rollout", "production-verify", "production"]
    rollback = dag["rollback"]["depends"]
    for task in after_canary:
        assert f"{task}.Failed" in rollback and f"{task}.Errored" in rollback, task
    assert chexops_argv(templates["rollback"]["container"])[:5] == [
        "promote", "--rollback", "canary", "--if-version", version,
    ]  # fmt: skip
    # Whatever ends the run otherwise (stopped, timed out, a crash anywhere): the exit handler's rollback.
    exit_tasks = {t["name"]: t for t in templates[delivery["onExit"]]["dag"]["tasks"]}
    assert exit_tasks["rollback"]["template"] == "rollback" and "!= Succeeded" in exit_tasks["rollback"]["when"]
    # A crashed wait leaves no outcome: its default is not `undecided`, so the rollback runs.
    outcome = next(p for p in templates["wait-rollout"]["outputs"]["parameters"] if p["name"] == "outcome")
    assert outcome["valueFrom"]["default"] not in ("promoted", "undecided")
    # One delivery at a time wherever `main` is invoked (a templateRef carries template-level locks only).
    assert templates["main"]["synchronization"] == {"mutexes": [{"name": "chexops-delivery"}]}
    assert "synchronization" not in delivery


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
    for key in ("podGC", "ttlStrategy", "onExit"):
        assert key in spec


TRAINING_LOCK = "chexops-training"


def _mutexes(holder: dict) -> list[str]:
    return [m["name"] for m in (holder.get("synchronization") or {}).get("mutexes", [])]


def lock_paths(spec: dict, owner: str, refs: dict) -> list[list[tuple[str, list[str]]]]:
    """Every chain of templates a run of `spec` can go through (from its entrypoint and its exit
    handler, across templateRef), each as [(OWNER:TEMPLATE, the mutexes it takes)], the spec first."""
    own = {t["name"]: t for t in spec["templates"]}
    paths = []

    def walk(where: str, template: dict, chain: list[tuple[str, list[str]]]) -> None:
        chain = [*chain, (f"{where}:{template['name']}", _mutexes(template))]
        tasks = (template.get("dag") or {}).get("tasks", [])
        if not tasks:
            paths.append(chain)
        for task in tasks:
            if "templateRef" in task:
                ref = task["templateRef"]
                walk(ref["name"], refs[(ref["name"], ref["template"])], chain)
            elif where == owner:
                walk(where, own[task["template"]], chain)
            else:
                walk(where, refs[(where, task["template"])], chain)

    for start in filter(None, (spec.get("entrypoint"), spec.get("onExit"))):
        walk(owner, own[start], [(f"{owner} (spec)", _mutexes(spec))])
    return paths


def lock_problems(specs: list[tuple[str, dict]], refs: dict) -> list[str]:
    """A mutex taken twice on one chain never comes free: Argo's holder of a spec-level lock is the
    workflow, of a template-level one the node, so the inner request waits for the outer forever."""
    problems = []
    for where, spec in specs:
        owner = where.split(":", 1)[1]
        for chain in lock_paths(spec, owner, refs):
            held: dict[str, str] = {}
            for name, mutexes in chain:
                for mutex in mutexes:
                    if mutex in held:
                        problems.append(f"{where}: {name} waits for mutex {mutex}, which {held[mutex]} holds")
                    held.setdefault(mutex, name)
    return sorted(set(problems))


def test_the_training_mutex_holds_wherever_training_runs_and_never_deadlocks():
    """The lock is on chexops-train's `main` (template level), so a push, the schedule, a direct
    submission and chexops-pipeline's templateRef all take it; no caller takes it again."""
    specs = dict(workflow_specs())
    refs = templates_by_ref()
    assert _mutexes(refs[("chexops-train", "main")]) == [TRAINING_LOCK]
    for where in ("training.yaml:chexops-train", "pipeline.yaml:chexops-pipeline", "cron.yaml:chexops-retrain"):
        owner = where.split(":", 1)[1]
        trains = [c for c in lock_paths(specs[where], owner, refs) if any(n == "chexops-train:main" for n, _ in c)]
        assert trains, f"{where} does not run chexops-train's main"
        assert all(any(TRAINING_LOCK in m for _, m in chain) for chain in trains), where
    problems = lock_problems(list(specs.items()), refs)
    assert not problems, "\n".join(problems)
    # Argo Workflows 3.7's field is `mutexes` (a list); the single `mutex` is deprecated
    for where, text in ((p.name, p.read_text()) for p in FILES):
        assert not re.search(r"^\s+(mutex|semaphore):", text, re.M), where


def test_a_lock_taken_twice_is_caught():
    """The deadlock check is not vacuous: the spec-level lock chexops-train once had, next to `main`'s."""
    where, spec = next((w, s) for w, s in workflow_specs() if w.startswith("training.yaml"))
    locked = copy.deepcopy(spec)
    locked["synchronization"] = {"mutexes": [{"name": TRAINING_LOCK}]}
    problems = lock_problems([(where, locked)], templates_by_ref())
    assert problems == [
        f"{where}: chexops-train:main waits for mutex {TRAINING_LOCK}, which chexops-train (spec) holds"
    ]


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
