"""What an evaluation writes besides its JSON: the hard cases as a dataset, the ROC and reliability
plots, the model card, and the human summary `chexops evaluate` prints (`format_result`)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.calibration import calibration_curve
from sklearn.metrics import roc_curve

from chexops.config import Config
from chexops.core.labels import META_COLUMNS
from chexops.data.chexpert import DATASET_DIR
from chexops.data.splits import Split
from chexops.evaluation.metrics import ECE_BINS, both_classes
from chexops.evaluation.records import Evaluation, EvaluationRecord


def write_hard_cases(
    out: Path, split: Split, source_csv: Path | None, cases: list[dict[str, Any]], labels: list[str]
) -> int:
    """The cases as a CheXpert-layout dataset under `out`: `CheXpert-v1.0-small/valid.csv` (the
    source rows verbatim) plus the images at their CSV paths; `cases.json` says why each is there."""
    folder = out / DATASET_DIR
    folder.mkdir(parents=True, exist_ok=True)
    details = []
    if split.frame is not None and split.paths is not None and source_csv is not None:
        source = pd.read_csv(source_csv, dtype=str, keep_default_na=False, na_filter=False)
        source.columns = [c.strip() for c in source.columns]
        rows = []
        for case in cases:
            i = case["index"]
            row = source.iloc[int(split.frame["csv_row"].iloc[i]) - 1].copy()
            rel = Path(str(row["Path"]).strip())
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(split.paths[i], target)
            rows.append(row)
            details.append({**case, "path": str(rel), "source_image": str(split.paths[i])})
        frame = pd.DataFrame(rows, columns=source.columns)
    else:  # images in memory (npz): PNGs and a CSV in the same layout
        from PIL import Image

        records = []
        for case in cases:
            i = case["index"]
            rel = Path(DATASET_DIR) / "valid" / f"patient{i + 1:05d}" / "study1" / "view1_frontal.png"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.asarray(split.images[i], dtype=np.uint8)).save(out / rel)
            record = {"Path": str(rel), "Sex": "", "Age": "", "Frontal/Lateral": "Frontal", "AP/PA": ""}
            record.update({label: f"{split.targets[i, j]:.1f}" for j, label in enumerate(labels)})
            records.append(record)
            details.append({**case, "path": str(rel)})
        frame = pd.DataFrame(records, columns=[*META_COLUMNS, *labels])
    frame.to_csv(folder / "valid.csv", index=False)
    (out / "cases.json").write_text(json.dumps(details, indent=2) + "\n")
    return len(details)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_roc(
    path: Path, probs: np.ndarray, targets: np.ndarray, mask: np.ndarray, labels: list[str], per_label: dict, title: str
) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 6), dpi=100)
    colors = plt.get_cmap("tab20")
    for j, label in enumerate(labels):
        keep = mask[:, j] > 0
        y, p = targets[keep, j], probs[keep, j]
        if not both_classes(y):
            continue
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, lw=1.2, color=colors(j % 20), label=f"{label} ({per_label[label]['auroc']:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_reliability(
    path: Path, probs: np.ndarray, targets: np.ndarray, mask: np.ndarray, labels: list[str], per_label: dict
) -> None:
    plt = _pyplot()
    cols = min(4, len(labels))
    rows = math.ceil(len(labels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), dpi=90, squeeze=False)
    for j, label in enumerate(labels):
        ax = axes[j // cols][j % cols]
        keep = mask[:, j] > 0
        y, p = targets[keep, j], probs[keep, j]
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey")
        if len(y):
            prob_true, prob_pred = calibration_curve(y, p, n_bins=ECE_BINS, strategy="uniform")
            ax.plot(prob_pred, prob_true, marker="o", ms=3, lw=1)
        ece = per_label[label]["ece"]
        ax.set_title(f"{label}\nECE {ece:.3f}" if not math.isnan(ece) else label, fontsize=8)
        ax.set(xlim=(0, 1), ylim=(0, 1))
        ax.tick_params(labelsize=7)
    for k in range(len(labels), rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.supxlabel("mean predicted probability", fontsize=9)
    fig.supylabel("observed frequency", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def fmt(value: Any, digits: int = 3) -> str:
    """A number with `digits` decimals, `n/a` for None and NaN."""
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def model_card(
    record: EvaluationRecord, config: Config, payload: dict[str, Any], tags: dict[str, str], fingerprint: dict[str, Any]
) -> str:
    """The model card: what the model is, what it was trained and evaluated on, how well it does, its limits."""
    cfg, pre, labels, run_id = config, payload["preprocessing"], list(payload["labels"]), record.run_id
    lines = [
        f"# Model card: chexops run `{run_id}`",
        "",
        "## Model",
        f"- Architecture: `{payload['model_config'].get('name')}` (multi-label, one sigmoid output per finding).",
        f"- Labels ({len(labels)}): {', '.join(labels)}.",
        f"- Preprocessing: grey scale, {pre['size']}×{pre['size']} ({pre['resample']}), {pre['channels']} channel(s), "
        f"normalised with mean {pre['mean']} and std {pre['std']}.",
        f"- Training run `{run_id}` at git commit `{tags.get('git_commit', 'unknown')}`"
        f"{' (uncommitted changes)' if tags.get('git_dirty') == 'True' else ''}.",
        "",
        "## Data",
        f"- Dataset kind `{cfg.data.kind}`, view filter `{cfg.data.view}`, data version "
        f"`{fingerprint.get('data_version', tags.get('data_version', 'unknown'))}` "
        f"(sha256 `{str(fingerprint.get('sha256', tags.get('data_sha256', 'unknown')))[:16]}…`).",
        f"- Rows: {', '.join(f'{k} {v:,}' for k, v in fingerprint.get('rows', {}).items())}. Patients never cross the "
        "train/validation/test splits"
        + (f" (test: {fingerprint['test_source']})." if fingerprint.get("test_source") else "."),
        f"- Uncertain labels: training policy `{cfg.data.policy.uncertain}` (per label: "
        f"{', '.join(f'{k} {v}' for k, v in cfg.data.policy.uncertain_per_label.items()) or 'none'}); ignored in "
        "evaluation.",
        f"- Metrics below are on the **{record.split}** split ({record.n:,} images); thresholds were chosen on "
        "validation.",
        "",
        "## Metrics",
        f"Mean AUROC over {', '.join(record.mean_over)}: **{fmt(record.mean_auroc)}**"
        + (
            f" (95% CI {fmt(record.mean_auroc_ci[0])}–{fmt(record.mean_auroc_ci[1])}, {record.bootstrap} bootstrap "
            "resamples"
            f" of {record.bootstrap_groups} {record.bootstrap_unit}s)"
            if record.mean_auroc_ci
            else ""
        )
        + ".",
        "",
        "| finding | n (pos) | AUROC [95% CI] | AUPRC | threshold | sensitivity | specificity | ECE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, m in record.per_label.items():
        ci = m.get("auroc_ci")
        lines.append(
            f"| {label} | {m['n']} ({m['positives']}) | {fmt(m['auroc'])}"
            + (f" [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else "")
            + f" | {fmt(m['auprc'])} | {fmt(m['threshold'])} | {fmt(m['sensitivity'])}"
            + f" | {fmt(m['specificity'])} | {fmt(m['ece'])} |"
        )
    rule = record.rule + (
        f" (target sensitivity {record.target_sensitivity:.2f})" if record.rule == "sensitivity" else " (Youden's J)"
    )
    lines += [
        "",
        f"Operating thresholds: rule `{rule}`, chosen on the validation split.",
        "",
        "## Slices",
        "Mean AUROC per slice and its gap to the whole (negative: the slice does worse).",
        "",
        "| slice | n | fewest positives of a finding | mean AUROC | gap |",
        "|---|---|---|---|---|",
    ]
    for s in record.slices:
        lines.append(
            f"| {s['slice']} | {s['n']} | {s['min_positives']} | {fmt(s['mean_auroc'])} | {fmt(s['gap'], 3)} |"
        )
    if not record.slices:
        lines.append("| (no slice metadata in this dataset) | | | | |")
    for name, h in record.holdouts.items():
        lines += [
            "",
            f"## Hold-out of source `{name}`",
            f"The newest {h['n']} rows of training source `{name}` (never trained on); mean AUROC over "
            f"{', '.join(h['mean_over']) or 'no measurable finding'}: **{fmt(h['mean_auroc'])}**.",
            "",
            "| finding | n (pos) | AUROC [95% CI] |",
            "|---|---|---|",
        ]
        for label, m in h["per_label"].items():
            ci = m.get("auroc_ci")
            lines.append(
                f"| {label} | {m['n']} ({m['positives']}) | "
                + (
                    f"{fmt(m['auroc'])}" + (f" [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else "")
                    if m["measurable"]
                    else "not measurable (one class)"
                )
                + " |"
            )
    lines += [
        "",
        "## Intended use",
        "Research and engineering of the chexops platform; as a triage aid it would flag studies for a radiologist's "
        "earlier reading. It does not diagnose, and its outputs are not to be used for patient care without clinical "
        "validation.",
        "",
        "## Limits",
        "- Trained and evaluated on the data above only; performance on other hospitals, scanners or populations is "
        "unknown.",
        "- Labels come from report mining (CheXpert) and are noisy; uncertain labels are excluded from evaluation.",
        "- Small slices give wide intervals; a slice gap is only meaningful with enough images and positives.",
        f"- Calibration: see the reliability diagrams; mean ECE {fmt(record.mean_ece)}. Probabilities are not risks.",
        f"- Hard cases (the most confidently wrong images): {record.hard_cases.count} under `evaluation/hard_cases/`.",
    ]
    if "synth" in str(cfg.data.csv or "") or "synth" in str(cfg.data.root or ""):
        lines.append(
            "- The data appears to be the synthetic demo dataset: these numbers say nothing about real radiographs."
        )
    return "\n".join(lines) + "\n"


def format_result(result: Evaluation) -> str:
    """The human summary of `evaluate_run`."""
    ci = result.mean_auroc_ci
    lines = [
        f"Run {result.run_id} evaluation {result.evaluation_id}: {result.split} mean AUROC {fmt(result.mean_auroc)}"
        + (f" (95% CI {fmt(ci[0])}-{fmt(ci[1])}, {result.bootstrap_unit}s resampled)" if ci else "")
        + f" over {', '.join(result.mean_over)}",
        f"thresholds by {result.rule} on validation; metrics on {result.split} ({result.n} images)",
        "",
        f"{'finding':<28}{'AUROC':>8}{'AUPRC':>8}{'thr':>7}{'sens':>7}{'spec':>7}{'ECE':>7}",
    ]
    for label, m in result.per_label.items():
        lines.append(
            f"{label:<28}{fmt(m['auroc']):>8}{fmt(m['auprc']):>8}"
            f"{fmt(m['threshold'], 2):>7}{fmt(m['sensitivity'], 2):>7}"
            f"{fmt(m['specificity'], 2):>7}{fmt(m['ece']):>7}"
        )
    lines += ["", f"{'slice':<24}{'n':>6}{'min pos':>8}{'mean AUROC':>12}{'gap':>8}"]
    for s in result.slices:
        lines.append(f"{s['slice']:<24}{s['n']:>6}{s['min_positives']:>8}{fmt(s['mean_auroc']):>12}{fmt(s['gap']):>8}")
    for name, h in result.holdouts.items():
        ci = h.get("mean_auroc_ci")
        lines += [
            "",
            f"hold-out of source {name} ({h['n']} images): mean AUROC {fmt(h['mean_auroc'])}"
            + (f" (95% CI {fmt(ci[0])}-{fmt(ci[1])})" if ci else "")
            + f" over {', '.join(h['mean_over']) or 'no measurable finding'}",
            f"{'finding':<28}{'AUROC':>8}{'n':>6}{'pos':>6}",
        ]
        for label, m in h["per_label"].items():
            lines.append(
                f"{label:<28}{fmt(m['auroc']) if m['measurable'] else 'not measurable':>8}"
                f"{m['n']:>6}{m['positives']:>6}"
            )
    lines += ["", f"{result.hard_cases.count} hard cases, plots and model card logged to {result.artifact_uri}"]
    return "\n".join(lines)
