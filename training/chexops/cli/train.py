"""`chexops train|evaluate|register|export` and `chexops bento import|build`: the training pipeline's steps."""

from __future__ import annotations

import re
from pathlib import Path

import click

from chexops.cli.output import Output, result_output
from chexops.core.names import DEFAULT_MODEL_NAME
from chexops.evaluation.gate import GateConfig
from chexops.export.onnx import MAX_INT8_AUROC_DROP

_GATE = GateConfig.model_fields  # the gate's defaults, shown in --help


@click.command("train", context_settings={"ignore_unknown_options": True})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="YAML training config.",
)
@click.argument("overrides", nargs=-1)
@click.option("--no-resume", is_flag=True, help="Start afresh even if a checkpoint of this config exists.")
@click.option(
    "--checkpoint-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Default: $CHEXOPS_HOME/checkpoints/NAME.",
)
@result_output
def train_cmd(
    config_path: Path, overrides: tuple[str, ...], no_resume: bool, checkpoint_dir: Path | None
) -> Output | None:
    """Train a model; OVERRIDES are key.sub=value pairs (e.g. train.epochs=1 model.name=vit)."""
    from chexops.config import load_config
    from chexops.train.loop import train

    config = load_config(config_path, overrides)
    summary = train(config, resume=not no_resume, checkpoint_dir=checkpoint_dir)
    if summary is None:  # a non-zero rank under torchrun
        return None
    human = f"Run {summary.run_id}: validation mean AUROC {summary.mean_auroc:.4f} (best epoch {summary.best_epoch})"
    if summary.test is not None:
        human += f"; test AUROC {summary.test.auroc:.4f}"
    return Output(summary, human)


@click.command("evaluate")
@click.option("--run", "run_ref", required=True, help="Training run: RUN_ID or runs:/RUN_ID/checkpoint/model.pt.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Data config (default: the run's config.yaml).",
)
@click.option(
    "--threshold-rule",
    type=click.Choice(["youden", "sensitivity"]),
    default="youden",
    show_default=True,
    help="How operating thresholds are chosen on validation data.",
)
@click.option(
    "--target-sensitivity", type=float, default=0.9, show_default=True, help="For --threshold-rule sensitivity."
)
@click.option(
    "--bootstrap",
    "n_bootstrap",
    type=int,
    default=1000,
    show_default=True,
    help="Bootstrap resamples for the AUROC intervals.",
)
@click.option(
    "--hard-cases", type=int, default=32, show_default=True, help="How many most confidently wrong images to keep."
)
@result_output
def evaluate_cmd(
    run_ref: str,
    config_path: Path | None,
    threshold_rule: str,
    target_sensitivity: float,
    n_bootstrap: int,
    hard_cases: int,
) -> Output:
    """Evaluate a training run (metrics, thresholds, calibration, slices, hard cases) and log it to the run."""
    from chexops.evaluation.report import format_result
    from chexops.evaluation.run import evaluate_run

    result = evaluate_run(
        run_ref,
        config_path=config_path,
        rule=threshold_rule,
        target_sensitivity=target_sensitivity,
        n_bootstrap=n_bootstrap,
        hard_cases=hard_cases,
    )
    return Output(result, format_result(result))


