"""The training loop, end to end on small synthetic data: learning, tracking, resume, DDP, a real MLflow server."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from chexops.data.synth import synthesize
from chexops.train.checkpoint import load_checkpoint
from mlflow_fixtures import mlflow_server as running_mlflow
from support import ROOT, run_cli


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    synthesize(root, patients=300, valid_patients=120, image_size=48, seed=0, progress=False)
    return root


def tiny_config(tmp_path: Path, synth_root: Path, file: str = "tiny.yaml", cache_images: bool = True, **train) -> Path:
    config = {
        "name": "tiny",
        "seed": 0,
        "data": {
            "csv": str(synth_root / "CheXpert-v1.0-small/train.csv"),
            "test_csv": str(synth_root / "CheXpert-v1.0-small/valid.csv"),
            "root": str(synth_root),
            "val_fraction": 0.2,
            "cache_images": cache_images,
        },
        "preprocess": {"size": 32, "mean": [0.45], "std": [0.25]},
        "model": {"name": "small", "width": 12},
        "train": {
            "epochs": 6,
            "batch_size": 32,
            "optimizer": "adamw",
            "lr": 0.004,
            "schedule": "onecycle",
            "checkpoint_every": 10,
            **train,
        },
        "tracking": {"experiment": "tests"},
    }
    path = tmp_path / file
    path.write_text(yaml.safe_dump(config))
    return path


def train_json(*args: str, env: dict | None = None) -> dict:
    result = run_cli("train", *args, "--json", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` process with a SQLite store and served artifacts."""
    base = tmp_path_factory.mktemp("mlflow-server")
    with running_mlflow(base, f"sqlite:///{base / 'mlflow.db'}") as uri:
        yield uri


@pytest.mark.slow
def test_trains_and_tracks_on_a_real_mlflow_server(tmp_path, synth_root, mlflow_server):
    env = {"MLFLOW_TRACKING_URI": mlflow_server, "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"}
    summary = train_json("--config", str(tiny_config(tmp_path, synth_root)), env=env)
    assert summary["tracking_uri"] == mlflow_server
    assert summary["test"]["mean_auroc"] >= 0.75, summary  # a working loop learns the synthetic findings
    assert summary["mean_over"] == ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]

    client = MlflowClient(mlflow_server)
    run = client.get_run(summary["run_id"])
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    assert params["model.name"] == "small" and params["train.lr"] == "0.004"
    assert params["data.policy.uncertain_per_label.Atelectasis"] == "ones"
    assert len(tags["git_commit"]) == 40 and tags["data_version"] == summary["data_version"]
    history = client.get_metric_history(run.info.run_id, "val_mean_auroc")
    assert [m.step for m in history] == list(range(1, summary["epochs_run"] + 1))
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == summary["epochs_run"]
    for label in ("Atelectasis", "Cardiomegaly", "Pleural_Effusion"):
        assert f"val_auroc.{label}" in metrics
    assert metrics["test_auroc"] == pytest.approx(summary["test"]["auroc"])
    assert any(key.startswith("system/") for key in metrics), sorted(metrics)

    names = {a.path for a in client.list_artifacts(run.info.run_id)} | {
        a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")
    }
    assert {"config.yaml", "labels.json", "preprocessing.json", "data_fingerprint.json", "checkpoint/model.pt"} <= names
    mlflow.set_tracking_uri(mlflow_server)
    local = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="data_fingerprint.json", dst_path=str(tmp_path)
    )
    fingerprint = json.loads(Path(local).read_text())
    assert (
        fingerprint["raw_counts"]["Edema"]["uncertain"] > 0
        and fingerprint["policy_counts"]["train"]["Edema"]["ignored"] == 0
    )
    ckpt = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="checkpoint/model.pt", dst_path=str(tmp_path)
    )
    payload = load_checkpoint(ckpt)
    assert tags["init"] == "random" and summary["init"] == "random"
    assert (
        payload["labels"][0] == "No Finding"
        and payload["preprocessing"]["size"] == 32
        and payload["run_id"] == run.info.run_id
    )


