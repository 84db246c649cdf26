"""`chexops export` and `chexops bento import`, end to end on a tiny model driven through the real
`chexops train`, `chexops evaluate` and `chexops register` (its gate) into a local MLflow (SQLite),
then exported from `models:/chexops-cxr@candidate`: ONNX fp32 + int8, metadata, the export gate
(parity, features, int8 AUROC: exit 3), `--unevaluated`, the Bento model store (sha256, refusal of
other bytes), serving by registry reference, bad references."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from chexops.core.files import sha256_file
from chexops.core.processes import ServerProcess, free_port
from chexops.train.checkpoint import load_checkpoint
from mlflow_fixtures import synth_dataset, train_run, write_config
from support import ROOT, chexops, chexops_json, child_env, run_cli

pytestmark = pytest.mark.slow

PROVENANCE = {"kind": "synthetic", "description": "synthetic CheXpert-layout test images"}

MODEL = "chexops-cxr"
# The tiny test model: a lower bar than the default, slices of synthetic data are small and noisy.
GATE = ("--min-mean-auroc", "0.7", "--max-slice-gap", "0.2", "--min-slice-positives", "15", "--max-regression", "0.02")


def ok_json(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    """A tiny model trained once, evaluated by `chexops evaluate`, registered by `chexops register`
    (gate passed: version 1, alias candidate), then exported once by `chexops export`."""
    from mlflow.tracking import MlflowClient

    home = tmp_path_factory.mktemp("export-home")
    env = {"CHEXOPS_HOME": str(home), "MLFLOW_TRACKING_URI": None}
    config = write_config(
        home / "tiny.yaml",
        synth_dataset(tmp_path_factory),
        name="tiny-export",
        tracking={"experiment": "export-tests"},
        data={"provenance": PROVENANCE},
    )
    trained = train_run(config, **env)
    run_id = trained.run_id
    evaluated = chexops_json("evaluate", "--run", run_id, "--bootstrap", "20", "--hard-cases", "2", **env)
    registered = chexops_json("register", "--run", run_id, *GATE, **env)
    assert registered["passed"] and registered["version"] == "1" and registered["alias"] == "candidate"

    result = run_cli(
        "export", "--model", f"models:/{MODEL}@candidate", "--calibration", "64", "--runs", "10", "--json", home=home
    )
    summary = ok_json(result)
    uri = f"sqlite:///{home / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    payload = load_checkpoint(Path(client.download_artifacts(run_id, "checkpoint/model.pt", str(home))))
    return {
        "home": home,
        "client": client,
        "run_id": run_id,
        "version": "1",
        "summary": summary,
        "env": env,
        "stderr": result.stderr,
        "payload": payload,
        "thresholds": evaluated["thresholds"],
        "evaluated": evaluated,
        "rule": evaluated["rule"],
        "trained": trained,
    }


def validation_images(payload: dict, limit: int | None = None) -> np.ndarray:
    from chexops.config import Config
    from chexops.data.loading import load_splits
    from chexops.export.quantize import split_inputs
    from chexops.imaging.preprocessing import PreprocessSpec

    splits = load_splits(Config.model_validate(payload["config"]))
    return split_inputs(splits.val, PreprocessSpec.from_dict(payload["preprocessing"]), limit=limit)


def torch_model(payload: dict):
    from chexops.config import ModelConfig
    from chexops.imaging.preprocessing import PreprocessSpec
    from chexops.train.models import build_model

    model = build_model(
        ModelConfig(**payload["model_config"]),
        len(payload["labels"]),
        PreprocessSpec.from_dict(payload["preprocessing"]),
    )
    model.load_state_dict(payload["model"])
    return model.eval()


def session(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_export_writes_one_onnx_file_each_and_reports(state):
    e = state["summary"]["export"]
    out = Path(e["dir"])
    assert out == state["home"] / "exports" / f"{MODEL}-v{state['version']}"
    assert sorted(p.name for p in out.iterdir()) == [
        "model.dynamic-int8.onnx",
        "model.int8.onnx",
        "model.onnx",
        "report.json",
    ]
    for key in ("fp32", "int8", "dynamic_int8"):
        onnx.checker.check_model(e[key])
    assert Path(e["int8"]).stat().st_size < Path(e["fp32"]).stat().st_size
    assert e["passed"] is True and e["evaluated"] is True
    assert [(g["criterion"], g["passed"]) for g in e["gate"]] == [
        ("parity_probabilities", True),
        ("parity_features", True),
        ("int8_mean_auroc_drop", True),
    ]
    assert next(g for g in e["gate"] if g["criterion"] == "int8_mean_auroc_drop")["limit"] == 0.005
    for key in (
        "int8_auroc_delta",
        "int8_latency_ratio",
        "dynamic_int8_auroc_delta",
        "dynamic_int8_latency_ratio",
        "fp32_latency_ms",
    ):
        assert isinstance(e[key], float) and np.isfinite(e[key]), key
    assert abs(e["int8_auroc_delta"]) < 0.05  # calibrated on real training images, int8 barely moves AUROC
    assert e["calibration_images"] == 64 and e["latency"] == {
        "batch": 1,
        "intra_op_threads": 2,
        "runs": 10,
        "statistic": "median",
    }
    assert e["model"] == {
        "uri": f"models:/{MODEL}@candidate",
        "name": MODEL,
        "version": state["version"],
        "alias": "candidate",
        "run_id": state["run_id"],
    }
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
    from chexops.export.onnx import read_metadata

    e, payload = state["summary"]["export"], state["payload"]
    for key, precision in (("fp32", "fp32"), ("int8", "int8-static-qdq"), ("dynamic_int8", "int8-dynamic")):
        meta = read_metadata(e[key])
        assert json.loads(meta["labels"]) == payload["labels"]
        assert json.loads(meta["preprocessing"]) == payload["preprocessing"]
        if key == "int8":  # its own thresholds, chosen by the same rule (test_int8_thresholds_... checks how)
            assert (
                json.loads(meta["thresholds"]) == e["int8_thresholds"]
                and meta["thresholds_rule"] == e["int8_thresholds_rule"]
            )
        else:  # exactly what `chexops evaluate` chose and the gate approved
            assert json.loads(meta["thresholds"]) == state["thresholds"] and meta["thresholds_rule"] == state["rule"]
        assert meta["evaluated"] == "true"
        assert meta["registry_version"] == state["version"] and meta["model_name"] == MODEL
        assert meta["run_id"] == state["run_id"] == payload["run_id"]
        assert meta["data_version"] == payload["data_version"] == state["trained"].data_version
        assert meta["precision"] == precision
        assert json.loads(meta["training_data"]) == PROVENANCE  # what the service shows: not for clinical use
        reference = json.loads(
            meta["drift_reference"]
        )  # chexops.imaging.drift: what a service's drift score compares with
        assert reference["images"] == e["calibration_images"] and len(reference["intensity"]["shares"]) > 5
        head = json.loads(meta["head"])
        assert np.array_equal(np.asarray(head["weight"], dtype=np.float32), payload["model"]["head.weight"].numpy())
        assert np.array_equal(np.asarray(head["bias"], dtype=np.float32), payload["model"]["head.bias"].numpy())


def test_int8_auroc_and_thresholds_are_its_own_on_validation(state):
    """The report's int8 AUROC change and the int8 thresholds, recomputed from the int8 file itself."""
    from chexops.config import Config
    from chexops.data.loading import load_splits
    from chexops.evaluation.metrics import choose_threshold
    from chexops.train.metrics import auroc_per_label, mean_auroc

    e, payload = state["summary"]["export"], state["payload"]
    val = load_splits(Config.model_validate(payload["config"])).val
    x = validation_images(payload)
    labels = payload["labels"]
    means = {}
    for key in ("fp32", "int8"):
        probs = session(e[key]).run(["probabilities"], {"image": x})[0]
        means[key] = mean_auroc(auroc_per_label(probs, val.targets, val.mask, labels), e["mean_over"])
        if key == "int8":
            for j, label in enumerate(labels):
                keep = val.mask[:, j] > 0
                chosen = choose_threshold(val.targets[keep, j], probs[keep, j], state["rule"])
                expected = state["thresholds"][label] if np.isnan(chosen) else chosen
                assert e["int8_thresholds"][label] == pytest.approx(expected, abs=1e-6), label
    assert means["fp32"] == pytest.approx(e["fp32_mean_auroc"], abs=1e-9)
    assert means["int8"] - means["fp32"] == pytest.approx(e["int8_auroc_delta"], abs=1e-9)
    assert e["int8_thresholds_rule"] == f"{state['rule']} on int8 validation probabilities"


