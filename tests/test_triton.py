"""`chexops triton export`: a Triton model repository whose config.pbtxt parses as Triton's own
ModelConfig protobuf (the one tritonclient ships) and matches the ONNX file it holds."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from support import child_env, run_cli

pytestmark = pytest.mark.slow


def parse(path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())  # strict: unknown fields fail


@pytest.fixture(scope="module")
def repository(served_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("triton")
    result = run_cli(
        "triton",
        "export",
        "--model",
        served_model.tag,
        "--out",
        str(out),
        "--max-batch-size",
        "32",
        "--json",
        env=child_env(served_model.home),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out, json.loads(result.stdout)


def test_config_matches_the_onnx_file(repository):
    out, summary = repository
    model_dir = out / summary["model"]
    onnx_file = model_dir / "1" / "model.onnx"
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    for config, kind in (
        (parse(model_dir / "config.pbtxt"), "KIND_CPU"),
        (parse(model_dir / "configs" / "gpu.pbtxt"), "KIND_GPU"),
    ):
        assert config.name == summary["model"] == "chexops-cxr"
        assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 32
        assert [(t.name, list(t.dims)) for t in config.input] == [(i.name, i.shape[1:]) for i in session.get_inputs()]
        assert [(t.name, list(t.dims)) for t in config.output] == [(o.name, o.shape[1:]) for o in session.get_outputs()]
        assert all(t.data_type == model_config_pb2.TYPE_FP32 for t in [*config.input, *config.output])
        assert config.HasField("dynamic_batching") and max(config.dynamic_batching.preferred_batch_size) <= 32
        assert [model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind) for g in config.instance_group] == [kind]
    cpu = parse(model_dir / "config.pbtxt")
    assert cpu.parameters["intra_op_thread_count"].string_value == "2"
    labels = (model_dir / "labels.txt").read_text().split("\n")[:-1]
    assert labels == json.loads(session.get_modelmeta().custom_metadata_map["labels"])
    assert [t.label_filename for t in cpu.output if t.name == "probabilities"] == ["labels.txt"]
    # the file Triton would run answers a batch, as the config says it may
    (probs,) = session.run(["probabilities"], {"image": np.zeros((3, *cpu.input[0].dims), dtype=np.float32)})
    assert probs.shape == (3, len(labels))


def test_refusals_are_exit_2(repository, served_model, tmp_path):
    out, _ = repository
    env = child_env(served_model.home)
    again = run_cli("triton", "export", "--model", served_model.tag, "--out", str(out), env=env, timeout=300)
    assert again.returncode == 2 and "--overwrite" in again.stderr and "Traceback" not in again.stderr
    unknown = run_cli("triton", "export", "--model", "chexops-cxr:v999", "--out", str(tmp_path), env=env, timeout=300)
    assert unknown.returncode == 2 and "v999" in unknown.stderr and "Traceback" not in unknown.stderr
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    bad = run_cli(
        "triton", "export", "--onnx", str(tmp_path / "bad.onnx"), "--out", str(tmp_path / "r"), env=env, timeout=300
    )
    assert bad.returncode == 2 and "not an ONNX model" in bad.stderr and "Traceback" not in bad.stderr
