"""The `chexops` command: one subcommand per lifecycle step, the same locally and in Argo.

Every command prints a human summary, or with `--json` one JSON object on stdout. Exit codes:
0 done, 1 failed, 2 the user's input is wrong, 3 a gate refused.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from .data.prepare import prepare_cmd
from .errors import ChexopsError
from .export import MAX_INT8_AUROC_DROP
from .infra.cli import infra
from .loadtest import loadtest_cmd
from .model_ref import DEFAULT_MODEL_NAME, DEFAULT_SERVE_REF
from .step_outputs import write_outputs
from .bento_build import bento_build
from .pipeline_cli import pipeline
from .promote import promote_cmd
from .s3_credentials import s3_credentials
from .triton import triton

log = logging.getLogger("chexops")


def quiet_stdout(func):
    """While a command works, stdout goes to stderr, so that its result (`emit`) is all stdout holds,
    whatever libraries print (MLflow prints run links)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        result_stream = sys.stdout
        with contextlib.redirect_stdout(sys.stderr):
            return func(*args, result_stream=result_stream, **kwargs)

    return wrapper


def emit(obj: dict[str, Any], as_json: bool, human: str, stream) -> None:
    write_outputs(obj)  # for Argo output parameters, when $CHEXOPS_OUTPUTS is set
    click.echo(json.dumps(obj, default=str) if as_json else human, file=stream)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.version_option(package_name="chexops")
