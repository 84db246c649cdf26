"""`chexops feedback export`: the clinicians' feedback as the next training set."""

from __future__ import annotations

from pathlib import Path

import click

from chexops.cli.output import Output, result_output
from chexops.core.errors import UserInputError


@click.group()
def feedback() -> None:
    """Clinicians' feedback stored by the service."""


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
    from chexops.feedback.store import FeedbackStore, missing_sqlite
    from chexops.serving.settings import Settings

    url = store_url or Settings.from_env().feedback_location()
    missing = missing_sqlite(url)
    if missing is not None:  # opening it would create an empty database and export nothing, successfully
        raise UserInputError(
            f"there is no feedback store at {missing} (check CHEXOPS_HOME, CHEXOPS_FEEDBACK_URL or --store)."
        )
    store = FeedbackStore(url)
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
