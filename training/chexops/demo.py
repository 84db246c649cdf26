"""`make demo`: the lifecycle on the embedded default, one `chexops` command per step.

Each step runs as its own process with `--json`, exactly as an Argo step would; the JSON each
prints is collected into `$CHEXOPS_HOME/demo/summary.json` under the step's key.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import paths
from .atomic import atomic_write_text
from .demo_service import format_findings, query_service
from .errors import ChexopsError
from .model_ref import DEFAULT_MODEL_NAME

log = logging.getLogger(__name__)

MODEL_NAME = DEFAULT_MODEL_NAME


def run_step(*args: str) -> dict[str, Any]:
    """Run `chexops ARGS --json` in a child process; its logs pass through, its JSON comes back."""
    cmd = [sys.executable, "-m", "chexops", *args, "--json"]
    log.info("$ chexops %s --json", " ".join(args))
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "CHEXOPS_HOME": str(paths.home())})
    if proc.returncode != 0:
        raise ChexopsError(f"demo step 'chexops {' '.join(args)}' failed with exit code {proc.returncode} (see its messages above).")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_summary(summary: dict[str, Any]) -> Path:
    return atomic_write_text(paths.home() / "demo" / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")


def run_demo(config: Path) -> tuple[dict[str, Any], str]:
    started = time.monotonic()
    home = paths.home()
    summary: dict[str, Any] = {"chexops_home": str(home), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

    data_root = home / "data" / "synth"
    if (data_root / "CheXpert-v1.0-small" / "train.csv").exists():
        log.info("Synthetic data already at %s", data_root)
        summary["data"] = {"root": str(data_root), "reused": True}
    else:
        summary["data"] = run_step("data", "synth", "--out", str(data_root))
    write_summary(summary)

    summary["train"] = run_step("train", "--config", str(config))
    write_summary(summary)
    run_id = summary["train"]["run_id"]

    summary["evaluate"] = run_step("evaluate", "--run", run_id)
    write_summary(summary)
    summary["registry"] = run_step("register", "--run", run_id, "--name", MODEL_NAME)
    write_summary(summary)
    candidate = f"models:/{MODEL_NAME}@candidate"
    exported = run_step("export", "--model", candidate)
    summary["export"], summary["bento_model"] = exported["export"], exported["bento_model"]
    write_summary(summary)
    summary["service"] = query_service(candidate, data_root)  # served by reference, resolved as `chexops serve` does
    summary["seconds"] = round(time.monotonic() - started, 1)
    path = write_summary(summary)
    return summary, report(summary, path)


def report(summary: dict[str, Any], path: Path) -> str:
    train = summary["train"]
    lines = ["", "chexops demo", "============", f"MLflow run   {train['run_id']}  ({train['tracking_uri']})",
             f"validation   mean AUROC {train['mean_auroc']:.3f} over {', '.join(train['mean_over'])}"]
    if "test" in train:
        lines.append(f"held-out     mean AUROC {train['test']['mean_auroc']:.3f} (valid.csv, patients never seen in training)")
        lines.append("")
        lines.append(f"{'finding':<28}{'held-out AUROC':>16}")
        for label, value in train["test"]["per_label"].items():
            lines.append(f"{label:<28}{'n/a' if value is None else f'{value:.3f}':>16}")
    if "registry" in summary:
        reg, exp = summary["registry"], summary["export"]
        lines += ["", f"evaluation   mean AUROC {summary['evaluate']['mean_auroc']:.3f}; thresholds chosen on validation data",
                  f"registry     {reg['model']} version {reg['version']}, alias {reg['alias']} (gate passed)",
                  f"export       {exp['fp32']}",
                  f"             int8: AUROC {exp['int8_auroc_delta']:+.4f}, latency x{exp['int8_latency_ratio']:.2f}; "
                  f"parity max |diff| {exp['parity_max_abs_diff']:.1e}",
                  f"bento model  {summary['bento_model']['tag']}"]
    if "service" in summary:
        lines += format_findings(summary["service"])
    lines += ["", f"summary      {path}", f"took         {summary['seconds']:.0f} s"]
    return "\n".join(lines)
