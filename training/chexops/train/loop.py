"""The training loop: `chexops train --config FILE`.

Read top to bottom (`train`): setup (devices, DDP) → data → model and optimiser → resume → the MLflow
run (`chexops.train.tracking_run`) → epochs of masked-BCE steps with checkpoints → validation, early
stopping → best weights, test, the model logged (`_finish`). A run killed at any point resumes from
`$CHEXOPS_HOME/checkpoints/NAME/last.pt` (`chexops.train.checkpoint`) on the next call, in the same
MLflow run, and ends where an uninterrupted run would. Under `torchrun` it trains with
DistributedDataParallel; rank 0 validates, tracks and returns the summary.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import Field
from tqdm.auto import tqdm

from chexops.config import Config
from chexops.core import paths
from chexops.core.errors import UserInputError
from chexops.core.results import Result
from chexops.data.loading import load_splits
from chexops.train import tracking_run
from chexops.train.checkpoint import (
    CHECKPOINT_FILE,
    CHECKPOINT_FORMAT,
    CHECKPOINT_PATH,
    RunState,
    atomic_save,
    model_payload,
    safe_load,
)
from chexops.train.dataset import EpochBatches, RadiographDataset, own_generator, train_loader
from chexops.train.metrics import as_metrics, auroc_per_label, mean_auroc
from chexops.train.models import build_model

log = logging.getLogger(__name__)


class HeldOutMetrics(Result):
    """The best model on the test split: `auroc` is the single label's AUROC, or the mean AUROC."""

    auroc: float
    mean_auroc: float
    loss: float
    per_label: dict[str, float | None]


class TrainSummary(Result):
    """What `chexops train` returns: the MLflow run, and the best model's validation (and test) metrics."""

    run_id: str
    init: str
    experiment: str
    tracking_uri: str
    model_uri: str
    data_version: str
    labels: list[str]
    epochs_run: int
    best_epoch: int
    steps: int
    world_size: int
    mean_auroc: float
    mean_over: list[str]
    val_loss: float
    auroc: dict[str, float | None]
    test: HeldOutMetrics | None = Field(None, exclude_if=lambda v: v is None)  # only with a test split
    seconds: float


def config_digest(config: Config) -> str:
    """Identifies a configuration; a checkpoint is resumed only by the config that wrote it."""
    return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def masked_bce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy averaged over the labels the policy keeps (U-Ignore and ignored blanks drop out)."""
    loss = F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none")
    return (loss * mask).sum() / mask.sum().clamp_min(1.0)


def improves(score: float, best: float) -> bool:
    """Whether a validation score beats the best so far; NaN (no AUROC computable) never beats and is never the bar."""
    return not math.isnan(score) and (math.isnan(best) or score > best)


def init_tag(model_cfg: Any, warn: bool = True) -> str:
    """How the network starts (`init` tag): `pretrained:FILE` or `random`, said loudly for networks
    that ImageNet weights exist for."""
    if model_cfg.pretrained_weights is not None:
        return f"pretrained:{Path(model_cfg.pretrained_weights).name}"
    if warn and model_cfg.name != "small":
        log.warning(
            "!!! model %s starts from RANDOM weights: model.pretrained_weights is not set (weights are never "
            "downloaded). Expect a much weaker model than the paper's ImageNet start; the run is tagged init=random.",
            model_cfg.name,
        )
    return "random"


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    ds: RadiographDataset,
    batch_size: int,
    device: torch.device,
    amp: bool,
    num_workers: int = 0,
) -> np.ndarray:
    model.eval()
    workers = 0 if ds.cached is not None else num_workers
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        generator=own_generator(),
    )
    out = []
    for x, _, _ in loader:
        with torch.autocast("cuda", dtype=torch.bfloat16) if amp else nullcontext():
            out.append(torch.sigmoid(model(x.to(device)).float()).cpu())
    model.train()
    return torch.cat(out).numpy()


def evaluate_split(model, ds: RadiographDataset, config: Config, labels: list[str], device, amp) -> dict[str, Any]:
    probs = predict(model, ds, max(64, config.train.batch_size), device, amp, config.train.num_workers)
    t, m = ds.targets.numpy(), ds.mask.numpy()
    loss = float(masked_bce(torch.logit(torch.from_numpy(probs).clamp(1e-6, 1 - 1e-6)), ds.targets, ds.mask))
    per_label = auroc_per_label(probs, t, m, labels)
    return {"loss": loss, "auroc": per_label, "mean_auroc": mean_auroc(per_label, config.eval.mean_labels(labels))}


def _rounded(per_label: dict[str, float]) -> dict[str, float | None]:
    return {k: (None if math.isnan(v) else round(v, 6)) for k, v in per_label.items()}


@dataclass(frozen=True)
class Processes:
    rank: int
    local_rank: int
    world: int

    @property
    def master(self) -> bool:
        return self.rank == 0


def _setup_distributed() -> Processes:
    """This process's rank and the world size; initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Processes(0, 0, 1)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    return Processes(dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), world)


