"""`chexops data synth|stats|prepare|ingest`."""

from __future__ import annotations

from pathlib import Path

import click

from chexops.cli.output import Output, result_output
from chexops.core.errors import UserInputError


@click.group()
def data() -> None:
    """Datasets: synthesise, inspect, prepare, ingest."""


@data.command("synth")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Dataset root to create.")
@click.option("--patients", default=800, show_default=True, help="Training patients.")
@click.option("--valid-patients", default=200, show_default=True, help="Held-out patients (valid.csv).")
@click.option("--size", "image_size", default=96, show_default=True, help="Image side in pixels.")
@click.option("--seed", default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing dataset.")
@click.option("--no-images", is_flag=True, help="Write the CSVs only (for testing readers at full CheXpert scale).")
@result_output
def data_synth(
    out: Path,
    patients: int,
    valid_patients: int,
    image_size: int,
    seed: int,
    overwrite: bool,
    no_images: bool,
    as_json: bool,
) -> Output:
    """Write a synthetic dataset in exactly the CheXpert layout (CSV and JPEG images)."""
    from chexops.data.synth import synthesize

    summary = synthesize(
        out,
        patients=patients,
        valid_patients=valid_patients,
        image_size=image_size,
        seed=seed,
        overwrite=overwrite,
        progress=not as_json,
        images=not no_images,
    )
    return Output(
        summary,
        f"Wrote {summary.train_rows:,} training and {summary.valid_rows:,} held-out images "
        f"under {summary.root} ({summary.seconds:.1f} s).",
    )


@data.command("stats")
@click.argument("csv", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    help="Dataset root: also count missing and unreadable images.",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Take labels and policy from this training config.",
)
@result_output
def data_stats(csv: Path, root: Path | None, config_path: Path | None) -> Output:
    """Rows, patients, studies, views and per-label counts of a CheXpert CSV."""
    from chexops.config import PolicyConfig, load_config
    from chexops.core.labels import CHEXPERT_LABELS
    from chexops.data.stats import csv_stats, format_stats

    if config_path is not None:
        cfg = load_config(config_path).data
        labels, policy = cfg.labels, cfg.policy
    else:
        labels, policy = list(CHEXPERT_LABELS), PolicyConfig()
    stats = csv_stats(csv, labels, policy, root)
    return Output(stats, format_stats(stats))


@data.command("prepare")
@click.option("--source", required=True, help="CheXpert copy: a folder or s3://BUCKET/PREFIX.")
@click.option("--out", "out_url", required=True, help="Where the resized dataset goes: a folder or s3://BUCKET/PREFIX.")
@click.option("--size", type=int, default=320, show_default=True, help="Shorter side of the output images, in pixels.")
@click.option("--workers", type=int, default=None, help="Decoding processes (default: one per CPU).")
@click.option(
    "--max-bad-fraction",
    type=float,
    default=0.01,
    show_default=True,
    help="Fail (exit 1) when more than this share of images is missing or unreadable.",
)
@click.option("--endpoint-url", default=None, help="S3-compatible endpoint (default: $AWS_ENDPOINT_URL, else AWS).")
@result_output
def prepare_cmd(
    source: str, out_url: str, size: int, workers: int | None, max_bad_fraction: float, endpoint_url: str | None
) -> Output:
    """Resize a CheXpert copy for training (local or S3) and write its manifest (the data version)."""
    from chexops.data.prepare import prepare

    if workers is not None and workers < 1:
        raise UserInputError("--workers must be at least 1.")
    summary = prepare(source, out_url, size, workers, max_bad_fraction, endpoint_url)
    return Output(
        summary,
        f"Prepared {summary.images:,} images ({summary.prepared:,} now, {summary.skipped:,} "
        f"already done, {summary.bad} bad) at {size} px in {summary.seconds:.1f} s; data version "
        f"{summary.data_version}, manifest {summary.manifest}.",
        freight={"data_version": summary.data_version},
    )


@data.command("ingest")
@click.option("--source", required=True, help="What to copy: a folder or s3://BUCKET/PREFIX (the Swift container).")
@click.option("--dest", required=True, help="Where it goes: s3://BUCKET/PREFIX (MinIO) or a folder.")
@click.option("--source-endpoint", default=None, help="The source's S3 endpoint (default: $AWS_ENDPOINT_URL).")
@click.option("--dest-endpoint", default=None, help="The destination's S3 endpoint (default: $AWS_ENDPOINT_URL).")
@click.option("--source-profile", default=None, help="AWS profile with the source's credentials (default: boto3's).")
@click.option("--dest-profile", default=None, help="AWS profile with the destination's credentials.")
@click.option("--workers", type=int, default=8, show_default=True, help="Objects copied at once.")
@result_output
def ingest_cmd(
    source: str,
    dest: str,
    source_endpoint: str | None,
    dest_endpoint: str | None,
    source_profile: str | None,
    dest_profile: str | None,
    workers: int,
    as_json: bool,
) -> Output:
    """Copy a dataset tree, sending only objects missing or changed at the destination (resumable)."""
    from chexops.data.ingest import ingest
    from chexops.data.prepare import Location

    summary = ingest(
        Location(source, source_endpoint, source_profile),
        Location(dest, dest_endpoint, dest_profile),
        workers=workers,
        progress=not as_json,
    )
    return Output(
        summary,
        f"{summary.dest}: sent {summary.sent:,} of {summary.objects:,} objects ({summary.missing:,} missing, "
        f"{summary.changed:,} changed, {summary.unchanged:,} already there; {summary.bytes_sent / 1e6:,.1f} MB) "
        f"in {summary.seconds:.1f} s.",
    )
