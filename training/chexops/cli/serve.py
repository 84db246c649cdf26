"""`chexops serve`: the clinic endpoint on the exact model a registry reference names."""

from __future__ import annotations

import click

from chexops.core.names import DEFAULT_SERVE_REF


@click.command("serve")
@click.option("--port", default=3000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--host", default="127.0.0.1", show_default=True, help="0.0.0.0 to accept other machines.")
@click.option(
    "--model",
    "model_tag",
    default=None,
    help="models:/NAME@ALIAS, models:/NAME/VERSION, or a Bento tag NAME:VERSION "
    f"[default: $CHEXOPS_MODEL or {DEFAULT_SERVE_REF}].",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "int8"]),
    default=None,
    help="ONNX file to run [default: $CHEXOPS_PRECISION or fp32].",
)
@click.option(
    "--threads",
    type=click.IntRange(1),
    default=None,
    help="ONNX Runtime intra-op threads [default: $CHEXOPS_THREADS or 2].",
)
@click.option("--development", is_flag=True, help="bentoml serve --development (reload on code changes).")
def serve_cmd(
    port: int, host: str, model_tag: str | None, precision: str | None, threads: int | None, development: bool
) -> None:
    """The clinic endpoint (bentoml serve bentos/service.py:Chexops) until interrupted."""
    from chexops.export.bento import serving_tag
    from chexops.serving.launch import serve

    serve(port, host, model_tag, precision, threads, resolve=serving_tag, development=development)
