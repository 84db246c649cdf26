"""`chexops export` and `chexops bento import`, end to end on a tiny trained model registered as
`models:/chexops-cxr@candidate` in a local MLflow (SQLite): ONNX fp32 + int8, metadata, parity with
PyTorch, class-activation maps from ONNX outputs, the Bento model store, bad references."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml

from chexops.data.synth import synthesize
from chexops.train import load_checkpoint
from support import ROOT

MODEL = "chexops-cxr"
THRESHOLDS_RULE = "youden"


def cli(home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`chexops ARGS` in a child process on `home`, without inherited MLflow / BentoML locations."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "BENTOML_HOME")}
    env["CHEXOPS_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "chexops", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


def ok_json(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    """A tiny model trained once, its thresholds logged as `chexops evaluate` does, registered as
    version 1 with alias candidate (as `chexops register` does), then exported once."""
    from mlflow.tracking import MlflowClient

    home = tmp_path_factory.mktemp("export-home")
    root = home / "data" / "synth"
    synthesize(root, patients=200, valid_patients=40, image_size=48, seed=0, progress=False)
    config = {
        "name": "tiny-export", "seed": 0,
        "data": {"csv": str(root / "CheXpert-v1.0-small/train.csv"), "root": str(root), "val_fraction": 0.2},
        "preprocess": {"size": 32, "mean": [0.45], "std": [0.25]},
        "model": {"name": "small", "width": 8},
        "train": {"epochs": 3, "batch_size": 32, "optimizer": "adamw", "lr": 0.004, "schedule": "onecycle", "checkpoint_every": 10},
        "tracking": {"experiment": "export-tests", "system_metrics": False},
    }
    config_path = home / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(config))
    trained = ok_json(cli(home, "train", "--config", str(config_path), "--json"))
    run_id = trained["run_id"]

    uri = f"sqlite:///{home / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    labels = trained["labels"]
    thresholds = {label: round(0.3 + 0.01 * j, 4) for j, label in enumerate(labels)}
    logged = {**thresholds, labels[-1]: None}  # evaluate writes null where validation had a single class
    thresholds[labels[-1]] = 0.5
    client.log_dict(run_id, {"rule": THRESHOLDS_RULE, "thresholds": logged}, "evaluation/thresholds.json")
    client.create_registered_model(MODEL)
    source = f"runs:/{run_id}/checkpoint"  # as chexops register writes it
    version = client.create_model_version(MODEL, source, run_id=run_id,
                                           tags={"run_id": run_id, "data_version": trained["data_version"],
                                                 "mean_auroc": str(trained["mean_auroc"]), "thresholds": json.dumps(thresholds)})
    client.set_registered_model_alias(MODEL, "candidate", version.version)

    result = cli(home, "export", "--model", f"models:/{MODEL}@candidate", "--calibration", "64", "--runs", "10", "--json")
    summary = ok_json(result)
    payload = load_checkpoint(Path(client.download_artifacts(run_id, "checkpoint/model.pt", str(home))))
    return {"home": home, "client": client, "run_id": run_id, "version": str(version.version), "summary": summary,
            "stderr": result.stderr, "payload": payload, "thresholds": thresholds, "trained": trained}


def validation_images(payload: dict, limit: int | None = None) -> np.ndarray:
    from chexops.config import Config
    from chexops.data.loading import load_splits
    from chexops.preprocessing import PreprocessSpec
    from chexops.quantize import split_inputs

    splits = load_splits(Config.model_validate(payload["config"]))
    return split_inputs(splits.val, PreprocessSpec.from_dict(payload["preprocessing"]), limit=limit)


def torch_model(payload: dict):
    from chexops.config import ModelConfig
    from chexops.models import build_model
    from chexops.preprocessing import PreprocessSpec

    model = build_model(ModelConfig(**payload["model_config"]), len(payload["labels"]), PreprocessSpec.from_dict(payload["preprocessing"]))
    model.load_state_dict(payload["model"])
    return model.eval()


def session(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_export_writes_one_onnx_file_each_and_reports(state):
    e = state["summary"]["export"]
    out = Path(e["dir"])
    assert out == state["home"] / "exports" / f"{MODEL}-v{state['version']}"
    assert sorted(p.name for p in out.iterdir()) == ["model.dynamic-int8.onnx", "model.int8.onnx", "model.onnx", "report.json"]
    for key in ("fp32", "int8", "dynamic_int8"):
        onnx.checker.check_model(e[key])
    assert Path(e["int8"]).stat().st_size < Path(e["fp32"]).stat().st_size
    assert 0 <= e["parity_max_abs_diff"] <= 1e-4
    for key in ("int8_auroc_delta", "int8_latency_ratio", "dynamic_int8_auroc_delta", "dynamic_int8_latency_ratio", "fp32_latency_ms"):
        assert isinstance(e[key], float) and np.isfinite(e[key]), key
    assert abs(e["int8_auroc_delta"]) < 0.05  # calibrated on real training images, int8 barely moves AUROC
    assert e["calibration_images"] == 64 and e["latency"] == {"batch": 1, "intra_op_threads": 2, "runs": 10, "statistic": "median"}
    assert e["model"] == {"uri": f"models:/{MODEL}@candidate", "name": MODEL, "version": state["version"], "alias": "candidate",
                          "run_id": state["run_id"]}
    assert json.loads((out / "report.json").read_text())["int8"] == e["int8"]


def test_dynamic_batch_axis_and_float_outputs(state):
    e = state["summary"]["export"]
    x = validation_images(state["payload"], limit=3)
    k = len(state["payload"]["labels"])
    for key in ("fp32", "int8"):
        sess = session(e[key])
        assert [o.name for o in sess.get_outputs()] == ["probabilities", "features"]
        assert all(o.type == "tensor(float)" for o in sess.get_outputs())  # int8 QDQ still hands out floats
        assert not isinstance(sess.get_inputs()[0].shape[0], int)  # symbolic batch dimension
        for n in (1, 3):
            probs, features = sess.run(None, {"image": x[:n]})
            assert probs.shape == (n, k) and features.shape[0] == n and features.ndim == 4
            assert ((probs >= 0) & (probs <= 1)).all()


def test_metadata_is_the_checkpoints(state):
    from chexops.export import read_metadata

    e, payload = state["summary"]["export"], state["payload"]
    for key, precision in (("fp32", "fp32"), ("int8", "int8-static-qdq"), ("dynamic_int8", "int8-dynamic")):
        meta = read_metadata(e[key])
        assert json.loads(meta["labels"]) == payload["labels"]
        assert json.loads(meta["preprocessing"]) == payload["preprocessing"]
        assert json.loads(meta["thresholds"]) == state["thresholds"] and meta["thresholds_rule"] == THRESHOLDS_RULE
        assert meta["registry_version"] == state["version"] and meta["model_name"] == MODEL
        assert meta["run_id"] == state["run_id"] == payload["run_id"]
        assert meta["data_version"] == payload["data_version"] == state["trained"]["data_version"]
        assert meta["precision"] == precision
        head = json.loads(meta["head"])
        assert np.array_equal(np.asarray(head["weight"], dtype=np.float32), payload["model"]["head.weight"].numpy())
        assert np.array_equal(np.asarray(head["bias"], dtype=np.float32), payload["model"]["head.bias"].numpy())


def test_parity_with_pytorch_on_validation_images(state):
    x = validation_images(state["payload"], limit=40)
    model = torch_model(state["payload"])
    with torch.no_grad():
        expected = torch.sigmoid(model(torch.from_numpy(x))).numpy()
    probs, _ = session(state["summary"]["export"]["fp32"]).run(None, {"image": x})
    assert np.abs(probs - expected).max() <= 1e-4


def test_parity_with_pytorch_on_real_radiographs(state, shared):
    from chexops.preprocessing import PreprocessSpec, load_image, preprocess

    files = sorted((shared / "real-cxr").glob("*.png"))
    assert files, "no real radiographs in the shared data"
    spec = PreprocessSpec.from_dict(state["payload"]["preprocessing"])
    x = np.stack([preprocess(load_image(f), spec) for f in files])
    model = torch_model(state["payload"])
    with torch.no_grad():
        expected = torch.sigmoid(model(torch.from_numpy(x))).numpy()
        expected_features = model.feature_map(torch.from_numpy(x)).numpy()
    probs, features = session(state["summary"]["export"]["fp32"]).run(None, {"image": x})
    assert np.abs(probs - expected).max() <= 1e-4
    assert np.abs(features - expected_features).max() <= 1e-4
    assert state["summary"]["export"]["parity_images"]["real_cxr"] == [f.name for f in files]


def test_cam_from_onnx_outputs_equals_the_torch_cam(state):
    from chexops.export import class_activation_maps, read_metadata

    e = state["summary"]["export"]
    x = validation_images(state["payload"], limit=4)
    model = torch_model(state["payload"])
    with torch.no_grad():
        torch_cam = torch.einsum("kc,bchw->bkhw", model.head.weight, model.feature_map(torch.from_numpy(x))).numpy()
    probs, features = session(e["fp32"]).run(None, {"image": x})
    head = json.loads(read_metadata(e["fp32"])["head"])
    cam = class_activation_maps(features, np.asarray(head["weight"], dtype=np.float32))
    assert cam.shape == torch_cam.shape and np.abs(cam - torch_cam).max() <= 1e-4
    # The CAM is the classifier, spatially resolved: its mean plus the bias is the logit.
    logits = cam.mean(axis=(2, 3)) + np.asarray(head["bias"], dtype=np.float32)
    assert np.abs(1 / (1 + np.exp(-logits)) - probs).max() <= 1e-5


def test_files_and_report_are_logged_to_the_run_and_version(state):
    client, run_id = state["client"], state["run_id"]
    logged = {a.path for a in client.list_artifacts(run_id, "export")}
    assert {"export/model.onnx", "export/model.int8.onnx", "export/report.json"} <= logged
    tags = client.get_model_version(MODEL, state["version"]).tags
    assert tags["export.int8_uri"] == f"runs:/{run_id}/export/model.int8.onnx"
    assert tags["export.fp32_path"] == state["summary"]["export"]["fp32"]
    assert client.get_run(run_id).data.tags["export.int8_path"] == state["summary"]["export"]["int8"]


def bento_model(home: Path, tag: str) -> dict:
    code = ("import bentoml, json, sys, os; m = bentoml.models.get(sys.argv[1]); "
            "print(json.dumps({'tag': str(m.tag), 'labels': m.info.labels, 'metadata': m.info.metadata, 'path': m.path, "
            "'files': sorted(os.listdir(m.path))}, default=str))")
    env = {**os.environ, "BENTOML_HOME": str(home / "bentoml")}
    result = subprocess.run([sys.executable, "-c", code, tag], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_bento_model_in_the_store_with_the_registry_version(state):
    tag = state["summary"]["bento_model"]["tag"]
    assert tag == f"{MODEL}:v{state['version']}"
    model = bento_model(state["home"], tag)
    assert model["labels"]["registry_version"] == state["version"]
    assert model["labels"]["model_name"] == MODEL and model["labels"]["run_id"] == state["run_id"]
    assert {"model.onnx", "model.int8.onnx", "metadata.json"} <= set(model["files"])
    assert model["metadata"]["labels"] == state["payload"]["labels"]
    assert model["metadata"]["thresholds"] == state["thresholds"]
    assert Path(model["path"]).is_relative_to(state["home"] / "bentoml")


def test_bento_import_from_a_registry_reference(state):
    result = ok_json(cli(state["home"], "bento", "import", "--model", f"models:/{MODEL}@candidate", "--json"))
    assert result["bento_model"]["tag"] == state["summary"]["bento_model"]["tag"]
    assert result["bento_model"]["reused"] is True  # the same files: the stored model stays


@pytest.mark.parametrize("reference, message", [
    (f"models:/{MODEL}@nope", "alias 'nope'"),
    ("models:/no-such-model@candidate", "no-such-model"),
    (f"models:/{MODEL}/99", "version 99"),
    ("runs:/0123456789abcdef0123456789abcdef", "no MLflow run"),
    ("s3://bucket/model.onnx", "not a model reference"),
    ("EMPTY_RUN", "no checkpoint/model.pt"),
])
def test_bad_references_exit_2_without_traceback(state, reference, message, monkeypatch, capsys):
    """In-process through the CLI's own entry point (the subprocess path is the test below)."""
    from chexops.cli import main

    if reference == "EMPTY_RUN":
        run = state["client"].create_run(state["client"].get_experiment_by_name("export-tests").experiment_id)
        reference = f"runs:/{run.info.run_id}"
    monkeypatch.setenv("CHEXOPS_HOME", str(state["home"]))
    with pytest.raises(SystemExit) as exit_:
        main(["export", "--model", reference, "--json", "--no-bento"])
    out, err = capsys.readouterr()
    assert exit_.value.code == 2, err[-2000:]
    assert "Traceback" not in err and out == ""
    assert "chexops: error:" in err and message in err


def test_bad_reference_from_the_command_line(state):
    result = cli(state["home"], "export", "--model", f"models:/{MODEL}@nope", "--json")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert f"chexops: error: models:/{MODEL}@nope: the registry has no model '{MODEL}' with alias 'nope'" in result.stderr


def test_bento_import_before_export_is_refused(state):
    run = state["client"].create_run(state["client"].get_experiment_by_name("export-tests").experiment_id)
    result = cli(state["home"], "bento", "import", "--model", f"runs:/{run.info.run_id}")
    assert result.returncode == 2 and "chexops export" in result.stderr and "Traceback" not in result.stderr


def test_thresholds_default_to_one_half_with_a_warning(state, monkeypatch, caplog, tmp_path):
    from chexops import model_ref

    monkeypatch.setenv("CHEXOPS_HOME", str(state["home"]))
    run = state["client"].create_run(state["client"].get_experiment_by_name("export-tests").experiment_id)
    ref = model_ref.resolve(f"runs:/{run.info.run_id}")
    assert ref.version == ""
    found, rule = model_ref.thresholds(ref, ["A", "B"], tmp_path)
    assert found == {"A": 0.5, "B": 0.5} and rule == "default-0.5"
    assert "no evaluation/thresholds.json" in caplog.text
