"""`chexops freight create|show`: the record of what a pipeline run is (chexops.core.freight)."""

from __future__ import annotations

import click

from chexops.cli.output import Output, result_output
from chexops.core import freight as record
from chexops.core.errors import UserInputError


@click.group("freight")
def freight() -> None:
    """The freight of a pipeline run: commit, training image, data version, registry version, Bento image."""


def _human(item: record.Freight) -> str:
    return "\n".join(f"{k.replace('_', ' ')}: {v}" for k, v in item.facts().items())


@freight.command("create")
@click.option("--commit", required=True, help="The 40-hex git commit the run's code comes from.")
@click.option("--training-image", help="REPO:TAG@sha256:DIGEST, the training image built from that commit.")
@result_output
def create(commit: str, training_image: str | None) -> Output:
    """The first step: a new freight, refused when this code is not that commit (exit 2)."""
    try:
        item = record.Freight(commit=commit, training_image=training_image)
    except ValueError as exc:
        raise UserInputError(f"not a valid freight: {exc}") from None
    record.check(item)
    return Output(item, _human(item), freight=item.facts())


@freight.command("show")
@result_output
def show() -> Output:
    """The freight this step carries ($CHEXOPS_FREIGHT)."""
    item = record.Freight.from_env()
    if item is None:
        raise UserInputError(f"${record.ENV} is not set: this is not a pipeline step.")
    return Output(item, _human(item))