def test_parity_with_pytorch_on_validation_images(state):
    x = validation_images(state["payload"], limit=40)
    model = torch_model(state["payload"])
    with torch.no_grad():
        expected = torch.sigmoid(model(torch.from_numpy(x))).numpy()
    probs, _ = session(state["summary"]["export"]["fp32"]).run(None, {"image": x})
    assert np.abs(probs - expected).max() <= 1e-4


def test_parity_with_pytorch_on_real_radiographs(state, shared):
    from chexops.imaging.preprocessing import PreprocessSpec, load_image, preprocess

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
    from chexops.export.onnx import class_activation_maps, read_metadata

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
    e = state["summary"]["export"]
    assert (tags["export.fp32_sha256"], tags["export.int8_sha256"]) == (sha256_file(e["fp32"]), sha256_file(e["int8"]))


def bento_model(home: Path, tag: str) -> dict:
    code = (
        "import bentoml, json, sys, os; m = bentoml.models.get(sys.argv[1]); "
        "print(json.dumps({'tag': str(m.tag), 'labels': m.info.labels, 'metadata': m.info.metadata, 'path': m.path, "
        "'files': sorted(os.listdir(m.path))}, default=str))"
    )
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
    assert model["labels"]["evaluated"] == "true"
    e = state["summary"]["export"]
    assert model["metadata"]["sha256"] == {
        "model.onnx": sha256_file(e["fp32"]),
        "model.int8.onnx": sha256_file(e["int8"]),
    }
    assert model["metadata"]["sha256"] == {
        f: sha256_file(Path(model["path"]) / f) for f in ("model.onnx", "model.int8.onnx")
    }
    assert {"model.onnx", "model.int8.onnx", "metadata.json"} <= set(model["files"])
    assert model["metadata"]["labels"] == state["payload"]["labels"]
    assert model["metadata"]["thresholds"] == state["thresholds"]
    assert Path(model["path"]).is_relative_to(state["home"] / "bentoml")


