"""The scheduled retraining (workflows/cron.yaml) trains on the feedback it exported: the cron's DAG
resolved down to the train step's command, the export's layout read back by the real config loader
and data loader, and an export without rows (no feedback yet) that does not fail the run."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from chexops.cli.train import train_cmd
from chexops.config import load_config
from chexops.core.labels import CHEXPERT_LABELS
from chexops.data.chexpert import DATASET_DIR
from chexops.data.loading import load_splits
from chexops.feedback.store import FeedbackStore
from chexops.pipelines.argo_expr import depends_tasks
from chexops.pipelines.runner import substitute
from support import ROOT, make_rows, run_cli, write_chexpert

WORKFLOWS = ROOT / "workflows"
RUN = "chexops-retrain-1764547200"  # a scheduled run's name
MOUNT = "/data"


def docs() -> dict[str, dict]:
    return {
        doc["metadata"]["name"]: doc
        for path in WORKFLOWS.glob("*.yaml")
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc.get("kind") in ("WorkflowTemplate", "CronWorkflow")
    }


def _template(spec: dict, name: str) -> dict:
    return next(t for t in spec["templates"] if t["name"] == name)


def _args(task: dict, scope: dict[str, str], where: str) -> dict[str, str]:
    return {p["name"]: substitute(str(p["value"]), scope, where) for p in task["arguments"]["parameters"]}


def _inputs(template: dict, given: dict[str, str], spec: dict) -> dict[str, str]:
    """A called template's `inputs.parameters.*`: what the caller passed, else the template's default,
    else the workflow's default (the templateRef'd WorkflowTemplate's arguments)."""
    defaults = {p["name"]: str(p.get("value", "")) for p in spec.get("arguments", {}).get("parameters", [])}
    scope = {}
    for param in template["inputs"]["parameters"]:
        name = param["name"]
        value = given.get(name, param.get("value", param.get("default", defaults.get(name))))
        assert value is not None, f"{template['name']}: input {name} is neither given nor defaulted"
        scope[f"inputs.parameters.{name}"] = str(value)
    return scope


# What earlier steps output at run time: the branch's commit, the image built from it, the freight so far.
RUNTIME = {
    "tasks.resolve.outputs.parameters.commit": "c" * 40,
    "tasks.build.outputs.parameters.image": "registry.platform.svc.cluster.local:5000/chexops-train:src-1@sha256:"
    + "d" * 64,
    **{
        f"tasks.{t}.outputs.parameters.freight": '{"commit": "' + "c" * 40 + '"}'
        for t in ("freight", "prepare", "cache")
    },
}


def resolved_cron() -> tuple[list[str], list[str], dict]:
    """(the feedback-export container's argv, the train container's argv, the cron's workflow spec),
    every parameter resolved along cron main → chexops-pipeline main → chexops-train main → train."""
    objects = docs()
    cron = objects["chexops-retrain"]["spec"]["workflowSpec"]
    base = {
        "workflow.name": RUN,
        **{
            f"workflow.parameters.{p['name']}": str(p.get("value", "<from a ConfigMap>"))
            for p in cron["arguments"]["parameters"]
        },
        **RUNTIME,
    }
    tasks = {t["name"]: t for t in _template(cron, "main")["dag"]["tasks"]}
    export = _template(cron, tasks["feedback"]["template"])["container"]
    export_argv = [substitute(a, base, "feedback-export") for a in [*export["command"], *export["args"]]]

    call = tasks["pipeline"]
    assert "feedback" in depends_tasks(call.get("depends", "")), "the pipeline must wait for the feedback export"
    given = _args(call, base, "cron main.pipeline")
    for task_name in ("train", "train"):  # chexops-pipeline main's task train → chexops-train main's task train
        ref = call["templateRef"]
        spec = objects[ref["name"]]["spec"]
        template = _template(spec, ref["template"])
        scope = {"workflow.name": RUN, **RUNTIME, **_inputs(template, given, spec)}
        call = next(t for t in template["dag"]["tasks"] if t["name"] == task_name)
        given = _args(call, scope, f"{ref['name']} {ref['template']}.{task_name}")
        if "templateRef" not in call:
            break
    train = _template(spec, call["template"])
    scope = {"workflow.name": RUN, **_inputs(train, given, spec)}
    train_argv = [substitute(a, scope, "train") for a in [*train["container"]["command"], *train["container"]["args"]]]
    return export_argv, train_argv, cron


def train_context(argv: list[str]):
    """The train step's command parsed by the real `chexops train` (after `torchrun ... -m chexops`)."""
    rest = argv[argv.index("train") + 1 :]
    return train_cmd.make_context("train", rest)


