"""Run an Argo WorkflowTemplate's DAG on this machine: the same definition as in the cluster.

`chexops pipeline run workflows/training.yaml --local` reads the YAML, resolves
`{{workflow.parameters.*}}`, `{{inputs.parameters.*}}`, `{{tasks.T.outputs.parameters.P}}` (from the
`valueFrom.path` files a step wrote under `$CHEXOPS_OUTPUTS`), `{{tasks.T.exitCode}}` and
`{{tasks.T.status}}`, and runs each container's command as a local process, in DAG order, with
Argo's rules for `depends`, `when`, `continueOn` and the DAG's phase (a leaf's branch decides).

A template that exists only in the cluster declares what happens here instead: the annotation
`chexops.io/local-run` names a command to run (its outputs are those of the files it writes),
`chexops.io/local-skip` a reason to skip it (its outputs are their `valueFrom.default`, where
declared). Outputs with a `globalName` are `{{workflow.outputs.parameters.NAME}}`. Any Argo feature
this runner does not implement is refused by name, never guessed at.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from chexops.core.console import ENV as OUTPUTS_ENV
from chexops.core.console import RESULT_FILE
from chexops.core.errors import ChexopsError, UserInputError
from chexops.core.results import Result
from chexops.pipelines import argo_expr
from chexops.pipelines.argo_expr import FAILED, OMITTED, SKIPPED, SUCCEEDED, UnsupportedExpression, depends_tasks

log = logging.getLogger(__name__)

LOCAL_RUN = "chexops.io/local-run"
LOCAL_SKIP = "chexops.io/local-skip"
KINDS = ("WorkflowTemplate", "Workflow")

# What the runner reads; what it accepts but leaves to the cluster (scheduling, pods, retries).
SPEC_KEYS = {"entrypoint", "arguments", "templates", "onExit"}
SPEC_CLUSTER_ONLY = {
    "artifactRepositoryRef",
    "serviceAccountName",
    "securityContext",
    "synchronization",
    "podGC",
    "ttlStrategy",
    "activeDeadlineSeconds",
    "volumes",
    "podMetadata",
    "workflowMetadata",
    "nodeSelector",
    "tolerations",
}
TEMPLATE_KEYS = {"name", "inputs", "outputs", "container", "dag", "metadata"}
TEMPLATE_CLUSTER_ONLY = {
    "activeDeadlineSeconds",
    "retryStrategy",
    "nodeSelector",
    "tolerations",
    "podSpecPatch",
    "volumes",
    "securityContext",
    "serviceAccountName",
    "timeout",
    "affinity",
    "priorityClassName",
    "synchronization",
}
CONTAINER_KEYS = {"image", "command", "args", "env"}
CONTAINER_CLUSTER_ONLY = {"resources", "securityContext", "volumeMounts", "imagePullPolicy", "workingDir"}
TASK_KEYS = {"name", "template", "arguments", "depends", "dependencies", "when", "continueOn"}
# Commands a local step may start, as this Python runs them.
LAUNCHERS = {"chexops": [sys.executable, "-m", "chexops"], "torchrun": [sys.executable, "-m", "torch.distributed.run"]}

REFERENCE = re.compile(r"\{\{\s*(.*?)\s*\}\}")


class Unsupported(UserInputError):
    """The workflow uses an Argo feature this runner does not implement."""


def _refuse_unknown(obj: dict[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(obj) - known)
    if unknown:
        raise Unsupported(
            f"{where}: the local runner does not implement {', '.join(repr(k) for k in unknown)}; "
            "run this workflow in the cluster (argo submit)."
        )


@dataclass
class Node:
    """One executed (or skipped) template instance; `name` is the task path (main.gate.register)."""

    name: str
    template: str
    phase: str = ""
    exit_code: int | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    command: list[str] | None = None
    message: str = ""
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in (None, "", {})}


def load_workflow(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UserInputError(f"cannot read the workflow {path}: {exc}") from None
    if not isinstance(doc, dict) or doc.get("kind") not in KINDS or doc.get("apiVersion") != "argoproj.io/v1alpha1":
        raise UserInputError(f"{path} is not an Argo {' or '.join(KINDS)} (argoproj.io/v1alpha1).")
    return doc


def _cluster_value(param: dict[str, Any]) -> str | None:
    """A parameter the cluster reads from a ConfigMap: here, a value that says so wherever it is used
    (pass -p NAME=VALUE to give a real one, e.g. a local clone for gitops-repo)."""
    ref = (param.get("valueFrom") or {}).get("configMapKeyRef")
    if not ref:
        return None
    return f"<cluster only: ConfigMap {ref['name']} key {ref['key']}; pass -p {param['name']}=VALUE>"


def substitute(text: str, scope: dict[str, str], where: str) -> str:
    """Replace every {{name}} from `scope`; an expression ({{=...}}) or an unknown name is an error."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name.startswith("="):
            raise Unsupported(
                f"{where}: expression templates ({match.group(0)}) are not implemented by the local runner."
            )
        if name not in scope:
            raise UserInputError(f"{where}: {match.group(0)} does not resolve here.")
        return scope[name]

    return REFERENCE.sub(one, text)


