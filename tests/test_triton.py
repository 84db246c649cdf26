"""`chexops triton export`: a Triton model repository whose config.pbtxt parses as Triton's own
ModelConfig protobuf (the one tritonclient ships) and matches the ONNX file it holds; with `--backend python`,
a repository that the real `tritonserver` (nvidia-pytriton's, through `chexops triton serve`) loads and answers
with `/predict`'s probabilities, over HTTP and gRPC, and that dies with the command that started it."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time

import httpx
import numpy as np
import onnxruntime as ort
import psutil
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from chexops.core.processes import ServerProcess, free_port
from support import ROOT, child_env, run_cli

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
        assert config.dynamic_batching.max_queue_delay_microseconds == 2000  # the ONNX backend's default (GPU)
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


# --- the Python backend, in the real tritonserver ---------------------------------------------------------

STUB_ENV = "CHEXOPS_TRITON_PYTHON_ENV"  # child_env drops CHEXOPS_*: pass the stub's environment on when set


@pytest.fixture(scope="module")
def python_repository(served_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("triton-python")
    args = ["triton", "export", "--backend", "python", "--model", served_model.tag]  # its batching defaults
    result = run_cli(*args, "--out", str(out), "--json", env=child_env(served_model.home), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, json.loads(result.stdout)


def test_python_backend_configs(python_repository, served_model, tmp_path):
    out, summary = python_repository
    assert summary["models"] == {"bytes": "chexops-cxr-bytes", "tensor": "chexops-cxr-tensor"}
    for variant, data_type, dims in (("bytes", "TYPE_STRING", [1]), ("tensor", "TYPE_FP32", [1, 32, 32])):
        model_dir = out / summary["models"][variant]
        config = parse(model_dir / "config.pbtxt")
        assert config.backend == "python" and config.max_batch_size == 16
        assert [(t.name, model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in config.input] == [
            ("image", data_type, dims)
        ]
        assert [(t.name, list(t.dims), t.label_filename) for t in config.output] == [
            ("probabilities", [14], "labels.txt")
        ]
        assert list(config.dynamic_batching.preferred_batch_size) == [4, 8, 16]
        assert config.dynamic_batching.max_queue_delay_microseconds == 0  # on CPU, waiting for a batch never paid
        assert [(g.count, model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind)) for g in config.instance_group] == [
            (1, "KIND_CPU")
        ]
        assert config.parameters["threads"].string_value == "2"
        model_py = (model_dir / "1" / "model.py").read_text()
        assert "from chexops.serving.triton_backend import" in model_py and "class " not in model_py  # imported
    gpu = run_cli(
        "triton", "export", "--backend", "python", "--model", served_model.tag, "--gpu", "--gpus", "0,1",
        "--gpu-instances", "2", "--out", str(tmp_path), env=child_env(served_model.home), timeout=300,
    )  # fmt: skip
    assert gpu.returncode == 0, gpu.stderr[-3000:]
    (group,) = parse(tmp_path / "chexops-cxr-bytes" / "config.pbtxt").instance_group
    assert (model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind), group.count, list(group.gpus)) == (
        "KIND_GPU", 2, [0, 1],
    )  # fmt: skip
    onnx_gpu = run_cli("triton", "export", "--model", served_model.tag, "--gpu", "--out", str(tmp_path / "o"),
                       env=child_env(served_model.home), timeout=300)  # fmt: skip
    assert onnx_gpu.returncode == 2 and "--backend python" in onnx_gpu.stderr


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_tritonserver_answers_as_predict_and_dies_with_its_parent(
    python_repository, service, served_model, shared, tmp_path
):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    from chexops.imaging.decode import decode
    from chexops.serving.inference import OnnxModel

    out, summary = python_repository
    ports = [free_port() for _ in range(3)]
    env = child_env(served_model.home, **({STUB_ENV: os.environ[STUB_ENV]} if STUB_ENV in os.environ else {}))
    argv = [sys.executable, "-m", "chexops", "triton", "serve", "--repository", out, "--log", tmp_path / "triton.log"]
    argv += ["--http-port", ports[0], "--grpc-port", ports[1], "--metrics-port", ports[2]]
    cli = ServerProcess(argv, tmp_path / "serve.log", env=env, cwd=ROOT, name="chexops triton serve").start()
    try:
        deadline = time.monotonic() + 120
        while "ready: " not in cli.log_path.read_text() and cli.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "ready: chexops-cxr-bytes, chexops-cxr-tensor" in cli.log_path.read_text(), cli.logs()
        server = psutil.Process(cli.pid).children()[0]
        assert server.name() == "tritonserver" and set(summary["models"].values()) <= set(
            m["name"] for m in httpx.post(f"http://127.0.0.1:{ports[0]}/v2/repository/index").json()
        )
        model = OnnxModel.load(out / "chexops-cxr-tensor" / "1" / "model.onnx", threads=1)
        files = sorted((shared / "real-cxr").glob("*.png")) + sorted((shared / "real-cxr").glob("*.dcm"))
        assert len(files) >= 5
        clients = {"http": (httpclient, f"127.0.0.1:{ports[0]}"), "grpc": (grpcclient, f"127.0.0.1:{ports[1]}")}
        for protocol, (module, url) in clients.items():
            client = module.InferenceServerClient(url=url)
            assert all(client.is_model_ready(m) for m in summary["models"].values())

            def infer(name, array, datatype, module=module, client=client):
                tensor = module.InferInput("image", list(array.shape), datatype)
                tensor.set_data_from_numpy(array)
                return client.infer(name, [tensor]).as_numpy("probabilities")

            expected = []
            for path in files:
                data = path.read_bytes()
                response = httpx.post(
                    f"{service.url}/predict", files={"image": ("x", data)}, headers=service.headers, timeout=60
                )
                assert response.status_code == 200, response.text
                predicted = np.array([f["probability"] for f in response.json()["findings"]])
                by_bytes = infer("chexops-cxr-bytes", np.array([[data]], dtype=object), "BYTES")[0]
                x = model.preprocess(decode(data).grey)[None].astype(np.float32)
                by_tensor = infer("chexops-cxr-tensor", x, "FP32")[0]
                for answer in (by_bytes, by_tensor):  # /predict rounds to 6 decimals
                    np.testing.assert_allclose(answer, predicted, rtol=0, atol=1e-6, err_msg=f"{protocol} {path}")
                expected.append(by_bytes)
            # several images in one request: one ONNX Runtime batch, each row its own image's answer
            batch = infer("chexops-cxr-bytes", np.array([[f.read_bytes()] for f in files], dtype=object), "BYTES")
            np.testing.assert_allclose(batch, np.stack(expected), rtol=0, atol=1e-6)
            with pytest.raises(Exception, match="not a PNG, JPEG or DICOM"):
                infer("chexops-cxr-bytes", np.array([[b"not an image"]], dtype=object), "BYTES")
        os.kill(cli.pid, signal.SIGKILL)  # the parent dies as a crash would: the server follows it
        deadline = time.monotonic() + 30
        while any(listening(p) for p in ports) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p for p in ports if listening(p)], (tmp_path / "triton.log").read_text()[-3000:]
        psutil.wait_procs([server], timeout=10)
        assert not server.is_running()
        left = [
            p.info for p in psutil.process_iter(["pid", "cmdline"]) if str(out) in " ".join(p.info["cmdline"] or [])
        ]
        assert not left, left
    finally:
        cli.stop()


def test_serve_refusals_are_exit_2(python_repository, served_model, tmp_path):
    out, _ = python_repository
    env = child_env(served_model.home, **({STUB_ENV: os.environ[STUB_ENV]} if STUB_ENV in os.environ else {}))
    ports = ["--http-port", str(free_port()), "--metrics-port", str(free_port())]  # 8000 may be anyone's
    empty = run_cli("triton", "serve", "--repository", str(tmp_path), *ports, env=env, timeout=120)
    assert empty.returncode == 2 and "holds no Triton model" in empty.stderr and "Traceback" not in empty.stderr
    no_env = run_cli(
        "triton", "serve", "--repository", str(out), *ports, "--grpc-port", str(free_port()),
        "--python-env", str(tmp_path / "none"), env=env, timeout=120,
    )  # fmt: skip
    assert no_env.returncode == 2 and "make venv" in no_env.stderr and "Traceback" not in no_env.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        busy = run_cli("triton", "serve", "--repository", str(out), *ports, "--grpc-port", port, env=env, timeout=120)
    assert busy.returncode == 2 and port in busy.stderr and "Traceback" not in busy.stderr


def test_batch_sweep_accounts_for_every_request(tmp_path):
    """The benchmark that chose the batcher's defaults: the session at each batch size, then Triton's batcher,
    whose statistics must account for every request sent (sequential runs, warm-up and the concurrent ones) and,
    given time to wait, form batches of more than one."""
    import subprocess

    from PIL import Image

    image = tmp_path / "grey.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(image)
    env = child_env(tmp_path, **({STUB_ENV: os.environ[STUB_ENV]} if STUB_ENV in os.environ else {}))
    argv = [sys.executable, "-m", "chexops.benchmarks.batch_sweep", "--architecture", "small", "--size", "32"]
    argv += ["--width", "8", "--batches", "1,4", "--seconds", "0.2", "--triton", "--configs", "4:0,4:50000"]
    argv += ["--image", str(image), "--concurrency", "4", "--requests", "24"]
    argv += ["--warmup", "2", "--markdown"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert [r["batch"] for r in result["session"]] == [1, 4]
    assert all(r["images_per_s"] > 0 and r["runs"] >= 3 for r in result["session"])
    sent = 2 + 3 + 24  # warm-up, sequential runs, concurrent requests
    for row in result["triton"]:
        assert sum(int(size) * count for size, count in row["batches_formed"].items()) == sent, row
        assert max(int(size) for size in row["batches_formed"]) <= row["max_batch_size"]
    patient = result["triton"][1]
    assert patient["queue_delay_us"] == 50000 and max(int(s) for s in patient["batches_formed"]) > 1, patient
    assert "| Triton max batch |" in done.stderr