@pytest.mark.slow
def test_zero_learning_rate_learns_nothing_and_stops_early(tmp_path, synth_root):
    summary = train_json("--config", str(tiny_config(tmp_path, synth_root, lr=0.0, schedule="constant", patience=1)))
    assert summary["test"]["mean_auroc"] < 0.65  # the synthetic findings are not guessable without learning
    # weights stay put, only BatchNorm statistics settle: early stopping ends the run one epoch after its best
    assert summary["epochs_run"] == summary["best_epoch"] + 1 < 6


@pytest.mark.slow
def test_gradient_accumulation_counts_optimizer_steps(tmp_path, synth_root):
    config = tiny_config(tmp_path, synth_root, epochs=1, batch_size=16, accum_steps=3)
    summary = train_json("--config", str(config))
    rows = summary_rows(config)
    assert summary["steps"] == math.ceil(math.ceil(rows / 16) / 3)  # optimiser steps: batches of 16, 3 per step


def summary_rows(config: Path) -> int:
    from chexops.config import load_config
    from chexops.data.loading import load_splits

    return len(load_splits(load_config(config)).train)


@pytest.mark.slow
def test_sigkill_then_resume_ends_where_an_uninterrupted_run_ends(tmp_path, synth_root):
    reference = train_json(
        "--config",
        str(tiny_config(tmp_path, synth_root, epochs=4, checkpoint_every=5)),
        "--checkpoint-dir",
        str(tmp_path / "ref"),
    )
    # the killed run decodes in 2 DataLoader worker processes, uncached: the same batches, the same result
    config = tiny_config(
        tmp_path, synth_root, epochs=4, checkpoint_every=5, num_workers=2, file="workers.yaml", cache_images=False
    )

    ckpt_dir = tmp_path / "killed"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "chexops",
            "train",
            "--config",
            str(config),
            "--checkpoint-dir",
            str(ckpt_dir),
            "--json",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while not (ckpt_dir / "last.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "training ended before its first checkpoint"
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = torch.load(ckpt_dir / "last.pt", weights_only=True)
    saved["state"] = json.loads(saved["state"])
    assert 0 < saved["state"]["step"] < reference["steps"]

    resumed = train_json("--config", str(config), "--checkpoint-dir", str(ckpt_dir))
    assert resumed["run_id"] == saved["state"]["run_id"]  # the same MLflow run continues
    assert resumed["steps"] == reference["steps"] and resumed["best_epoch"] == reference["best_epoch"]
    assert resumed["mean_auroc"] == pytest.approx(reference["mean_auroc"], abs=1e-4)
    assert resumed["test"]["mean_auroc"] == pytest.approx(reference["test"]["mean_auroc"], abs=1e-4)
    assert not (ckpt_dir / "last.pt").exists()

    weights = []
    for summary in (reference, resumed):
        mlflow.set_tracking_uri(summary["tracking_uri"])
        path = mlflow.artifacts.download_artifacts(summary["model_uri"], dst_path=str(tmp_path / summary["run_id"]))
        weights.append(load_checkpoint(path)["model"])
    diff = max(float((weights[0][k].float() - weights[1][k].float()).abs().max()) for k in weights[0])
    assert diff < 1e-4


@pytest.mark.slow
def test_distributed_data_parallel_on_cpu_with_gloo(tmp_path, synth_root):
    config = tiny_config(tmp_path, synth_root, epochs=2)
    torchrun = Path(sys.executable).parent / "torchrun"
    result = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "chexops",
            "train",
            "--config",
            str(config),
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1  # only rank 0 reports
    summary = summaries[0]
    assert summary["world_size"] == 2 and summary["epochs_run"] == 2
    assert summary["mean_auroc"] > 0.6
    run = MlflowClient(summary["tracking_uri"]).get_run(summary["run_id"])
    assert run.data.tags["world_size"] == "2"


@pytest.mark.slow
def test_pneumoniamnist_real_radiographs(tmp_path, shared):
    summary = train_json("--config", "configs/pneumoniamnist.yaml", "train.epochs=5", "train.patience=null")
    assert summary["labels"] == ["Pneumonia"]
    assert summary["test"]["auroc"] >= 0.95
    run = MlflowClient(summary["tracking_uri"]).get_run(summary["run_id"])
    assert run.data.metrics["test_auroc"] == pytest.approx(summary["test"]["auroc"])


class _Payload:
    """Unpickling this runs code: it writes the file named at construction."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


@pytest.mark.slow
def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, synth_root):
    from chexops.core.errors import UserInputError

    marker = tmp_path / "ran"
    evil = tmp_path / "model.pt"
    torch.save({"format": 2, "model": {}, "meta": "{}", "extra": _Payload(marker)}, evil)
    with pytest.raises(UserInputError, match="refused"):
        load_checkpoint(evil)
    assert not marker.exists()
    ckpt_dir = tmp_path / "ckpt"
    ckpt_dir.mkdir()
    torch.save({"digest": "x", "state": _Payload(marker)}, ckpt_dir / "last.pt")  # a poisoned resume checkpoint
    result = run_cli("train", "--config", str(tiny_config(tmp_path, synth_root)), "--checkpoint-dir", str(ckpt_dir))
    assert (
        result.returncode == 2 and "not a safe chexops checkpoint" in result.stderr and "Traceback" not in result.stderr
    )
    assert not marker.exists()


def test_format_one_checkpoints_stay_readable(tmp_path):
    old = {
        "format": 1,
        "model": {"head.weight": torch.zeros(2, 3)},
        "model_config": {"name": "small"},
        "labels": ["A", "B"],
        "preprocessing": {"size": 32},
        "config": {"name": "x"},
        "run_id": "r",
        "data_version": "d",
        "val_mean_auroc": 0.9,
    }
    torch.save(old, tmp_path / "model.pt")
    payload = load_checkpoint(tmp_path / "model.pt")
    assert (
        payload["labels"] == ["A", "B"]
        and payload["val_mean_auroc"] == 0.9
        and payload["model"]["head.weight"].shape == (2, 3)
    )


def test_a_nan_first_epoch_can_be_beaten():
    from chexops.train.loop import improves

    nan, inf = float("nan"), float("inf")
    assert improves(0.6, nan) and improves(0.6, -inf) and improves(0.7, 0.6)
    assert not improves(nan, 0.5) and not improves(nan, nan) and not improves(0.5, 0.6)


@pytest.mark.parametrize(
    "name,weights,warned", [("densenet121", None, True), ("small", None, False), ("densenet121", "imagenet.pt", False)]
)
def test_random_initialisation_is_said_loudly_and_tagged(caplog, name, weights, warned):
    from chexops.config import ModelConfig
    from chexops.train.loop import init_tag

    with caplog.at_level("WARNING"):
        tag = init_tag(ModelConfig.model_construct(name=name, pretrained_weights=weights))
    assert tag == ("random" if weights is None else "pretrained:imagenet.pt")
    assert ("RANDOM weights" in caplog.text) is warned


def test_epoch_batches_resume_and_split_ranks():
    from chexops.train.dataset import EpochBatches

    full = EpochBatches(50, 8, seed=3)
    full.set_epoch(2)
    batches = list(full)
    assert sorted(i for b in batches for i in b) == list(range(50)) and len(batches) == len(full) == 7
    full.set_epoch(2, start_batch=4)
    assert list(full) == batches[4:]
    full.set_epoch(3)
    assert list(full) != batches
    ranks = [EpochBatches(51, 4, seed=3, rank=r, world=2) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(2)
    seen = [i for r in ranks for b in r for i in b]
    assert len(seen) == 52 and set(seen) == set(range(51))  # padded to an equal count per rank, every image seen