def cli(verbose: bool) -> None:
    """chexops: train, evaluate, register, export and serve a chest X-ray classifier."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("alembic", "urllib3", "git", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@cli.group()
def data() -> None:
    """Datasets: synthesise, inspect."""


@data.command("synth")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Dataset root to create.")
@click.option("--patients", default=800, show_default=True, help="Training patients.")
@click.option("--valid-patients", default=200, show_default=True, help="Held-out patients (valid.csv).")
@click.option("--size", "image_size", default=96, show_default=True, help="Image side in pixels.")
@click.option("--seed", default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing dataset.")
@click.option("--no-images", is_flag=True, help="Write the CSVs only (for testing readers at full CheXpert scale).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@quiet_stdout
def data_synth(out: Path, patients: int, valid_patients: int, image_size: int, seed: int, overwrite: bool, no_images: bool,
               as_json: bool, result_stream) -> None:
    """Write a synthetic dataset in exactly the CheXpert layout (CSV and JPEG images)."""
    from .data.synth import synthesize

    summary = synthesize(out, patients=patients, valid_patients=valid_patients, image_size=image_size, seed=seed,
                         overwrite=overwrite, progress=not as_json, images=not no_images)
    emit(summary, as_json, f"Wrote {summary['train_rows']:,} training and {summary['valid_rows']:,} held-out images "
         f"under {summary['root']} ({summary['seconds']:.1f} s).", result_stream)


@data.command("stats")
@click.argument("csv", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), help="Dataset root: also count missing and unreadable images.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), help="Take labels and policy from this training config.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@quiet_stdout
def data_stats(csv: Path, root: Path | None, config_path: Path | None, as_json: bool, result_stream) -> None:
    """Rows, patients, studies, views and per-label counts of a CheXpert CSV."""
    from .config import PolicyConfig, load_config
    from .data.stats import csv_stats, format_stats
    from .labels import CHEXPERT_LABELS

    if config_path is not None:
        cfg = load_config(config_path).data
        labels, policy = cfg.labels, cfg.policy
    else:
        labels, policy = list(CHEXPERT_LABELS), PolicyConfig()
    stats = csv_stats(csv, labels, policy, root)
    emit(stats, as_json, format_stats(stats), result_stream)


@cli.command("train", context_settings={"ignore_unknown_options": True})
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), required=True, help="YAML training config.")
@click.argument("overrides", nargs=-1)
@click.option("--no-resume", is_flag=True, help="Start afresh even if a checkpoint of this config exists.")
@click.option("--checkpoint-dir", type=click.Path(file_okay=False, path_type=Path), help="Default: $CHEXOPS_HOME/checkpoints/NAME.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@quiet_stdout
def train_cmd(config_path: Path, overrides: tuple[str, ...], no_resume: bool, checkpoint_dir: Path | None, as_json: bool, result_stream) -> None:
    """Train a model; OVERRIDES are key.sub=value pairs (e.g. train.epochs=1 model.name=vit)."""
    from .config import load_config
    from .train import train

    config = load_config(config_path, overrides)
    summary = train(config, resume=not no_resume, checkpoint_dir=checkpoint_dir)
    if not summary:  # a non-zero rank under torchrun
        return
    human = f"Run {summary['run_id']}: validation mean AUROC {summary['mean_auroc']:.4f} (best epoch {summary['best_epoch']})"
    if "test" in summary:
        human += f"; test AUROC {summary['test']['auroc']:.4f}"
    emit(summary, as_json, human, result_stream)


@cli.command("evaluate")
@click.option("--run", "run_ref", required=True, help="Training run: RUN_ID or runs:/RUN_ID/checkpoint/model.pt.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), help="Data config (default: the run's config.yaml).")
@click.option("--threshold-rule", type=click.Choice(["youden", "sensitivity"]), default="youden", show_default=True,
              help="How operating thresholds are chosen on validation data.")
@click.option("--target-sensitivity", type=float, default=0.9, show_default=True, help="For --threshold-rule sensitivity.")
@click.option("--bootstrap", "n_bootstrap", type=int, default=1000, show_default=True, help="Bootstrap resamples for the AUROC intervals.")
@click.option("--hard-cases", type=int, default=32, show_default=True, help="How many most confidently wrong images to keep.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@quiet_stdout
def evaluate_cmd(run_ref: str, config_path: Path | None, threshold_rule: str, target_sensitivity: float, n_bootstrap: int,
                 hard_cases: int, as_json: bool, result_stream) -> None:
    """Evaluate a training run (metrics, thresholds, calibration, slices, hard cases) and log it to the run."""
    from .evaluate import evaluate_run, format_result

    result = evaluate_run(run_ref, config_path=config_path, rule=threshold_rule, target_sensitivity=target_sensitivity,
                          n_bootstrap=n_bootstrap, hard_cases=hard_cases)
    emit(result, as_json, format_result(result), result_stream)


@cli.command("register")
@click.option("--run", "run_ref", required=True, help="An evaluated training run: RUN_ID or runs:/RUN_ID/...")
@click.option("--evaluation", "evaluation_id", help="Which evaluation of the run to judge [default: its latest].")
@click.option("--name", default=DEFAULT_MODEL_NAME, show_default=True, help="Registered model name.")
@click.option("--gate-config", type=click.Path(dir_okay=False, path_type=Path), help="YAML gate limits (e.g. configs/gate.yaml); flags override.")
@click.option("--min-mean-auroc", type=float, help="Floor for the lower bound of the mean AUROC's 95% interval [default 0.8].")
@click.option("--max-slice-gap", type=float, help="Largest allowed shortfall of a slice's mean AUROC below the whole [default 0.1].")
@click.option("--min-slice-positives", type=int, help="Slices where a finding has fewer positives are not judged [default 20].")
@click.option("--max-regression", type=float, help="Largest allowed mean AUROC drop against the production model [default 0.02].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@quiet_stdout
def register_cmd(run_ref: str, evaluation_id: str | None, name: str, gate_config: Path | None, min_mean_auroc: float | None,
                 max_slice_gap: float | None, min_slice_positives: int | None, max_regression: float | None, as_json: bool,
                 result_stream) -> None:
    """Quality gate on held-out evidence, then a registry version with alias `candidate`; exit 3 (nothing registered) on refusal."""
    from .errors import GateRefused
    from .gate import Verdict, format_verdicts, load_gate_config
    from .registry import register_run

    gate = load_gate_config(gate_config, {"min_mean_auroc": min_mean_auroc, "max_slice_gap": max_slice_gap,
                                          "min_slice_positives": min_slice_positives, "max_regression": max_regression})
    result = register_run(run_ref, name=name, gate=gate, evaluation_id=evaluation_id)
    table = format_verdicts([Verdict(**v) for v in result["gate"]])
    if result["passed"]:
        human = (f"{table}\n\nGate passed on evaluation {result['evaluation_id']}: {name} version {result['version']} "
                 f"has alias {result['alias']} ({result['model_uri']}).")
    else:
        human = f"{table}\n\nGate refused run {result['run_id']} (evaluation {result['evaluation_id']}): nothing registered."
    for source, h in result["holdouts"].items():  # reported, not judged
        human += f"\nHold-out of source {source} ({h['n']} images, not judged): mean AUROC {h['mean_auroc']}."
    if as_json:
        click.echo(table, err=True)
    emit(result, as_json, human, result_stream)
    if not result["passed"]:
        failed = ", ".join(v["criterion"] for v in result["gate"] if not v["passed"])
        why = "; ".join(f"{v['criterion']}: {v['detail']}" for v in result["gate"] if not v["passed"])
        raise GateRefused(f"the quality gate refused run {result['run_id']} ({failed}); nothing was registered. {why}")


@cli.command("demo")
@click.option("--config", "config_path", default="configs/demo.yaml", show_default=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@quiet_stdout
def demo_cmd(config_path: Path, as_json: bool, result_stream) -> None:
    """The whole lifecycle on this machine; writes $CHEXOPS_HOME/demo/summary.json."""
    from .demo import run_demo

    summary, report = run_demo(config_path)
    emit(summary, as_json, report, result_stream)


@cli.command("export")
@click.option("--model", "model_uri", required=True, help="models:/NAME@ALIAS or models:/NAME/VERSION that passed the gate "
              "(runs:/RUN_ID or an ungated version needs --unevaluated).")
@click.option("--unevaluated", is_flag=True, help="Export a run or version the gate did not approve; its metadata says "
              "evaluated=false and the service shows a warning.")
@click.option("--max-int8-auroc-drop", type=click.FloatRange(0), default=MAX_INT8_AUROC_DROP, show_default=True,
              help="Refuse (exit 3) when static int8 loses more mean AUROC than this against fp32 on validation.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Default: $CHEXOPS_HOME/exports/NAME-vVERSION.")
@click.option("--calibration", default=256, show_default=True, type=click.IntRange(1), help="Training images that calibrate static int8.")
@click.option("--runs", default=50, show_default=True, type=click.IntRange(1), help="Timed runs per latency (median; batch 1).")
@click.option("--threads", default=2, show_default=True, type=click.IntRange(1), help="ONNX Runtime intra-op threads for latency.")
@click.option("--activations", type=click.Choice(["uint8", "int8"]), default="uint8", show_default=True,
              help="Activation type of the static int8 model (weights are always int8, per channel).")
@click.option("--name", default=None, help=f"Registered model name for a runs:/ reference (default {DEFAULT_MODEL_NAME}).")
@click.option("--bento/--no-bento", default=True, show_default=True, help="Also import the files into the Bento model store.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@quiet_stdout
def export_cmd(model_uri: str, unevaluated: bool, max_int8_auroc_drop: float, out: Path | None, calibration: int, runs: int,
               threads: int, activations: str, name: str | None, bento: bool, as_json: bool, result_stream) -> None:
    """ONNX fp32 + int8 with metadata, gated (parity with PyTorch, int8 AUROC cost: exit 3), logged to the run; Bento import."""
    from .export import export_model

    summary = export_model(model_uri, out, calibration=calibration, runs=runs, threads=threads, name=name,
                           activations=activations, bento=bento, unevaluated=unevaluated, max_int8_auroc_drop=max_int8_auroc_drop)
    e = summary["export"]
    human = (f"Exported {e['model']['uri']} (run {e['model']['run_id']}) to {e['dir']}: parity {e['parity_max_abs_diff']:.1e}; "
             f"static int8 ΔAUROC {e['int8_auroc_delta']:+.4f}, latency ×{e['int8_latency_ratio']:.2f}; "
             f"dynamic int8 ΔAUROC {e['dynamic_int8_auroc_delta']:+.4f}, latency ×{e['dynamic_int8_latency_ratio']:.2f} "
             f"(fp32 {e['fp32_latency_ms']:.2f} ms)")
    if "bento_model" in summary:
        human += f"\nBento model {summary['bento_model']['tag']}"
    emit(summary, as_json, human, result_stream)


@cli.group()
def bento() -> None:
    """The Bento model store."""


@bento.command("import")
@click.option("--model", "model_uri", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID (exported).")
@click.option("--name", default=None, help=f"Registered model name for a runs:/ reference (default {DEFAULT_MODEL_NAME}).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@quiet_stdout
def bento_import(model_uri: str, name: str | None, as_json: bool, result_stream) -> None:
    """Import a model's exported ONNX files (from its run's export/ artifacts) into the Bento store."""
    from .bento_store import import_reference

    result = import_reference(model_uri, name)
    emit({"bento_model": result}, as_json, f"Bento model {result['tag']} ({result['path']})", result_stream)


@cli.command("serve")
@click.option("--port", default=3000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--host", default="127.0.0.1", show_default=True, help="0.0.0.0 to accept other machines.")
@click.option("--model", "model_tag", default=None, help="models:/NAME@ALIAS, models:/NAME/VERSION, or a Bento tag NAME:VERSION "
              f"[default: $CHEXOPS_MODEL or {DEFAULT_SERVE_REF}].")
@click.option("--precision", type=click.Choice(["fp32", "int8"]), default=None, help="ONNX file to run [default: $CHEXOPS_PRECISION or fp32].")
@click.option("--threads", type=click.IntRange(1), default=None, help="ONNX Runtime intra-op threads [default: $CHEXOPS_THREADS or 2].")
@click.option("--development", is_flag=True, help="bentoml serve --development (reload on code changes).")
def serve_cmd(port: int, host: str, model_tag: str | None, precision: str | None, threads: int | None, development: bool) -> None:
    """The clinic endpoint (bentoml serve bentos/service.py:Chexops) until interrupted."""
    from .serving.launch import serve

    code = serve(port, host, model_tag, precision, threads, development)
    if code:
        raise ChexopsError(f"bentoml serve exited with code {code} (see its messages above).")


@cli.group()
def feedback() -> None:
    """Clinicians' feedback stored by the service."""