def _device(config: Config, local_rank: int) -> torch.device:
    wanted = config.train.device
    if wanted == "cuda" and not torch.cuda.is_available():
        raise UserInputError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'.")
    if wanted == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def _scheduler(optimizer, config: Config, total_steps: int):
    t = config.train
    if t.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=t.lr, total_steps=max(total_steps, 1), pct_start=0.15
        )

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / t.warmup_steps) if t.warmup_steps else 1.0
        if t.schedule == "cosine":
            return warm * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
        return warm

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class Run:
    """What stays fixed through one training run: what `_finish` needs besides the model and the state."""

    config: Config
    labels: list[str]
    fingerprint: dict[str, Any]
    val_ds: RadiographDataset
    test_ds: RadiographDataset | None
    device: torch.device
    amp: bool
    world: int
    last_path: Path  # the resume checkpoint, deleted once the run is done
    started: float


def train(config: Config, *, resume: bool = True, checkpoint_dir: Path | None = None) -> TrainSummary | None:
    """Train `config`; returns the run's summary on rank 0 (None on the other ranks under torchrun)."""
    started = time.monotonic()
    procs = _setup_distributed()
    try:
        return _train(config, resume, checkpoint_dir, procs, started)
    finally:
        if procs.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(
    config: Config, resume: bool, checkpoint_dir: Path | None, procs: Processes, started: float
) -> TrainSummary | None:
    t = config.train
    rank, world, master = procs.rank, procs.world, procs.master
    device = _device(config, procs.local_rank)
    cuda = device.type == "cuda"
    amp = cuda and t.amp
    channels_last = cuda and t.channels_last
    if t.threads:
        torch.set_num_threads(t.threads)
    if t.batch_size % world:
        raise UserInputError(f"train.batch_size {t.batch_size} must be divisible by the {world} processes.")
    per_rank_batch = t.batch_size // world
    torch.manual_seed(config.seed)

    init = init_tag(config.model, warn=master)
    # Data: every problem surfaces here, before anything is written.
    splits = load_splits(config)
    labels = splits.labels
    spec = config.preprocess.spec()
    cache, workers = config.data.cache_images, t.num_workers
    train_ds = RadiographDataset(splits.train, spec, cache, progress=master, num_workers=workers)
    val_ds = RadiographDataset(splits.val, spec, cache, progress=master, num_workers=workers)
    test_ds = RadiographDataset(splits.test, spec, cache, progress=master, num_workers=workers) if splits.test else None
    log.info(
        "Data %s: %d train, %d validation, %s test images; %d labels",
        splits.fingerprint["data_version"],
        len(train_ds),
        len(val_ds),
        len(test_ds) if test_ds else "no",
        len(labels),
    )

    # Model and optimiser.
    model = build_model(config.model, len(labels), spec).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt_cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    batches_per_epoch = math.ceil(math.ceil(len(train_ds) / world) / per_rank_batch)
    steps_per_epoch = math.ceil(batches_per_epoch / t.accum_steps)
    total_steps = min(t.epochs * steps_per_epoch, t.max_steps or 10**12)
    scheduler = _scheduler(optimizer, config, total_steps)
    ddp_model = (
        torch.nn.parallel.DistributedDataParallel(model, device_ids=[procs.local_rank] if cuda else None)
        if world > 1
        else model
    )

    # Resume from the last checkpoint of this very configuration, if any.
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else paths.home() / "checkpoints" / config.name
    last_path = ckpt_dir / "last.pt"
    digest = config_digest(config)
    state = RunState()
    if resume and last_path.exists():
        state = _resume(last_path, digest, procs, model, optimizer, scheduler) or state

    # The MLflow run: a new one, or the checkpoint's again.
    if master:
        state.run_id = tracking_run.start(config, state.run_id)
        if state.is_new:
            tracking_run.log_inputs(
                config,
                splits.fingerprint,
                labels,
                spec.to_dict(),
                {
                    "world_size": str(world),
                    "device": str(device),
                    "amp": str(amp),
                    "channels_last": str(channels_last),
                    "config_digest": digest,
                    "init": init,
                },
            )

    def checkpoint(epoch: int, batch: int) -> None:
        rngs = [torch.get_rng_state()]
        if world > 1:
            gathered = [None] * world
            dist.all_gather_object(gathered, torch.get_rng_state())
            rngs = gathered
        if master:
            atomic_save(
                {
                    "format": CHECKPOINT_FORMAT,
                    "digest": digest,
                    "world": world,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": rngs,
                    "state": state.to_json(epoch, batch),
                    "best_model": state.best_model,
                },
                last_path,
            )

    # Epochs.
    stop = False
    model.train()
    sampler = EpochBatches(len(train_ds), per_rank_batch, config.seed, rank, world)
    loader = train_loader(train_ds, sampler, t.num_workers, pin_memory=cuda)
    for epoch in range(state.epoch, t.epochs):
        start_batch = state.batch if epoch == state.epoch else 0
        sampler.set_epoch(epoch, start_batch)
        n_batches = len(sampler)
        running, seen = 0.0, 0
        bar = tqdm(
            enumerate(loader, start=start_batch),
            total=n_batches,
            initial=start_batch,
            desc=f"epoch {epoch + 1}/{t.epochs}",
            unit="batch",
            disable=None if master else True,
            leave=False,
        )
        for b, (x, y, m) in bar:
            x, y, m = (v.to(device, non_blocking=True) for v in (x, y, m))
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            boundary = (b + 1) % t.accum_steps == 0 or b + 1 == n_batches
            sync = nullcontext() if (boundary or world == 1) else ddp_model.no_sync()
            with sync:
                with torch.autocast("cuda", dtype=torch.bfloat16) if amp else nullcontext():
                    loss = masked_bce(ddp_model(x), y, m)
                (loss / t.accum_steps).backward()
            running += float(loss.detach()) * len(x)
            seen += len(x)
            if boundary:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                state.step += 1
                if master:
                    bar.set_postfix(loss=f"{running / max(seen, 1):.4f}")
                if state.step % t.checkpoint_every == 0:
                    checkpoint(epoch, b + 1)
                if t.max_steps and state.step >= t.max_steps:
                    break

        # Validation on rank 0; the decision to stop is shared with the other ranks.
        record: dict[str, float] = {"epoch": float(epoch + 1)}
        if master:
            val = evaluate_split(model, val_ds, config, labels, device, amp)
            improved = improves(val["mean_auroc"], state.best) or state.best_epoch < 0
            if improved:
                state.best, state.best_epoch, state.bad_epochs = val["mean_auroc"], epoch + 1, 0
                state.best_model = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            else:
                state.bad_epochs += 1
            record.update(
                {
                    "train_loss": running / max(seen, 1),
                    "val_loss": val["loss"],
                    "val_mean_auroc": val["mean_auroc"],
                    "lr": optimizer.param_groups[0]["lr"],
                    **as_metrics("val_auroc", val["auroc"]),
                }
            )
            tracking_run.log_metrics(record, epoch + 1)
            state.history.append({k: float(v) for k, v in record.items() if not math.isnan(v)})
            log.info(
                "epoch %d/%d: train loss %.4f, val loss %.4f, val mean AUROC %.4f%s",
                epoch + 1,
                t.epochs,
                record["train_loss"],
                val["loss"],
                val["mean_auroc"],
                " (best)" if improved else "",
            )
            stop = bool(t.patience and state.bad_epochs >= t.patience) or bool(
                t.max_steps and state.step >= t.max_steps
            )
            if t.patience and state.bad_epochs >= t.patience:
                log.info("Early stopping: no better validation mean AUROC for %d epochs", t.patience)
        if world > 1:
            flag = [stop, state.best, state.best_epoch, state.bad_epochs]
            dist.broadcast_object_list(flag, src=0)
            stop, state.best, state.best_epoch, state.bad_epochs = flag
        state.batch = 0
        checkpoint(epoch + 1, 0)
        if stop:
            break

    summary = None
    if master:
        run = Run(config, labels, splits.fingerprint, val_ds, test_ds, device, amp, world, last_path, started)
        summary = _finish(run, model, state)
    if world > 1:
        dist.barrier()
    return summary