@click.command("register")
@click.option("--run", "run_ref", required=True, help="An evaluated training run: RUN_ID or runs:/RUN_ID/...")
@click.option("--evaluation", "evaluation_id", help="Which evaluation of the run to judge [default: its latest].")
@click.option("--name", default=DEFAULT_MODEL_NAME, show_default=True, help="Registered model name.")
@click.option(
    "--gate-config",
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML gate limits (e.g. configs/gate.yaml); flags override.",
)
@click.option(
    "--min-mean-auroc",
    type=float,
    help=f"Floor for the lower bound of the mean AUROC's 95% interval [default: {_GATE['min_mean_auroc'].default}].",
)
@click.option(
    "--max-slice-gap",
    type=float,
    help="Largest allowed shortfall of a slice's mean AUROC below the whole "
    f"[default: {_GATE['max_slice_gap'].default}].",
)
@click.option(
    "--min-slice-positives",
    type=int,
    help="Slices where a finding has fewer positives are not judged "
    f"[default: {_GATE['min_slice_positives'].default}].",
)
@click.option(
    "--max-regression",
    type=float,
    help=f"Largest allowed mean AUROC drop against the production model [default: {_GATE['max_regression'].default}].",
)
@result_output
def register_cmd(
    run_ref: str,
    evaluation_id: str | None,
    name: str,
    gate_config: Path | None,
    min_mean_auroc: float | None,
    max_slice_gap: float | None,
    min_slice_positives: int | None,
    max_regression: float | None,
    as_json: bool,
) -> Output:
    """Quality gate on held-out evidence, then a registry version with alias `candidate`; exit 3 (nothing registered)
    on refusal."""
    from chexops.core.errors import GateRefused
    from chexops.evaluation.gate import format_verdicts, load_gate_config
    from chexops.registry.register import register_run

    gate = load_gate_config(
        gate_config,
        {
            "min_mean_auroc": min_mean_auroc,
            "max_slice_gap": max_slice_gap,
            "min_slice_positives": min_slice_positives,
            "max_regression": max_regression,
        },
    )
    result = register_run(run_ref, name=name, gate=gate, evaluation_id=evaluation_id)
    table = format_verdicts(result.gate)
    if result.passed:
        human = (
            f"{table}\n\nGate passed on evaluation {result.evaluation_id}: {name} version {result.version} "
            f"has alias {result.alias} ({result.model_uri})."
        )
    else:
        human = f"{table}\n\nGate refused run {result.run_id} (evaluation {result.evaluation_id}): nothing registered."
    # The registry version this run became joins the run's freight (and is tagged with it).
    facts = {"model_name": name, "model_version": result.version} if result.passed else None
    for source, h in result.holdouts.items():  # reported, not judged
        human += f"\nHold-out of source {source} ({h['n']} images, not judged): mean AUROC {h['mean_auroc']}."
    if as_json:
        click.echo(table, err=True)
    refusal = None
    if not result.passed:
        failed_verdicts = [v for v in result.gate if not v.passed]
        failed = ", ".join(v.criterion for v in failed_verdicts)
        why = "; ".join(f"{v.criterion}: {v.detail}" for v in failed_verdicts)
        refusal = GateRefused(f"the quality gate refused run {result.run_id} ({failed}); nothing was registered. {why}")
    return Output(result, human, refusal, freight=facts)