def test_bento_import_from_a_registry_reference(state):
    result = ok_json(run_cli("bento", "import", "--model", f"models:/{MODEL}@candidate", "--json", home=state["home"]))
    assert result["bento_model"]["tag"] == state["summary"]["bento_model"]["tag"]
    assert result["bento_model"]["reused"] is True  # the same files: the stored model stays


@pytest.mark.parametrize(
    "reference, message",
    [
        (f"models:/{MODEL}@nope", "alias 'nope'"),
        ("models:/no-such-model@candidate", "no-such-model"),
        (f"models:/{MODEL}/99", "version 99"),
        ("runs:/0123456789abcdef0123456789abcdef", "no MLflow run"),
        ("s3://bucket/model.onnx", "not a model reference"),
        ("EMPTY_RUN", "no checkpoint/model.pt"),
    ],
)
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
    result = run_cli("export", "--model", f"models:/{MODEL}@nope", "--json", home=state["home"])
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert (
        f"chexops: error: models:/{MODEL}@nope: the registry has no model '{MODEL}' with alias 'nope'" in result.stderr
    )


def test_bento_import_before_export_is_refused(state):
    run = state["client"].create_run(state["client"].get_experiment_by_name("export-tests").experiment_id)
    result = run_cli("bento", "import", "--model", f"runs:/{run.info.run_id}", home=state["home"])
    assert result.returncode == 2 and "chexops export" in result.stderr and "Traceback" not in result.stderr


def test_thresholds_default_to_one_half_with_a_warning(state, monkeypatch, caplog, tmp_path):
    from chexops.registry import refs as model_ref

    monkeypatch.setenv("CHEXOPS_HOME", str(state["home"]))
    run = state["client"].create_run(state["client"].get_experiment_by_name("export-tests").experiment_id)
    ref = model_ref.resolve(f"runs:/{run.info.run_id}")
    assert ref.version == ""
    found, rule, target = model_ref.thresholds(ref, ["A", "B"], tmp_path)
    assert found == {"A": 0.5, "B": 0.5} and rule == "default-0.5" and target is None
    assert "no evaluation/thresholds.json" in caplog.text


# --- only what the gate approved is exported as approved ------------------------------------------------


def test_a_run_reference_needs_unevaluated(state):
    code, out, err = chexops(
        "export", "--model", f"runs:/{state['run_id']}", "--no-bento", "--json", CHEXOPS_HOME=str(state["home"])
    )
    assert code == 2 and out == "" and "Traceback" not in err
    assert "not a registry version that passed the gate" in err and "--unevaluated" in err


