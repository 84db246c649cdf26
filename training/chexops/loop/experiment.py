"""The loop experiment: feedback corrects a model's systematic error on one finding.

    python -m chexops.loop.experiment --patients 400 --clinic-patients 300 --seeds 0,1,2 --out out/loop

1. A synthetic CheXpert-layout dataset (`chexops.data.synth`: every finding leaves a visual trace);
   its `valid.csv` (the truth) is cut by patient into the standard test split and the clinic's studies.
2. The base training CSV is corrupted systematically for one finding (default Pleural Effusion):
   the labeller never reports it (every 1.0 and -1.0 becomes 0.0), so the base model cannot learn it.
3. The base model (evaluated: its operating thresholds) answers the clinic's frontal studies, oldest
   first, as the service does: each prediction, with the image the service keeps
   (`chexops.serving.stored_image.kept_image`), goes into a real feedback store (SQLite, `FeedbackStore`), and a
   simulated
   clinician answers from the ground truth as `chexops simulate` does (each label read wrong with
   `error_rate`; `correct` when every verdict matches). `chexops feedback export`'s own function
   (`export_feedback`) turns the store into the feedback dataset. No HTTP here: `chexops serve` and
   `chexops simulate` are tested on their own (tests/test_simulate.py); this is the data's path.
4. The candidate is trained on the same corrupted CSV plus the export as a `data.sources` entry
   (`weight`, `holdout_fraction`: the newest feedback never trains).
5. `chexops evaluate` (`evaluate_run`) measures both models on the feedback hold-out (the base with
   the candidate's config, so on the same rows) and on the test split; here, both models' predictions
   on the same rows also give a paired bootstrap interval of each finding's AUROC change.

`run_loop(work, setup)` is one seed's experiment (the test runs it small); `main` runs several
seeds and prints a JSON object and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import yaml
from sklearn.metrics import roc_auc_score

if TYPE_CHECKING:
    from chexops.feedback.export import FeedbackExport

log = logging.getLogger(__name__)

SOURCE = "feedback"


@dataclass(frozen=True)
class Setup:
    finding: str = "Pleural Effusion"
    patients: int = 300  # synthetic training patients (several studies each)
    test_patients: int = 150  # valid.csv patients kept as the standard test split
    clinic_patients: int = 200  # valid.csv patients sent to the clinic (one study each)
    image_size: int = 32  # synthetic JPEG side
    size: int = 24  # model input side
    width: int = 8  # the small CNN's first block
    epochs: int = 4
    weight: float = 2.0  # the feedback source's weight
    holdout_fraction: float = 0.3  # the newest feedback held out
    error_rate: float = 0.05  # the simulated clinician's per-label reading error
    bootstrap: int = 200
    control: bool = False  # also retrain without the feedback (another seed): the noise of retraining alone
    seed: int = 0


# ------------------------------------------------------------------------------------------ data


def make_data(work: Path, setup: Setup) -> dict[str, Path]:
    """The dataset, its corrupted training CSV, the test CSV and the clinic's CSV (frontal studies)."""
    from chexops.data.chexpert import DATASET_DIR
    from chexops.data.synth import synthesize

    root = work / "data"
    synthesize(
        root,
        patients=setup.patients,
        valid_patients=setup.test_patients + setup.clinic_patients,
        image_size=setup.image_size,
        seed=setup.seed,
        progress=False,
        overwrite=True,
    )
    folder = root / DATASET_DIR
    train = pd.read_csv(folder / "train.csv", dtype=str, keep_default_na=False)
    train.loc[train[setup.finding].isin(["1.0", "-1.0"]), setup.finding] = "0.0"  # never reported by the labeller
    train.to_csv(folder / "train_corrupted.csv", index=False)
    valid = pd.read_csv(folder / "valid.csv", dtype=str, keep_default_na=False)
    patient = valid["Path"].str.extract(r"(patient\d+)")[0]
    order = list(dict.fromkeys(patient))
    test_ids = set(order[: setup.test_patients])
    valid[patient.isin(test_ids)].to_csv(folder / "test.csv", index=False)
    clinic = valid[~patient.isin(test_ids) & (valid["Frontal/Lateral"] == "Frontal")]
    clinic.to_csv(folder / "clinic.csv", index=False)
    return {
        "root": root,
        "train": folder / "train_corrupted.csv",
        "test": folder / "test.csv",
        "clinic": folder / "clinic.csv",
    }