def evaluate_when(expr: str, where: str) -> bool:
    """Argo `when` after substitution (the language of chexops.pipelines.argo_expr)."""
    try:
        return argo_expr.evaluate_when(expr)
    except UnsupportedExpression as exc:
        raise Unsupported(f"{where}: when {expr!r}: {exc}.") from None


def _parents(expr: str, where: str) -> list[str]:
    """The tasks a `depends` names; Unsupported, naming `where`, when it cannot be read."""
    try:
        return depends_tasks(expr)
    except UnsupportedExpression as exc:
        raise Unsupported(f"{where}: depends {expr!r}: {exc}.") from None


def evaluate_depends(expr: str, phases: dict[str, str], where: str) -> bool:
    """Argo's enhanced `depends` over the phases of the tasks done so far."""
    unknown = [task for task in _parents(expr, where) if task not in phases]
    if unknown:
        raise UserInputError(f"{where}: depends names {unknown[0]!r}, which is not a task of this DAG.")
    return argo_expr.evaluate_depends(expr, phases)


class LocalRunner:
    """Executes one workflow file's entrypoint (and its onExit handler) as local processes."""

    def __init__(
        self, path: Path, parameters: dict[str, str], workdir: Path, echo=None, skip: dict[str, str] | None = None
    ):
        self.path = path
        self.skip = dict(skip or {})
        self.doc = load_workflow(path)
        spec = self.doc.get("spec") or {}
        _refuse_unknown(spec, SPEC_KEYS | SPEC_CLUSTER_ONLY, "spec")
        self.spec = spec
        self.templates = {t["name"]: t for t in spec.get("templates", [])}
        declared = {
            p["name"]: p.get("value", _cluster_value(p)) for p in (spec.get("arguments") or {}).get("parameters", [])
        }
        unknown = sorted(set(parameters) - set(declared))
        if unknown:
            raise UserInputError(f"-p {', '.join(unknown)}: not parameters of {path} (it has {', '.join(declared)}).")
        self.parameters = {**declared, **parameters}
        missing = sorted(k for k, v in self.parameters.items() if v is None)
        if missing:
            raise UserInputError(f"parameters without a value: {', '.join(missing)} (pass -p NAME=VALUE).")
        metadata = self.doc["metadata"]
        self.name = (
            f"{metadata.get('name') or metadata.get('generateName', 'workflow')}-local-{time.strftime('%Y%m%d%H%M%S')}"
        )
        self.workdir = workdir
        self.nodes: list[Node] = []
        self.globals: dict[str, str] = {}
        self.echo = echo or (lambda line: log.info("%s", line))
        self.status = "Running"

    # ---------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        entry = self.spec.get("entrypoint")
        if entry not in self.templates:
            raise UserInputError(f"{self.path}: entrypoint {entry!r} is not a template.")
        started = time.monotonic()
        main = self.execute(entry, entry, {f"inputs.parameters.{k}": v for k, v in self.parameters.items()})
        self.status = SUCCEEDED if main.phase in (SUCCEEDED, SKIPPED) else FAILED
        if self.spec.get("onExit"):
            self.execute(self.spec["onExit"], "onExit", {})
        return {
            "workflow": self.name,
            "file": str(self.path),
            "phase": self.status,
            "outputs": main.outputs,
            "seconds": round(time.monotonic() - started, 1),
            "nodes": [n.summary() for n in self.nodes],
        }

    def global_scope(self) -> dict[str, str]:
        scope = {f"workflow.parameters.{k}": v for k, v in self.parameters.items()}
        scope["workflow.name"] = self.name
        scope.update({f"workflow.outputs.parameters.{k}": v for k, v in self.globals.items()})
        if self.status != "Running":
            scope["workflow.status"] = self.status
        return scope

    def execute(self, template_name: str, node_name: str, args: dict[str, str]) -> Node:
        template = self.templates.get(template_name)
        if template is None:
            raise UserInputError(f"{node_name}: template {template_name!r} is not in {self.path}.")
        where = f"templates[{template_name}]"
        _refuse_unknown(template, TEMPLATE_KEYS | TEMPLATE_CLUSTER_ONLY, where)
        annotations = (template.get("metadata") or {}).get("annotations") or {}
        if LOCAL_SKIP in annotations:
            node = Node(node_name, template_name, SKIPPED, message=f"cluster only: {annotations[LOCAL_SKIP]}")
            for param in (template.get("outputs") or {}).get("parameters", []):
                if "default" in (param.get("valueFrom") or {}):
                    self._output(node, param, str(param["valueFrom"]["default"]))
            self.nodes.append(node)
            self.echo(f"- {node_name}: {node.message}")
            return node
        scope = self.global_scope()
        inputs = template.get("inputs") or {}
        _refuse_unknown(inputs, {"parameters", "artifacts"}, f"{where}.inputs")
        for param in inputs.get("parameters", []):
            key = f"inputs.parameters.{param['name']}"
            if key in args:
                scope[key] = args[key]
            elif "value" in param or "default" in param:
                scope[key] = str(param.get("value", param.get("default")))
            else:
                raise UserInputError(f"{node_name}: input parameter {param['name']!r} has no value.")
        node = Node(node_name, template_name)
        self.nodes.append(node)
        started = time.monotonic()
        if "dag" in template:
            self.run_dag(template, node, scope)
        elif "container" in template:
            if (
                inputs.get("artifacts") or (template.get("outputs") or {}).get("artifacts")
            ) and LOCAL_RUN not in annotations:
                raise Unsupported(
                    f"{where}: artifacts are not implemented by the local runner; annotate the template "
                    f"{LOCAL_RUN} or {LOCAL_SKIP}."
                )
            self.run_container(template, node, scope, annotations.get(LOCAL_RUN))
        else:
            raise Unsupported(f"{where}: only container and dag templates run locally.")
        node.seconds = round(time.monotonic() - started, 1)
        return node

    # ---------------------------------------------------------------------------------------------
    def run_container(self, template: dict[str, Any], node: Node, scope: dict[str, str], local_run: str | None) -> None:
        where = f"templates[{template['name']}]"
        container = template["container"]
        _refuse_unknown(container, CONTAINER_KEYS | CONTAINER_CLUSTER_ONLY, f"{where}.container")
        outputs_dir = self.workdir / node.name / "outputs"
        outputs_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        cluster_outputs = None
        for var in container.get("env", []):
            if var["name"] == OUTPUTS_ENV:
                cluster_outputs = var["value"].rstrip("/")
                env[OUTPUTS_ENV] = str(outputs_dir)
            elif "value" in var:
                env[var["name"]] = substitute(str(var["value"]), scope, f"{where}.env.{var['name']}")
            else:
                log.debug(
                    "%s: %s comes from a Kubernetes Secret in the cluster; not set locally", node.name, var["name"]
                )
        env.setdefault(OUTPUTS_ENV, str(outputs_dir))
        if local_run is not None:
            argv = shlex.split(substitute(local_run, scope, f"{where}.metadata.annotations[{LOCAL_RUN}]"))
        else:
            argv = [
                substitute(str(a), scope, f"{where}.container")
                for a in [*container.get("command", []), *container.get("args", [])]
            ]
        if not argv or argv[0] not in LAUNCHERS:
            raise Unsupported(
                f"{where}: command {argv[:1]} is not a chexops step; annotate the template {LOCAL_RUN} or {LOCAL_SKIP}."
            )
        node.command = argv
        self.echo(f"▶ {node.name}: {shlex.join(argv)}")
        proc = subprocess.run([*LAUNCHERS[argv[0]], *argv[1:]], env=env, stdout=subprocess.DEVNULL)
        node.exit_code = proc.returncode
        node.phase = SUCCEEDED if proc.returncode == 0 else FAILED
        result_file = outputs_dir / RESULT_FILE
        if result_file.is_file():
            node.result = json.loads(result_file.read_text())
        self.collect_outputs(template, node, outputs_dir, cluster_outputs, strict=local_run is None)
        if node.phase == FAILED:
            node.message = f"exit code {proc.returncode}"
        self.echo(f"  {node.name}: {node.phase}{f' ({node.message})' if node.message else ''}")

    def _output(self, node: Node, param: dict[str, Any], value: str) -> None:
        node.outputs[param["name"]] = value
        if param.get("globalName"):
            self.globals[param["globalName"]] = value

    def collect_outputs(
        self, template: dict[str, Any], node: Node, outputs_dir: Path, cluster_outputs: str | None, strict: bool = True
    ) -> None:
        """The template's output parameters from the files the step wrote; `strict=False` (a local-run
        command, which need not write them all) takes only those written."""
        where = f"templates[{template['name']}].outputs"
        outputs = template.get("outputs") or {}
        _refuse_unknown(outputs, {"parameters", "artifacts"}, where)
        for param in outputs.get("parameters", []):
            source = param.get("valueFrom") or {}
            if not strict and not (cluster_outputs and source.get("path", "").startswith(cluster_outputs + "/")):
                continue
            _refuse_unknown(source, {"path", "default"}, f"{where}.parameters[{param['name']}].valueFrom")
            path = source.get("path", "")
            if not cluster_outputs or not path.startswith(cluster_outputs + "/"):
                raise Unsupported(
                    f"{where}.parameters[{param['name']}]: valueFrom.path {path!r} is not under ${OUTPUTS_ENV} "
                    f"({cluster_outputs}), the only place a local step writes to."
                )
            local = outputs_dir / path[len(cluster_outputs) + 1 :]
            if local.is_file():
                self._output(node, param, local.read_text().strip())
            elif not strict:
                continue
            elif "default" in source:
                self._output(node, param, str(source["default"]))
            elif node.phase == SUCCEEDED:
                node.phase, node.message = FAILED, f"output parameter {param['name']!r}: {path} was not written"

    # ---------------------------------------------------------------------------------------------
    def run_dag(self, template: dict[str, Any], node: Node, scope: dict[str, str]) -> None:
        where = f"templates[{template['name']}].dag"
        dag = template["dag"]
        _refuse_unknown(dag, {"tasks"}, where)
        tasks = {t["name"]: t for t in dag["tasks"]}
        depends: dict[str, str] = {}
        for task in dag["tasks"]:
            _refuse_unknown(task, TASK_KEYS, f"{where}.tasks[{task['name']}]")
            if "depends" in task and "dependencies" in task:
                raise UserInputError(f"{where}.tasks[{task['name']}]: depends and dependencies together.")
            depends[task["name"]] = task.get("depends") or " && ".join(task.get("dependencies", []))
        order = self._topological(tasks, depends, where)
        phases: dict[str, str] = {}
        nodes: dict[str, Node] = {}
        stopped = False
        for name in order:
            task = tasks[name]
            task_where = f"{where}.tasks[{name}]"
            task_scope = dict(scope)
            for other, done in nodes.items():
                task_scope[f"tasks.{other}.status"] = done.phase
                if done.exit_code is not None:
                    task_scope[f"tasks.{other}.exitCode"] = str(done.exit_code)
                for key, value in done.outputs.items():
                    task_scope[f"tasks.{other}.outputs.parameters.{key}"] = value
            reason = None
            if stopped:
                phases[name], reason = OMITTED, "not started: an earlier step failed"
            elif depends[name] and not evaluate_depends(depends[name], phases, task_where):
                phases[name], reason = OMITTED, f"omitted: depends {depends[name]!r} not met"
            elif name in self.skip:
                phases[name], reason = SKIPPED, f"skipped: {self.skip[name]}"
            elif "when" in task and not evaluate_when(
                substitute(str(task["when"]), task_scope, f"{task_where}.when"), task_where
            ):
                phases[name], reason = SKIPPED, f"skipped: when {task['when']!r} is false"
            if reason:
                self.nodes.append(Node(f"{node.name}.{name}", task.get("template", ""), phases[name], message=reason))
                self.echo(f"- {node.name}.{name}: {reason}")
                continue
            args = {}
            arguments = task.get("arguments") or {}
            _refuse_unknown(arguments, {"parameters", "artifacts"}, f"{task_where}.arguments")
            target = self.templates.get(task["template"], {})
            if arguments.get("artifacts") and LOCAL_SKIP not in (
                (target.get("metadata") or {}).get("annotations") or {}
            ):
                raise Unsupported(f"{task_where}: artifacts are not implemented by the local runner.")
            cluster_only = LOCAL_SKIP in ((target.get("metadata") or {}).get("annotations") or {})
            for param in (
                [] if cluster_only else arguments.get("parameters", [])
            ):  # a skipped template's are never resolved
                args[f"inputs.parameters.{param['name']}"] = substitute(
                    str(param.get("value", "")), task_scope, f"{task_where}.arguments.{param['name']}"
                )
            child = self.execute(task["template"], f"{node.name}.{name}", args)
            nodes[name], phases[name] = child, child.phase
            continued = child.phase == FAILED and (task.get("continueOn") or {}).get("failed")
            if child.phase == FAILED and not continued:
                stopped = True  # failFast: no new task starts after an unhandled failure
        node.phase = self._dag_phase(tasks, depends, phases)
        final_scope = dict(scope)
        for other, done in nodes.items():
            for key, value in done.outputs.items():
                final_scope[f"tasks.{other}.outputs.parameters.{key}"] = value
        for param in (template.get("outputs") or {}).get("parameters", []):
            source = param.get("valueFrom") or {}
            _refuse_unknown(
                source, {"parameter", "default"}, f"templates[{template['name']}].outputs.parameters[{param['name']}]"
            )
            try:
                self._output(
                    node, param, substitute(source["parameter"], final_scope, f"templates[{template['name']}].outputs")
                )
            except UserInputError:
                if "default" in source:
                    self._output(node, param, str(source["default"]))
                elif node.phase == SUCCEEDED:
                    raise

    @staticmethod
    def _topological(tasks: dict[str, Any], depends: dict[str, str], where: str) -> list[str]:
        order: list[str] = []
        pending = list(tasks)
        parents = {n: _parents(depends[n], f"{where}.tasks[{n}]") for n in tasks}
        while pending:
            ready = [n for n in pending if all(d in order for d in parents[n])]
            if not ready:
                raise UserInputError(
                    f"{where}: the tasks {', '.join(pending)} depend on each other (a cycle) or on unknown tasks."
                )
            order.append(ready[0])
            pending.remove(ready[0])
        return order

    @staticmethod
    def _dag_phase(tasks: dict[str, Any], depends: dict[str, str], phases: dict[str, str]) -> str:
        """Argo's assessDAGPhase: a task that did not complete inherits its parents' branch phase
        (Failed wins); the DAG fails when a leaf's branch failed and the leaf does not continueOn it."""
        branch: dict[str, str] = {}
        for name in LocalRunner._topological(tasks, depends, "dag"):
            own = phases.get(name, OMITTED)
            parents = depends_tasks(depends[name])
            inherited = FAILED if any(branch[p] == FAILED for p in parents) else SUCCEEDED
            branch[name] = own if own in (SUCCEEDED, FAILED) else inherited
        leaves = [n for n in tasks if not any(n in depends_tasks(depends[m]) for m in tasks)]
        for leaf in leaves:
            if branch[leaf] == FAILED and not (tasks[leaf].get("continueOn") or {}).get("failed"):
                return FAILED
        return SUCCEEDED


def run_local(
    path: Path, parameters: dict[str, str], workdir: Path, echo=None, skip: dict[str, str] | None = None
) -> WorkflowRun:
    """Run `path` locally; raises ChexopsError when the workflow fails (after its exit handler ran).
    `skip` maps task names to the reason they are skipped."""
    result = LocalRunner(path, parameters, workdir, echo, skip).run()
    if result["phase"] != SUCCEEDED:
        failed = [n["name"] for n in result["nodes"] if n.get("phase") == FAILED]
        raise ChexopsError(
            f"workflow {result['workflow']} failed at {', '.join(failed) or 'an unknown step'} "
            "(see the step's messages above)."
        )
    return WorkflowRun(**result)


class WorkflowRun(Result):
    """A workflow run here: its name, file, phase, the entrypoint's outputs, seconds, and every node's summary."""

    workflow: str
    file: str
    phase: str
    outputs: dict[str, str]
    seconds: float
    nodes: list[dict[str, Any]]
