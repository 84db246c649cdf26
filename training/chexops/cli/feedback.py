"""`chexops feedback export`: the clinicians' feedback as the next training set; `prune`: the retention policy
of the images it keeps; `backup` and `restore`: copies of the store that restore."""

from __future__ import annotations

from pathlib import Path

import click

from chexops.cli.output import Output, result_output
from chexops.core.errors import UserInputError

UNLABELLED_DAYS = 30.0  # an image nobody gave feedback on within a month will not get any
EXPORTED_DAYS = 30.0  # exported into a training set: a month more, for a retraining to be rerun or reviewed
LABELLED_DAYS = 365.0  # with feedback but never exported (an export that never ran, an unusable image): a year


@click.group()
def feedback() -> None:
    """Clinicians' feedback stored by the service."""


def _store_url(store_url: str | None) -> str:
    from chexops.serving.settings import Settings

    return store_url or Settings.from_env().feedback_location()


def _existing_store(store_url: str | None):
    """The store named (or configured); a SQLite file that does not exist is the user's mistake (opening it
    would create an empty database, and a command on it would succeed at nothing)."""
    from chexops.feedback.store import missing_sqlite
    from chexops.serving.settings import Settings

    url = _store_url(store_url)
    missing = missing_sqlite(url)
    if missing is not None:
        raise UserInputError(
            f"there is no feedback store at {missing} (check CHEXOPS_HOME, CHEXOPS_FEEDBACK_URL or --store)."
        )
    return Settings.from_env().open_feedback_store(url)


def _images(url: str):
    """The image store of the store at `url` (CHEXOPS_IMAGE_STORE, else its default folder)."""
    from chexops.serving.settings import Settings

    return Settings.from_env().images_for(url)


@feedback.command("export")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Dataset root to write.")
@click.option(
    "--store",
    "store_url",
    default=None,
    help="sqlite:///PATH or postgresql://... [default: $CHEXOPS_FEEDBACK_URL or $CHEXOPS_HOME/feedback/feedback.db].",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing export.")
@result_output
def feedback_export(out: Path, store_url: str | None, overwrite: bool) -> Output:
    """The stored feedback as a CheXpert-layout dataset (train.csv + PNG images): the retraining seed."""
    from chexops.feedback.export import export_feedback

    store = _existing_store(store_url)
    try:
        summary = export_feedback(store, out, overwrite=overwrite)
    finally:
        store.close()
    skipped = summary.skipped
    return Output(
        summary,
        f"Wrote {summary.rows} images with labels to {summary.csv} from {summary.feedback} "
        f"feedback ({skipped['incorrect_without_labels']} 'incorrect' without labels and {skipped['no_image']} "
        "without an image skipped).",
    )


def _days(flag: str, default: float, help: str):  # noqa: A002 - click's own name
    return click.option(flag, type=click.FloatRange(min=0), default=default, show_default=True, help=help)


@feedback.command("prune")
@_days("--unlabelled-days", UNLABELLED_DAYS, "Delete the image of a prediction without feedback after this many days.")
@_days(
    "--exported-days",
    EXPORTED_DAYS,
    "Delete the image of a prediction with feedback this many days after an export first wrote it.",
)
@_days(
    "--labelled-days",
    LABELLED_DAYS,
    "Delete the image of a prediction with feedback that no export wrote this many days after the prediction.",
)
@click.option(
    "--store",
    "store_url",
    default=None,
    help="sqlite:///PATH or postgresql://... [default: $CHEXOPS_FEEDBACK_URL or $CHEXOPS_HOME/feedback/feedback.db].",
)
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@result_output
def feedback_prune(
    unlabelled_days: float, exported_days: float, labelled_days: float, store_url: str | None, dry_run: bool
) -> Output:
    """The retention policy: delete old images, keep every record (findings, version, feedback). Images kept as
    database blobs by an older version are moved into the image store first."""
    from chexops.feedback.store import PruneResult

    store = _existing_store(store_url)
    try:
        moved = 0 if dry_run else store.move_legacy_images()
        counts = store.prune_images(unlabelled_days, exported_days, labelled_days, dry_run=dry_run)
    finally:
        store.close()
    days = {"unlabelled_days": unlabelled_days, "exported_days": exported_days, "labelled_days": labelled_days}
    result = PruneResult(**counts, **days, dry_run=dry_run, moved=moved, image_store=store.images.location)
    verb = "Would delete" if dry_run else "Deleted"
    return Output(
        result,
        f"{verb} {result.images} image(s), {result.bytes / 2**20:.1f} MiB, from {result.image_store} (without "
        f"feedback after {unlabelled_days:g} days; with feedback {exported_days:g} days after its export, or "
        f"{labelled_days:g} days after the feedback if never exported); every record is kept"
        + (f"; {moved} image(s) moved out of the database first." if moved else "."),
    )


@feedback.command("backup")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Folder of backups.")
@click.option("--keep", type=click.IntRange(min=1), default=14, show_default=True, help="Backups kept in --out.")
@click.option("--store", "store_url", default=None, help="The store [default: as `export`].")
@result_output
def feedback_backup(out: Path, keep: int, store_url: str | None) -> Output:
    """A consistent copy of the feedback store (SQLite backup API, or pg_dump), the oldest beyond --keep deleted."""
    from chexops.feedback.backup import backup

    url = _store_url(store_url)
    result = backup(url, out, keep, images=_images(url))
    return Output(
        result,
        f"Backed up the {result.kind} store to {result.file} ({result.bytes / 2**20:.1f} MiB); images: "
        f"{result.images} ({result.images_copied} copied, {result.images_removed} pruned since).",
    )


@feedback.command("restore")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--store", "store_url", default=None, help="The store to restore into [default: as `export`].")
@result_output
def feedback_restore(file: Path, store_url: str | None) -> Output:
    """Make the feedback store what a backup holds (stop the service first for SQLite)."""
    from chexops.feedback.backup import restore

    url = _store_url(store_url)
    result = restore(url, file, images=_images(url))
    return Output(
        result, f"Restored the {result.kind} store from {result.file}; {result.images_copied} image(s) copied back."
    )