def write_config(path: Path, data: dict[str, Path], setup: Setup, sources: list[dict] | None = None) -> Path:
    config = {
        "name": path.stem,
        "seed": setup.seed,
        "data": {
            "csv": str(data["train"]),
            "test_csv": str(data["test"]),
            "root": str(data["root"]),
            "val_fraction": 0.25,
            "view": "frontal",
            "sources": sources or [],
        },
        "preprocess": {"size": setup.size, "mean": [0.45], "std": [0.25]},
        "model": {"name": "small", "width": setup.width},
        "train": {
            "epochs": setup.epochs,
            "batch_size": 32,
            "optimizer": "adamw",
            "lr": 0.004,
            "schedule": "onecycle",
            "checkpoint_every": 100000,
            "device": "cpu",
        },
        "tracking": {"experiment": "loop-experiment", "system_metrics": False},
    }
    path.write_text(yaml.safe_dump(config))
    return path


# ------------------------------------------------------------------------------------------ clinic


def clinic_feedback(
    model_run: str, thresholds: dict[str, float], data: dict[str, Path], store_url: str, out: Path, setup: Setup
) -> FeedbackExport:
    """The base model answers the clinic's studies, a simulated clinician reviews every answer from the
    ground truth, and the store is exported as `chexops feedback export` does."""
    from chexops.core.triage import priority
    from chexops.data.chexpert import image_paths, read_chexpert_csv
    from chexops.feedback.export import export_feedback
    from chexops.feedback.store import FeedbackStore
    from chexops.imaging.decode import decode
    from chexops.loop.simulate import findings_agree
    from chexops.serving.settings import Settings
    from chexops.serving.stored_image import kept_image

    model, spec, labels = _model(model_run, out / "base-model")
    table = read_chexpert_csv(data["clinic"], labels)
    paths = image_paths(table, data["root"])
    probs = _probabilities(model, spec, paths)
    rng = np.random.default_rng(setup.seed + 7)
    store = FeedbackStore(store_url)
    try:
        for i, (path, p, truth) in enumerate(zip(paths, probs, table.values)):
            request_id = f"{i:06d}" + os.urandom(5).hex()  # in arrival order, as the export reads them
            findings = [
                {
                    "label": label,
                    "probability": round(float(q), 6),
                    "threshold": thresholds[label],
                    "positive": bool(q >= thresholds[label]),
                }
                for label, q in zip(labels, p)
            ]
            upload = path.read_bytes()
            decoded = decode(upload)
            store.add_prediction(
                request_id, "clinic-sim", "chexops-loop", "base", findings, priority(findings), decoded.info
            )
            store.set_image(request_id, kept_image(upload, decoded, Settings.model_fields["stored_image_side"].default))
            flips = rng.random(len(labels))
            read = {
                label: int(1 - v if flips[j] < setup.error_rate else v)
                for j, (label, v) in enumerate(zip(labels, truth))
                if v in (0, 1)
            }
            correct = findings_agree({f["label"]: f["positive"] for f in findings}, read)
            store.add_feedback(request_id, correct, read, None)
        return export_feedback(store, out / "feedback-export", overwrite=True)
    finally:
        store.close()


def _model(run: str, workdir: Path):
    from chexops.evaluation.run import load_run
    from chexops.imaging.preprocessing import PreprocessSpec
    from chexops.tracking import mlflow_client

    loaded = load_run(mlflow_client(), run, None, workdir)
    return loaded.model, PreprocessSpec.from_dict(loaded.payload["preprocessing"]), loaded.labels


def _probabilities(model, spec, paths: list[Path]) -> np.ndarray:
    import torch

    from chexops.imaging.preprocessing import load_image, preprocess

    batch = np.stack([preprocess(load_image(p), spec) for p in paths])
    with torch.no_grad():
        return torch.sigmoid(model(torch.from_numpy(batch))).numpy()