def test_the_cron_passes_the_feedback_it_exported_to_training():
    export_argv, train_argv, cron = resolved_cron()
    out = export_argv[export_argv.index("--out") + 1]
    sources = [o for o in train_context(train_argv).params["overrides"] if o.startswith("data.sources=")]
    assert len(sources) == 1, f"the train step does not set data.sources: {train_argv}"
    (feedback,) = yaml.safe_load(sources[0].split("=", 1)[1])
    assert feedback["name"] == "feedback"
    assert Path(feedback["csv"]) == Path(out) / DATASET_DIR / "train.csv", (
        "training reads another CSV than the export writes"
    )
    assert Path(feedback["root"]) == Path(out), "the export's image paths are relative to its --out directory"
    assert feedback["allow_empty"] is True, "no feedback yet would fail the scheduled run"
    assert RUN in out, "each scheduled run needs its own export directory"

    # The export lands on the shared data volume that the train step reads, not in a pod's own /tmp.
    volumes = {v["name"]: v for v in cron["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "chexops-data"
    export_mounts = {m["mountPath"]: m["name"] for m in _template(cron, "feedback-export")["container"]["volumeMounts"]}
    train_mounts = {
        m["mountPath"]: m["name"]
        for m in _template(docs()["chexops-train"]["spec"], "train")["container"]["volumeMounts"]
    }
    assert export_mounts.get(MOUNT) == "data" and train_mounts.get(MOUNT) == "data" and out.startswith(MOUNT + "/")
    # evaluate and register (re-evaluating production) load the run's config.yaml, sources included.
    for name in ("evaluate", "register"):
        mounts = {
            m["mountPath"]: m["name"]
            for m in _template(docs()["chexops-train"]["spec"], name)["container"]["volumeMounts"]
        }
        assert mounts.get(MOUNT) == "data", f"{name} cannot read the feedback source"


def test_the_training_template_alone_trains_without_extra_sources():
    """`make demo` and pushes run chexops-train with its default: `data.sources=[]` parses as no source."""
    spec = docs()["chexops-train"]["spec"]
    default = next(p["value"] for p in spec["arguments"]["parameters"] if p["name"] == "extra-sources")
    args = _template(spec, "train")["container"]["args"]
    override = next(a for a in args if a.startswith("data.sources="))
    value = override.replace("{{inputs.parameters.extra-sources}}", default)
    assert yaml.safe_load(value.split("=", 1)[1]) == []


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    values = np.random.default_rng(seed).integers(0, 65535, (40, 40), dtype=np.uint16)
    Image.fromarray(values).save(buffer, format="PNG")
    return buffer.getvalue()


def _store(path: Path, feedback: int) -> str:
    url = f"sqlite:///{path}"
    store = FeedbackStore(url)
    try:
        for i in range(feedback):
            findings = [
                {"label": label, "probability": 0.7 if j % 2 else 0.2, "positive": bool(j % 2)}
                for j, label in enumerate(CHEXPERT_LABELS)
            ]
            store.add_prediction(
                f"req-{i}", "clinic-a", "chexops-cxr", "1", findings, "routine", {"view_position": "PA"}
            )
            store.set_image(f"req-{i}", _png(i))
            store.add_feedback(
                f"req-{i}", correct=bool(i % 2), labels=None if i % 2 else {"Cardiomegaly": 1}, note=None
            )
    finally:
        store.close()
    return url


@pytest.mark.slow
@pytest.mark.parametrize("feedback", [5, 0], ids=["feedback", "no-feedback-yet"])
def test_the_override_the_cron_builds_loads_the_export(tmp_path, monkeypatch, feedback):
    """The train step's own overrides (the volume's /data mapped to a local folder), with a real
    `chexops feedback export` on it: the feedback rows join training, the newest 20 % held out; an
    export without rows leaves training as it was instead of failing."""
    export_argv, train_argv, _ = resolved_cron()
    data = tmp_path / "data"
    overrides = [o.replace(MOUNT + "/", f"{data}/") for o in train_context(train_argv).params["overrides"]]
    out = export_argv[export_argv.index("--out") + 1].replace(MOUNT + "/", f"{data}/")

    prepared = Path(next(o for o in overrides if o.startswith("data.root=")).split("=", 1)[1])
    write_chexpert(prepared, make_rows(n_patients=6))
    write_chexpert(prepared, make_rows(n_patients=3), name="valid.csv")
    store = _store(tmp_path / "feedback.db", feedback)
    result = run_cli(
        *export_argv[1 : export_argv.index("--out")],
        "--out",
        out,
        "--store",
        store,
        *export_argv[export_argv.index("--out") + 2 :],
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["rows"] == feedback

    monkeypatch.setenv("CHEXPERT_ROOT", str(prepared))
    config = load_config(ROOT / "configs" / "chexpert-densenet121.yaml", [*overrides, "data.val_fraction=0.2"])
    (source,) = config.data.sources
    assert source.csv == Path(out) / DATASET_DIR / "train.csv" and source.csv.is_file()
    joined = load_splits(config)
    base = load_splits(
        load_config(
            ROOT / "configs" / "chexpert-densenet121.yaml",
            [*(o for o in overrides if not o.startswith("data.sources=")), "data.val_fraction=0.2"],
        )
    )
    held = round(feedback * source.holdout_fraction)
    assert len(joined.train) == len(base.train) + feedback - held
    feedback_paths = [p for p in map(str, joined.train.paths) if p.startswith(out)]
    assert len(feedback_paths) == feedback - held and all(Path(p).is_file() for p in feedback_paths)
    if feedback:
        assert joined.fingerprint["data_version"] != base.fingerprint["data_version"]
    else:
        assert joined.fingerprint["data_version"] == base.fingerprint["data_version"]
