"""`chexops triton export`: the exported model as a Triton Inference Server model repository."""

from __future__ import annotations

from pathlib import Path

import click

from chexops.cli.output import Output, result_output
from chexops.core.names import DEFAULT_SERVE_REF


@click.group("triton")
def triton() -> None:
    """Triton Inference Server: the exported model as a model repository."""


@triton.command("export")
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="The model repository to write into."
)
@click.option(
    "--model",
    "model_tag",
    default=None,
    help="Registry reference (models:/NAME@ALIAS, models:/NAME/VERSION) or Bento tag NAME:VERSION "
    f"[default: {DEFAULT_SERVE_REF}].",
)
@click.option(
    "--onnx",
    "onnx_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="An ONNX file instead of a Bento model.",
)
@click.option("--precision", type=click.Choice(["fp32", "int8"]), default="fp32", show_default=True)
@click.option("--name", default="", help="Triton model name [default: the model's name].")
@click.option("--max-batch-size", default=64, show_default=True, type=click.IntRange(0, 4096), help="0: no batching.")
@click.option("--cpu-instances", default=1, show_default=True, type=click.IntRange(1, 64))
@click.option("--gpu-instances", default=1, show_default=True, type=click.IntRange(1, 64))
@click.option(
    "--threads", default=2, show_default=True, type=click.IntRange(1, 256), help="ONNX Runtime intra-op threads (CPU)."
)
@click.option(
    "--queue-delay-us", default=2000, show_default=True, type=click.IntRange(0), help="Dynamic batching's wait."
)
@click.option("--overwrite", is_flag=True, help="Replace this model's directory in the repository.")
@result_output
def triton_export(
    out: Path,
    model_tag: str | None,
    onnx_path: Path | None,
    precision: str,
    name: str,
    max_batch_size: int,
    cpu_instances: int,
    gpu_instances: int,
    threads: int,
    queue_delay_us: int,
    overwrite: bool,
) -> Output:
    """Write a Triton model repository (ONNX Runtime backend; CPU config and GPU variant)."""
    from chexops.export.triton import bento_model_file, write_repository

    if onnx_path and model_tag:
        raise click.UsageError("give --model or --onnx, not both.")
    source = onnx_path or bento_model_file(model_tag or DEFAULT_SERVE_REF, precision)
    result = write_repository(
        source,
        out,
        name=name,
        max_batch_size=max_batch_size,
        cpu_instances=cpu_instances,
        gpu_instances=gpu_instances,
        threads=threads,
        queue_delay_us=queue_delay_us,
        overwrite=overwrite,
    )
    human = (
        f"Triton model {result.model} in {result.dir} (max batch {result.max_batch_size}):\n"
        f"  tritonserver --model-repository {out}                        # CPU\n"
        f"  tritonserver --model-repository {out} --model-config-name=gpu  # GPU"
    )
    return Output(result, human)