# ------------------------------------------------------------------------------------------ comparison


def paired_changes(
    split, base: np.ndarray, cand: np.ndarray, labels: list[str], n_boot: int, seed: int
) -> dict[str, Any]:
    """Per finding: both AUROCs on the same rows and the change's paired bootstrap 95% interval
    (rows resampled by patient, the same resample for both models and every finding). None where a
    finding has one class."""
    from chexops.core.stats import Groups, bootstrap, percentile_interval
    from chexops.data.splits import patient_groups

    groups = patient_groups(split)
    units = Groups.rows(len(split)) if groups is None else Groups(groups)
    y, mask = split.targets, split.mask > 0
    measurable = [j for j in range(len(labels)) if 0 < y[mask[:, j], j].sum() < mask[:, j].sum()]

    def changes(idx: np.ndarray) -> np.ndarray:
        out = np.full(len(labels), np.nan)
        for j in measurable:
            rows = idx[mask[idx, j]]
            if 0 < y[rows, j].sum() < len(rows):
                out[j] = roc_auc_score(y[rows, j], cand[rows, j]) - roc_auc_score(y[rows, j], base[rows, j])
        return out

    deltas = bootstrap(changes, units, n_boot, np.random.default_rng(seed)) if n_boot else np.empty((0, len(labels)))
    out = {}
    for j, label in enumerate(labels):
        if j not in measurable:
            out[label] = None
            continue
        keep = mask[:, j]
        a, b = roc_auc_score(y[keep, j], base[keep, j]), roc_auc_score(y[keep, j], cand[keep, j])
        lo, hi = percentile_interval(deltas[:, j], min_count=n_boot // 2) or (math.nan, math.nan)
        out[label] = {
            "n": int(keep.sum()),
            "positives": int(y[keep, j].sum()),
            "base": float(a),
            "candidate": float(b),
            "change": float(b - a),
            "change_ci": [float(lo), float(hi)],
        }
    return out


# The loop's verdict, its bounds from the benchmark's control (the same retraining without the feedback,
# 3 seeds; docs/benchmarks.md). A finding with fewer positives than MIN_POSITIVES is not judged for
# regression: its AUROC on 100-300 studies moves by 0.1-0.3 between two retrainings.
MIN_POSITIVES = 10
MIN_GAIN = 0.20  # the corrected finding on the feedback hold-out; retraining alone moved it -0.19..+0.16
MAX_DROP = 0.15  # any other judged finding; retraining alone moved them by up to -0.16
MAX_MEAN_DROP = 0.02  # the mean change of the other judged findings; retraining alone: -0.04..+0.02


def loop_failures(result: dict[str, Any], finding: str, prefix: str = "") -> list[str]:
    """Why a retrained model (`prefix` "" the candidate, "control_" the control) did not close the loop:
    on the feedback hold-out the finding's AUROC must rise by MIN_GAIN; on the hold-out and the test split
    its paired 95% interval must lie above 0, no other finding with MIN_POSITIVES positives may lose more
    than MAX_DROP, and their mean change may not fall below -MAX_MEAN_DROP."""
    failures = []
    for split in ("holdout", "test"):
        changes = result[prefix + split]
        target = changes[finding]
        if split == "holdout" and target["change"] < MIN_GAIN:
            failures.append(f"{finding} on the {split}: change {target['change']:+.3f} < {MIN_GAIN}")
        if not target["change_ci"][0] > 0:
            failures.append(f"{finding} on the {split}: paired 95% interval {target['change_ci']} not above 0")
        judged = {
            label: v for label, v in changes.items() if label != finding and v and v["positives"] >= MIN_POSITIVES
        }
        for label, v in judged.items():
            if v["change"] < -MAX_DROP:
                failures.append(
                    f"{label} on the {split}: change {v['change']:+.3f} < -{MAX_DROP} ({v['positives']} positives)"
                )
        mean = float(np.mean([v["change"] for v in judged.values()])) if judged else math.nan
        if not mean >= -MAX_MEAN_DROP:
            failures.append(
                f"the other findings on the {split}: mean change {mean:+.3f} < -{MAX_MEAN_DROP} ({len(judged)} judged)"
            )
    return failures


def run_loop(work: Path, setup: Setup = Setup()) -> dict[str, Any]:
    """One seed's loop: data → base model → clinic feedback → candidate with the feedback → both measured."""
    from chexops.config import load_config
    from chexops.data.loading import load_splits
    from chexops.data.sources import holdout_splits
    from chexops.evaluation.run import evaluate_run
    from chexops.train.loop import train

    started = time.monotonic()
    work.mkdir(parents=True, exist_ok=True)
    data = make_data(work, setup)
    base_cfg = write_config(work / "base.yaml", data, setup)
    base = train(load_config(base_cfg), resume=False, checkpoint_dir=work / "ckpt-base").run_id
    base_eval = evaluate_run(base, n_bootstrap=0, hard_cases=0, seed=setup.seed)
    exported = clinic_feedback(base, base_eval.thresholds, data, f"sqlite:///{work / 'feedback.db'}", work, setup)
    source = {
        "name": SOURCE,
        "csv": exported.csv,
        "root": exported.out,
        "weight": setup.weight,
        "holdout_fraction": setup.holdout_fraction,
    }
    cand_cfg = write_config(work / "candidate.yaml", data, setup, [source])
    runs = {
        "base": base,
        "candidate": train(load_config(cand_cfg), resume=False, checkpoint_dir=work / "ckpt-candidate").run_id,
    }
    if setup.control:  # the same retraining without the feedback: what retraining alone changes
        control_cfg = write_config(work / "control.yaml", data, replace(setup, seed=setup.seed + 1000))
        runs["control"] = train(load_config(control_cfg), resume=False, checkpoint_dir=work / "ckpt-control").run_id
    # The evaluation records (evaluate reports the feedback hold-out): every model on the candidate's data.
    evals = {
        name: evaluate_run(run, config_path=cand_cfg, n_bootstrap=setup.bootstrap, hard_cases=0, seed=setup.seed)
        for name, run in runs.items()
    }

    config = load_config(cand_cfg)
    hold, test = holdout_splits(config)[SOURCE], load_splits(config).test
    models = {name: _model(run, work / f"model-{name}") for name, run in runs.items()}
    labels = models["base"][2]
    result: dict[str, Any] = {
        "setup": asdict(setup),
        "runs": runs,
        "feedback": {"rows": exported.rows, "holdout_rows": len(hold), "skipped": exported.skipped},
        "evaluations": {
            name: {"evaluation_id": e.evaluation_id, "test_mean_auroc": e.mean_auroc, "holdout": e.holdouts[SOURCE]}
            for name, e in evals.items()
        },
    }
    for split_name, split in (("holdout", hold), ("test", test)):
        probs = {name: _probabilities(m, spec, split.paths) for name, (m, spec, _) in models.items()}
        for name in runs.keys() - {"base"}:
            key = split_name if name == "candidate" else f"{name}_{split_name}"
            result[key] = paired_changes(split, probs["base"], probs[name], labels, setup.bootstrap, setup.seed)
    result["failures"] = {
        name: loop_failures(result, setup.finding, "" if name == "candidate" else f"{name}_")
        for name in runs.keys() - {"base"}
    }
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


# ------------------------------------------------------------------------------------------ report


def summarize(runs: list[dict[str, Any]], finding: str) -> dict[str, Any]:
    """Across seeds, per split and finding: mean base / candidate AUROC and change, the change's
    seed-to-seed spread (sd, min, max), and how many seeds' paired intervals lie above / below zero."""
    table: dict[str, dict[str, Any]] = {}
    for split in [k for k in ("holdout", "test", "control_holdout", "control_test") if k in runs[0]]:
        table[split] = {}
        for label in runs[0][split]:
            rows = [r[split][label] for r in runs if r[split].get(label)]
            if not rows:
                table[split][label] = None
                continue
            changes = [x["change"] for x in rows]
            table[split][label] = {
                "seeds": len(rows),
                "positives": statistics.mean(x["positives"] for x in rows),
                "base": statistics.mean(x["base"] for x in rows),
                "candidate": statistics.mean(x["candidate"] for x in rows),
                "change": statistics.mean(changes),
                "change_sd": statistics.stdev(changes) if len(changes) > 1 else None,
                "change_min": min(changes),
                "change_max": max(changes),
                "ci_above_0": sum(x["change_ci"][0] > 0 for x in rows),
                "ci_below_0": sum(x["change_ci"][1] < 0 for x in rows),
                "mean_ci": [
                    statistics.mean(x["change_ci"][0] for x in rows),
                    statistics.mean(x["change_ci"][1] for x in rows),
                ],
            }
    verdicts = {
        name: sum(not loop_failures(r, finding, "" if name == "candidate" else f"{name}_") for r in runs)
        for name in runs[0]["runs"]
        if name != "base"
    }
    return {"finding": finding, "seeds": len(runs), "closed_the_loop": verdicts, "table": table}


def markdown(summary: dict[str, Any]) -> str:
    lines = [
        "The loop's criterion (`loop_failures`) held for "
        + ", ".join(f"{name}: {n} of {summary['seeds']} seeds" for name, n in summary["closed_the_loop"].items())
        + ".",
        "",
    ]
    titles = {
        "holdout": "the feedback hold-out",
        "test": "the standard test split",
        "control_holdout": "the feedback hold-out, control (retrained without the feedback)",
        "control_test": "the standard test split, control (retrained without the feedback)",
    }
    for split in summary["table"]:
        lines += [
            f"On {titles[split]} (mean over seeds; change = candidate − base; CI: mean of the seeds' paired "
            "95% bootstrap intervals; seeds with the interval above / below 0):",
            "",
            "| finding | positives | base AUROC | candidate AUROC | change [95% CI] | change sd (min, max) over seeds "
            "| CI > 0 / CI < 0 |",
            "|---|---|---|---|---|---|---|",
        ]
        for label, s in summary["table"][split].items():
            mark = f"**{label}**" if label == summary["finding"] else label
            if s is None:
                lines.append(f"| {mark} | | not measurable | | | | |")
                continue
            sd = f"{s['change_sd']:.3f}" if s["change_sd"] is not None else "n/a"
            lines.append(
                f"| {mark} | {s['positives']:.0f} | {s['base']:.3f} | {s['candidate']:.3f} | {s['change']:+.3f} "
                f"[{s['mean_ci'][0]:+.3f}, {s['mean_ci'][1]:+.3f}] | {sd} ({s['change_min']:+.3f}, "
                f"{s['change_max']:+.3f}) | "
                f"{s['ci_above_0']} / {s['ci_below_0']} of {s['seeds']} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = Setup()
    for field, value in asdict(defaults).items():
        if isinstance(value, bool):
            parser.add_argument(f"--{field.replace('_', '-')}", action="store_true")
        elif field != "seed":
            parser.add_argument(f"--{field.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds: one whole experiment each")
    parser.add_argument("--out", type=Path, required=True, help="work directory (datasets, MLflow store, results)")
    parser.add_argument("--summarize", action="store_true", help="only summarize OUT/loop_experiment.json again")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.summarize:
        summary = summarize(json.loads((args.out / "loop_experiment.json").read_text())["runs"], args.finding)
        print(json.dumps(summary))
        print(markdown(summary))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("CHEXOPS_HOME", str(args.out.resolve() / "home"))
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{args.out.resolve() / 'mlflow.db'}")
    settings = {k: getattr(args, k) for k in asdict(defaults) if k != "seed"}
    runs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        runs.append(run_loop(args.out / f"seed{seed}", Setup(**settings, seed=seed)))
        (args.out / "runs.json").write_text(json.dumps(runs, indent=1) + "\n")
    summary = summarize(runs, args.finding)
    result = {"summary": summary, "runs": runs, "cpu_count": os.cpu_count()}
    (args.out / "loop_experiment.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(summary))
    print(markdown(summary))


if __name__ == "__main__":
    main()