def _resume(path: Path, digest: str, procs: Processes, model, optimizer, scheduler) -> RunState | None:
    """The state of `path` with the weights, optimiser, schedule and random state loaded back; None
    (start afresh) when another configuration or process count wrote it."""
    try:
        saved = safe_load(path)
    except Exception as exc:  # noqa: BLE001 - a refused pickle or a damaged file
        raise UserInputError(
            f"cannot resume from {path}: it is not a safe chexops checkpoint ({type(exc).__name__}). "
            "Delete it or run with --no-resume."
        ) from None
    if saved.get("digest") != digest or saved.get("world") != procs.world:
        log.warning("Ignoring %s: it was written by another configuration or process count", path)
        return None
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    rank = procs.rank
    torch.set_rng_state(saved["rng"][rank] if rank < len(saved["rng"]) else saved["rng"][0])
    state = RunState.from_checkpoint(saved)
    log.info("Resuming %s from epoch %d, batch %d (step %d)", path, state.epoch, state.batch, state.step)
    return state


def _finish(run: Run, model: torch.nn.Module, state: RunState) -> TrainSummary:
    """Best weights back in, final validation and test metrics, the model logged; then the checkpoint goes."""
    config, labels = run.config, run.labels
    model.load_state_dict(state.best_model)
    val = evaluate_split(model, run.val_ds, config, labels, run.device, run.amp)
    final = {"best_val_mean_auroc": val["mean_auroc"], "best_epoch": float(state.best_epoch)}
    test = None
    if run.test_ds is not None:
        scores = evaluate_split(model, run.test_ds, config, labels, run.device, run.amp)
        test = HeldOutMetrics(
            auroc=scores["auroc"][labels[0]] if len(labels) == 1 else scores["mean_auroc"],
            mean_auroc=scores["mean_auroc"],
            loss=scores["loss"],
            per_label=_rounded(scores["auroc"]),
        )
        final.update(
            {
                "test_auroc": test.auroc,
                "test_mean_auroc": test.mean_auroc,
                "test_loss": test.loss,
                **as_metrics("test_auroc", scores["auroc"]),
            }
        )
    tracking_run.log_metrics(final)
    data_version = run.fingerprint["data_version"]
    payload = model_payload(
        model,
        config,
        labels,
        {"run_id": state.run_id, "data_version": data_version, "val_mean_auroc": val["mean_auroc"]},
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / CHECKPOINT_FILE
        torch.save(payload, path)
        tracking_run.log_model(path)
    uri = tracking_run.tracking_uri()
    seconds = round(time.monotonic() - run.started, 1)
    tracking_run.end(seconds)
    run.last_path.unlink(missing_ok=True)
    summary = TrainSummary(
        run_id=state.run_id,
        init=init_tag(config.model, warn=False),
        experiment=config.tracking.experiment,
        tracking_uri=uri,
        model_uri=f"runs:/{state.run_id}/{CHECKPOINT_PATH}",
        data_version=data_version,
        labels=labels,
        epochs_run=len(state.history),
        best_epoch=state.best_epoch,
        steps=state.step,
        world_size=run.world,
        mean_auroc=val["mean_auroc"],
        mean_over=config.eval.mean_labels(labels),
        val_loss=val["loss"],
        auroc=_rounded(val["auroc"]),
        test=test,
        seconds=seconds,
    )
    log.info(
        "Run %s: validation mean AUROC %.4f%s in %.0f s",
        state.run_id,
        val["mean_auroc"],
        f", test AUROC {test.auroc:.4f}" if test else "",
        seconds,
    )
    return summary
