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

from .errors import ChexopsError

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
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@quiet_stdout
def data_synth(out: Path, patients: int, valid_patients: int, image_size: int, seed: int, overwrite: bool, as_json: bool, result_stream) -> None:
    """Write a synthetic dataset in exactly the CheXpert layout (CSV and JPEG images)."""
    from .data.synth import synthesize

    summary = synthesize(out, patients=patients, valid_patients=valid_patients, image_size=image_size, seed=seed,
                         overwrite=overwrite, progress=not as_json)
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


@cli.command("demo")
@click.option("--config", "config_path", default="configs/demo.yaml", show_default=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@quiet_stdout
def demo_cmd(config_path: Path, as_json: bool, result_stream) -> None:
    """The whole lifecycle on this machine; writes $CHEXOPS_HOME/demo/summary.json."""
    from .demo import run_demo

    summary, report = run_demo(config_path)
    emit(summary, as_json, report, result_stream)


def _register_optional() -> None:
    try:
        from .infra.cli import infra
    except ImportError:
        return
    cli.add_command(infra)


_register_optional()


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