@feedback.command("export")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Dataset root to write.")
@click.option("--store", "store_url", default=None, help="sqlite:///PATH or postgresql://... [default: $CHEXOPS_FEEDBACK_URL or $CHEXOPS_HOME/feedback/feedback.db].")
@click.option("--overwrite", is_flag=True, help="Replace an existing export.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@quiet_stdout
def feedback_export(out: Path, store_url: str | None, overwrite: bool, as_json: bool, result_stream) -> None:
    """The stored feedback as a CheXpert-layout dataset (train.csv + PNG images): the retraining seed."""
    from .serving.feedback_export import export_feedback
    from .serving.feedback_store import FeedbackStore
    from .serving.settings import Settings

    store = FeedbackStore(store_url or Settings.from_env().feedback_location())
    try:
        summary = export_feedback(store, out, overwrite=overwrite)
    finally:
        store.close()
    skipped = summary["skipped"]
    emit(summary, as_json, f"Wrote {summary['rows']} images with labels to {summary['csv']} from {summary['feedback']} feedback "
         f"({skipped['incorrect_without_labels']} 'incorrect' without labels and {skipped['no_image']} without an image skipped).",
         result_stream)


cli.add_command(infra)
data.add_command(prepare_cmd)
bento.add_command(bento_build)
cli.add_command(pipeline)
cli.add_command(loadtest_cmd)
cli.add_command(promote_cmd)
cli.add_command(triton)
cli.add_command(s3_credentials)

from .clinic_cli import report, simulate_command  # noqa: E402  (it imports emit and quiet_stdout from here)

cli.add_command(simulate_command)
cli.add_command(report)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one paragraph on stderr and an exit code, never a traceback."""
    try:
        cli.main(args=argv, prog_name="chexops", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ChexopsError as exc:
        click.echo(f"chexops: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    sys.exit(0)