@click.command("export")
@click.option(
    "--model",
    "model_uri",
    required=True,
    help="models:/NAME@ALIAS or models:/NAME/VERSION that passed the gate "
    "(runs:/RUN_ID or an ungated version needs --unevaluated).",
)
@click.option(
    "--unevaluated",
    is_flag=True,
    help="Export a run or version the gate did not approve; its metadata says "
    "evaluated=false and the service shows a warning.",
)
@click.option(
    "--max-int8-auroc-drop",
    type=click.FloatRange(0),
    default=MAX_INT8_AUROC_DROP,
    show_default=True,
    help="Refuse (exit 3) when static int8 loses more mean AUROC than this against fp32 on validation.",
)
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), help="Default: $CHEXOPS_HOME/exports/NAME-vVERSION."
)
@click.option(
    "--calibration",
    default=256,
    show_default=True,
    type=click.IntRange(1),
    help="Training images that calibrate static int8.",
)
@click.option(
    "--runs", default=50, show_default=True, type=click.IntRange(1), help="Timed runs per latency (median; batch 1)."
)
@click.option(
    "--threads", default=2, show_default=True, type=click.IntRange(1), help="ONNX Runtime intra-op threads for latency."
)
@click.option(
    "--activations",
    type=click.Choice(["uint8", "int8"]),
    default="uint8",
    show_default=True,
    help="Activation type of the static int8 model (weights are always int8, per channel).",
)
@click.option(
    "--name", default=None, help=f"Registered model name for a runs:/ reference (default {DEFAULT_MODEL_NAME})."
)
@click.option(
    "--bento/--no-bento", default=True, show_default=True, help="Also import the files into the Bento model store."
)
@result_output
def export_cmd(
    model_uri: str,
    unevaluated: bool,
    max_int8_auroc_drop: float,
    out: Path | None,
    calibration: int,
    runs: int,
    threads: int,
    activations: str,
    name: str | None,
    bento: bool,
) -> Output:
    """ONNX fp32 + int8 with metadata, gated (parity with PyTorch, int8 AUROC cost: exit 3), logged to the run; Bento
    import."""
    from chexops.export.onnx import export_model

    summary = export_model(
        model_uri,
        out,
        calibration=calibration,
        runs=runs,
        threads=threads,
        name=name,
        activations=activations,
        bento=bento,
        unevaluated=unevaluated,
        max_int8_auroc_drop=max_int8_auroc_drop,
    )
    e = summary.export
    human = (
        f"Exported {e.model['uri']} (run {e.model['run_id']}) to {e.dir}: parity {e.parity_max_abs_diff:.1e}; "
        f"static int8 ΔAUROC {e.int8_auroc_delta:+.4f}, latency ×{e.int8_latency_ratio:.2f}; "
        f"dynamic int8 ΔAUROC {e.dynamic_int8_auroc_delta:+.4f}, latency ×{e.dynamic_int8_latency_ratio:.2f} "
        f"(fp32 {e.fp32_latency_ms:.2f} ms)"
    )
    if summary.bento_model is not None:
        human += f"\nBento model {summary.bento_model.tag}"
    # What was exported must be the freight's model (a fact that differs is refused, exit 2).
    return Output(summary, human, freight={"model_name": e.model.get("name"), "model_version": e.model.get("version")})


@click.group()
def bento() -> None:
    """The Bento model store and the serving image's build context."""


@bento.command("import")
@click.option(
    "--model", "model_uri", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID (exported)."
)
@click.option(
    "--name", default=None, help=f"Registered model name for a runs:/ reference (default {DEFAULT_MODEL_NAME})."
)
@result_output
def bento_import(model_uri: str, name: str | None) -> Output:
    """Import a model's exported ONNX files (from its run's export/ artifacts) into the Bento store."""
    from chexops.export.bento import BentoImport, import_reference

    result = import_reference(model_uri, name)
    return Output(
        BentoImport(bento_model=result), f"Bento model {result.tag} ({result.path})", freight=_bento_facts(result.tag)
    )


@bento.command("build")
@click.option(
    "--model", "model_uri", required=True, help="models:/NAME/VERSION, models:/NAME@ALIAS or runs:/RUN_ID (exported)."
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory to write the Bento to: the image's build context.",
)
@click.option(
    "--source",
    type=click.Path(file_okay=False, path_type=Path),
    default=".",
    show_default=True,
    help="Repository root holding bentos/bentofile.yaml.",
)
@click.option(
    "--name", default=None, help=f"Registered model name for a runs:/ reference (default {DEFAULT_MODEL_NAME})."
)
@result_output
def bento_build(model_uri: str, out: Path, source: Path, name: str | None) -> Output:
    """Build the Bento (service + model) and copy it to --out, ready for an image build (BuildKit)."""
    from chexops.export.bento_build import build_context

    result = build_context(model_uri, out.resolve(), source.resolve(), name)
    return Output(
        result,
        f"Bento {result.bento} with {result.bento_model} in {result.context} (Dockerfile {result.dockerfile})",
        freight=_bento_facts(result.bento_model),
    )


def _bento_facts(tag: str) -> dict[str, str]:
    """The registry version a Bento model tag names (NAME:vVERSION; the name is the tag's sanitised form)."""
    found = re.fullmatch(r"[^:]+:v(\d+)", str(tag))
    return {"model_version": found.group(1)} if found else {}
