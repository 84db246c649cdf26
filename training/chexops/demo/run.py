"""`make demo`: the lifecycle on the embedded default, through the cluster's own pipeline definition.

The synthetic dataset stands in for the CheXpert copy in the bucket; then the training
WorkflowTemplate (`workflows/training.yaml`) runs locally (`chexops pipeline run --local`): each of
its steps is one `chexops` process with the template's own command and parameters, printed under
the workflow's task names. Each step's JSON result is collected into
`$CHEXOPS_HOME/demo/summary.json`; the demo ends by serving the registered model.
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

from chexops.core import paths
from chexops.core.errors import ChexopsError
from chexops.core.files import atomic_write_text
from chexops.core.names import DEFAULT_MODEL_NAME
from chexops.data.chexpert import DATASET_DIR
from chexops.demo.service import format_findings, query_service

log = logging.getLogger(__name__)

MODEL_NAME = DEFAULT_MODEL_NAME
WORKFLOW = Path("workflows") / "training.yaml"
# The workflow's task whose result fills each summary key.
TASK_RESULTS = {
    "prepare": "main.prepare",
    "train": "main.train",
    "evaluate": "main.evaluate",
    "registry": "main.gate.register",
    "export": "main.export",
    "bento": "main.bento",
}


def run_step(*args: str) -> dict[str, Any]:
    """Run `chexops ARGS --json` in a child process; its logs pass through, its JSON comes back."""
    cmd = [sys.executable, "-m", "chexops", *args, "--json"]
    log.info("$ chexops %s --json", " ".join(args))
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "CHEXOPS_HOME": str(paths.home())})
    if proc.returncode != 0:
        raise ChexopsError(
            f"demo step 'chexops {' '.join(args)}' failed with exit code {proc.returncode} (see its messages above)."
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_training_workflow(config: Path, data_root: Path, home: Path) -> dict[str, Any]:
    """The training WorkflowTemplate, run locally with this machine's parameters."""
    from chexops.config import load_config
    from chexops.core.freight import running_commit

    commit = running_commit()  # the freight's commit: every step checks that it runs this code
    if commit is None:
        raise ChexopsError("the demo runs the pipeline from a git checkout (its HEAD is the run's commit); none here.")
    parameters = {
        "config": str(config),
        "data-source": str(data_root),
        # As in the cluster: prepare writes the persistent copy, the cache step copies it where training reads.
        "prepared": str(home / "data" / "prepared"),
        "data-dir": str(home / "data" / "cache"),
        "image-size": str(load_config(config).preprocess.size),
        "gpus": "1",
        "model-name": MODEL_NAME,
        "mlflow-tracking-uri": paths.default_tracking_uri(),
        "s3-endpoint": "",
        "commit": commit,
    }
    args = ["pipeline", "run", str(WORKFLOW), "--local"]
    for name, value in parameters.items():
        args += ["-p", f"{name}={value}"]
    return run_step(*args)


def write_summary(summary: dict[str, Any]) -> Path:
    return atomic_write_text(paths.home() / "demo" / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")


def run_demo(config: Path, pacs: bool = False) -> tuple[dict[str, Any], str]:
    started = time.monotonic()
    home = paths.home()
    summary: dict[str, Any] = {"chexops_home": str(home), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

    data_root = home / "data" / "synth"
    if (data_root / DATASET_DIR / "train.csv").exists():
        log.info("Synthetic data already at %s", data_root)
        summary["data"] = {"root": str(data_root), "reused": True}
    else:
        summary["data"] = run_step("data", "synth", "--out", str(data_root))
    write_summary(summary)

    summary["pipeline"] = run_training_workflow(config, data_root, home)
    results = {n["name"]: n.get("result") for n in summary["pipeline"]["nodes"]}
    for key, task in TASK_RESULTS.items():
        if results.get(task):
            summary[key] = results[task]
    summary["export"], summary["bento_model"] = summary["export"]["export"], summary.pop("bento")["bento_model"]
    candidate = f"models:/{MODEL_NAME}@candidate"
    write_summary(summary)
    summary["service"] = query_service(candidate, data_root)  # served by reference, resolved as `chexops serve` does
    if pacs:  # the same model read through a local Orthanc and the DICOM gateway
        from chexops.demo.pacs import pacs_flow

        summary["pacs"] = pacs_flow(candidate, data_root)
    summary["seconds"] = round(time.monotonic() - started, 1)
    path = write_summary(summary)
    return summary, report(summary, path)


def report(summary: dict[str, Any], path: Path) -> str:
    train = summary["train"]
    lines = [
        "",
        "chexops demo",
        "============",
        f"MLflow run   {train['run_id']}  ({train['tracking_uri']})",
        f"validation   mean AUROC {train['mean_auroc']:.3f} over {', '.join(train['mean_over'])}",
    ]
    if "test" in train:
        lines.append(
            f"held-out     mean AUROC {train['test']['mean_auroc']:.3f} (valid.csv, patients never seen in training)"
        )
        lines.append("")
        lines.append(f"{'finding':<28}{'held-out AUROC':>16}")
        for label, value in train["test"]["per_label"].items():
            lines.append(f"{label:<28}{'n/a' if value is None else f'{value:.3f}':>16}")
    if "registry" in summary:
        reg, exp = summary["registry"], summary["export"]
        lines += [
            "",
            f"evaluation   mean AUROC {summary['evaluate']['mean_auroc']:.3f}; thresholds chosen on validation data",
            f"registry     {reg['model']} version {reg['version']}, alias {reg['alias']} (gate passed)",
            f"export       {exp['fp32']}",
            f"             int8: AUROC {exp['int8_auroc_delta']:+.4f}, latency x{exp['int8_latency_ratio']:.2f}; "
            f"parity max |diff| {exp['parity_max_abs_diff']:.1e}",
            f"bento model  {summary['bento_model']['tag']}",
        ]
    if "service" in summary:
        lines += format_findings(summary["service"])
    if "pacs" in summary:
        from chexops.demo.pacs import format_pacs

        lines += format_pacs(summary["pacs"])
    if "pipeline" in summary:
        lines += ["", f"workflow     {summary['pipeline']['file']} ({summary['pipeline']['workflow']}, run locally)"]
        lines += [
            f"  {n['name']:<24}{n.get('phase', ''):<11}{n.get('seconds', 0):>6.0f} s  {n.get('message', '')}".rstrip()
            for n in summary["pipeline"]["nodes"]
        ]
    lines += ["", f"summary      {path}", f"took         {summary['seconds']:.0f} s"]
    return "\n".join(lines)