def test_a_version_without_gate_verdicts_needs_unevaluated(state):
    """A version made by hand (not by `chexops register`) is not approved, whatever its alias says."""
    client = state["client"]
    version = client.create_model_version(MODEL, f"runs:/{state['run_id']}/checkpoint", run_id=state["run_id"])
    try:
        code, out, err = chexops(
            "export", "--model", f"models:/{MODEL}/{version.version}", "--no-bento", CHEXOPS_HOME=str(state["home"])
        )
        assert code == 2 and "carries no gate verdicts" in err and "--unevaluated" in err and "Traceback" not in err
    finally:
        client.delete_model_version(MODEL, version.version)


def test_unevaluated_export_says_so_everywhere(state, tmp_path):
    from chexops.export.onnx import read_metadata
    from chexops.serving.inference import OnnxModel

    client, run_id = state["client"], state["run_id"]
    summary = ok_json(
        run_cli(
            "export",
            "--model",
            f"runs:/{run_id}",
            "--unevaluated",
            "--calibration",
            "16",
            "--runs",
            "2",
            "--json",
            home=state["home"],
        )
    )
    e = summary["export"]
    assert e["evaluated"] is False
    for key in ("fp32", "int8"):
        meta = read_metadata(e[key])
        assert meta["evaluated"] == "false" and meta["registry_version"] == ""  # never speaks for version 1
    assert summary["bento_model"]["tag"] == f"{MODEL}:run-{run_id[:12]}"
    assert summary["bento_model"]["labels"]["evaluated"] == "false"
    assert OnnxModel.load(e["fp32"]).describe()["evaluated"] is False  # what GET /model answers
    assert OnnxModel.load(state["summary"]["export"]["fp32"]).describe()["evaluated"] is True
    # The approved export of version 1 stays what the registry points at.
    tags = client.get_model_version(MODEL, state["version"]).tags
    assert tags["export.fp32_uri"] == f"runs:/{run_id}/export/model.onnx"
    assert tags["export.fp32_sha256"] == sha256_file(state["summary"]["export"]["fp32"])
    assert (
        client.get_run(run_id).data.tags["export_unevaluated.fp32_uri"]
        == f"runs:/{run_id}/export-unevaluated/model.onnx"
    )


def test_the_export_gate_refuses_with_exit_3(state, monkeypatch, tmp_path):
    """Injected defects: features that differ from PyTorch (wrong CAMs) and an int8 model calibrated on
    blank images (it loses AUROC). The probabilities still agree. Nothing is logged or imported."""
    import chexops.export.onnx as export
    from chexops.export import quantize

    real_outputs, real_quantize = export.torch_outputs, quantize.quantize_static_qdq

    def shifted_features(model, x, batch_size=64):
        out = real_outputs(model, x, batch_size)
        return {**out, "features": out["features"] + 0.5}

    def blank_calibration(fp32, out, calibration, *args, **kwargs):
        return real_quantize(fp32, out, np.full_like(calibration, 50.0), *args, **kwargs)

    monkeypatch.setattr(export, "torch_outputs", shifted_features)
    monkeypatch.setattr(quantize, "quantize_static_qdq", blank_calibration)
    tags_before = state["client"].get_model_version(MODEL, state["version"]).tags
    out = tmp_path / "refused"
    code, stdout, err = chexops(
        "export",
        "--model",
        f"models:/{MODEL}@candidate",
        "--out",
        str(out),
        "--calibration",
        "8",
        "--runs",
        "1",
        "--json",
        CHEXOPS_HOME=str(state["home"]),
    )
    assert code == 3, err[-2000:]
    assert stdout == "" and "Traceback" not in err and "export gate refused" in err
    report = json.loads((out / "report.json").read_text())
    verdicts = {g["criterion"]: g for g in report["gate"]}
    assert verdicts["parity_probabilities"]["passed"] is True
    assert verdicts["parity_features"]["passed"] is False and verdicts["parity_features"]["value"] == pytest.approx(
        0.5, abs=1e-4
    )
    assert verdicts["int8_mean_auroc_drop"]["passed"] is False and verdicts["int8_mean_auroc_drop"]["value"] > 0.005
    assert "parity_features" in err and "int8_mean_auroc_drop" in err
    assert state["client"].get_model_version(MODEL, state["version"]).tags == tags_before


def test_export_gate_limits():
    from chexops.export.onnx import export_gate

    fine = {"probabilities": 1e-6, "features": 1e-5}
    assert all(v["passed"] for v in export_gate(fine, 3.0, -0.004))
    assert [v["passed"] for v in export_gate(fine, 3.0, -0.006)] == [True, True, False]
    assert [v["passed"] for v in export_gate(fine, 3.0, -0.001, max_int8_auroc_drop=0.0)] == [True, True, False]
    assert [v["passed"] for v in export_gate({"probabilities": 2e-4, "features": 5e-4}, 2.0, 0.0)] == [
        False,
        False,
        True,
    ]
    assert export_gate(fine, 1.0, float("nan"))[2]["passed"] is False  # an unmeasurable int8 AUROC is no pass


# --- the Bento store: one version, one set of bytes ------------------------------------------------------


def test_a_tampered_reimport_of_the_same_version_is_refused(state):
    """Other bytes for version 1 (its run's exported model.onnx edited in the artifact store) are
    refused by `chexops bento import`, exit 2; the stored model stays as it was."""
    from chexops.export.onnx import read_metadata, write_metadata

    home = state["home"]
    stored = bento_model(home, f"{MODEL}:v1")
    from urllib.parse import urlparse

    artifact = Path(urlparse(state["client"].get_run(state["run_id"]).info.artifact_uri).path) / "export" / "model.onnx"
    original = artifact.read_bytes()
    try:
        meta = read_metadata(artifact)
        write_metadata(artifact, {**meta, "thresholds": json.dumps({k: 0.01 for k in json.loads(meta["thresholds"])})})
        result = run_cli("bento", "import", "--model", f"models:/{MODEL}@candidate", home=home)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert f"{MODEL}:v1 already holds other files" in result.stderr and "never replaced" in result.stderr
    finally:
        artifact.write_bytes(original)
    assert bento_model(home, f"{MODEL}:v1")["metadata"]["sha256"] == stored["metadata"]["sha256"]


# --- serving: a registry reference, resolved to the exact Bento model -------------------------------------


def test_serve_resolves_the_candidate_to_its_bento_model(state, tmp_path):
    import httpx

    port, log_path = free_port(), tmp_path / "serve.log"
    env = child_env(state["home"], CHEXOPS_API_KEYS="test:export-test-key-0123456789")
    serve = [sys.executable, "-m", "chexops", "serve", "--port", str(port), "--model", f"models:/{MODEL}@candidate"]
    with ServerProcess(
        serve, log_path, url=f"http://127.0.0.1:{port}", env=env, cwd=ROOT, name="chexops serve"
    ) as server:
        served = httpx.get(f"{server.url}/model", timeout=10).json()
    assert (served["name"], served["version"], served["run_id"]) == (MODEL, state["version"], state["run_id"])
    assert served["evaluated"] is True and served["thresholds"] == state["thresholds"]
    assert f"models:/{MODEL}@candidate = Bento model {MODEL}:v1" in log_path.read_text()


def test_serve_with_nothing_registered_says_what_to_do(tmp_path):
    result = run_cli("serve", "--port", str(free_port()), home=tmp_path / "empty-home", timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and f"nothing to serve for models:/{MODEL}@candidate" in result.stderr
    assert "make demo" in result.stderr
    assert not (tmp_path / "empty-home" / "mlflow.db").exists()  # asking created no registry


@pytest.mark.parametrize(
    "model, message",
    [
        (f"{MODEL}:latest", "never :latest"),
        (f"models:/{MODEL}@production", "no model 'chexops-cxr' with alias 'production'"),
        (f"{MODEL}:v9", f"no Bento model {MODEL}:v9"),
    ],
)
def test_serve_refuses_what_is_not_an_exact_approved_model(state, model, message):
    result = run_cli("serve", "--port", str(free_port()), "--model", model, home=state["home"], timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr and message in result.stderr, result.stderr[
        -2000:
    ]


def test_serve_refuses_a_bento_model_edited_in_place(state, tmp_path):
    store = tmp_path / "bentoml"
    shutil.copytree(state["home"] / "bentoml", store, symlinks=True)
    edited = next(store.glob(f"models/{MODEL}/v1/model.int8.onnx"))
    edited.write_bytes(edited.read_bytes() + b"\0")
    result = run_cli(
        "serve",
        "--port",
        str(free_port()),
        "--model",
        f"models:/{MODEL}@candidate",
        home=state["home"],
        timeout=120,
        env={"BENTOML_HOME": str(store)},
    )
    assert result.returncode == 2 and "do not match the sha256 recorded at import" in result.stderr, result.stderr[
        -2000:
    ]
