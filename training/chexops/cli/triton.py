"""`chexops triton export`: the exported model as a Triton Inference Server model repository (ONNX Runtime or
Python backend); `chexops triton serve`: the `tritonserver` that nvidia-pytriton ships, on such a repository."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from chexops.cli.output import Output, result_output
from chexops.core.errors import ChexopsError
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
@click.option(
    "--max-batch-size",
    default=None,
    type=click.IntRange(0, 4096),
    help="0: no batching [default: 16 for --backend python, 64 for onnxruntime].",
)
@click.option("--cpu-instances", default=1, show_default=True, type=click.IntRange(1, 64))
@click.option("--gpu-instances", default=1, show_default=True, type=click.IntRange(1, 64))
@click.option(
    "--threads", default=2, show_default=True, type=click.IntRange(1, 256), help="ONNX Runtime intra-op threads (CPU)."
)
@click.option(
    "--queue-delay-us",
    default=None,
    type=click.IntRange(0),
    help="Dynamic batching's wait [default: 0 for --backend python (CPU: waiting never paid), 2000 for onnxruntime].",
)
@click.option(
    "--backend",
    type=click.Choice(["onnxruntime", "python"]),
    default="onnxruntime",
    show_default=True,
    help="onnxruntime: any Triton (the NGC image); python: NAME-bytes (encoded images in, the service's "
    "preprocessing inside Triton) and NAME-tensor, for chexops triton serve.",
)
@click.option("--gpu", is_flag=True, help="Python backend: KIND_GPU instances (--gpu-instances on each of --gpus).")
@click.option("--gpus", default="", help="GPU ids of the KIND_GPU instance group, e.g. 0,1 [default: all].")
@click.option("--overwrite", is_flag=True, help="Replace this model's directory in the repository.")
@result_output
def triton_export(
    out: Path,
    model_tag: str | None,
    onnx_path: Path | None,
    precision: str,
    name: str,
    max_batch_size: int | None,
    cpu_instances: int,
    gpu_instances: int,
    threads: int,
    queue_delay_us: int | None,
    backend: str,
    gpu: bool,
    gpus: str,
    overwrite: bool,
) -> Output:
    """Write a Triton model repository (ONNX Runtime backend: CPU config and GPU variant; or Python backend)."""
    from chexops.export.triton import (
        ONNX_BATCHING,
        PYTHON_BATCHING,
        bento_model_file,
        write_python_repository,
        write_repository,
    )

    if onnx_path and model_tag:
        raise click.UsageError("give --model or --onnx, not both.")
    if gpu and backend != "python":
        raise click.UsageError("--gpu is for --backend python (the ONNX Runtime backend writes configs/gpu.pbtxt).")
    try:
        gpu_ids = [int(g) for g in gpus.split(",") if g.strip()]
    except ValueError:
        raise click.BadParameter(f"{gpus!r} is not a comma-separated list of GPU ids.", param_hint="--gpus") from None
    source = onnx_path or bento_model_file(model_tag or DEFAULT_SERVE_REF, precision)
    batching = PYTHON_BATCHING if backend == "python" else ONNX_BATCHING
    max_batch_size = batching[0] if max_batch_size is None else max_batch_size
    queue_delay_us = batching[1] if queue_delay_us is None else queue_delay_us
    if backend == "python":
        python = write_python_repository(
            source,
            out,
            name=name,
            max_batch_size=max_batch_size,
            instances=gpu_instances if gpu else cpu_instances,
            gpu=gpu,
            gpus=gpu_ids or None,
            threads=threads,
            queue_delay_us=queue_delay_us,
            overwrite=overwrite,
        )
        models = ", ".join(python.models.values())
        return Output(
            python, f"Triton Python-backend models {models} in {out}:\n  chexops triton serve --repository {out}"
        )
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
        gpus=gpu_ids or None,
    )
    human = (
        f"Triton model {result.model} in {result.dir} (max batch {result.max_batch_size}):\n"
        f"  tritonserver --model-repository {out}                        # CPU\n"
        f"  tritonserver --model-repository {out} --model-config-name=gpu  # GPU"
    )
    return Output(result, human)


@triton.command("serve")
@click.option(
    "--repository",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    required=True,
    help="A model repository (chexops triton export --backend python).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="0.0.0.0 to accept other machines.")
@click.option("--http-port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--grpc-port", default=8001, show_default=True, type=click.IntRange(1, 65535))
@click.option("--metrics-port", default=8002, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--python-env",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The Python backend stub's environment (numpy < 2) [default: $CHEXOPS_TRITON_PYTHON_ENV or VENV-triton].",
)
@click.option(
    "--log",
    "log_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="tritonserver's log [default: $CHEXOPS_HOME/triton/tritonserver.log].",
)
def triton_serve(
    repository: Path,
    host: str,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    python_env: Path | None,
    log_path: Path | None,
) -> None:
    """Triton Inference Server (the tritonserver binary nvidia-pytriton ships) on REPOSITORY until interrupted;
    ready once every model is loaded; it dies with this command."""
    from chexops.core import paths
    from chexops.export.triton_server import TritonServer
    from chexops.serving.launch import check_port_free

    logging.getLogger("httpx").setLevel(logging.WARNING)  # the readiness polls

    for port in (http_port, grpc_port, metrics_port):
        check_port_free(host, port)
    if host not in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger(__name__).warning(
            "Triton on %s has no API keys: whoever reaches its ports can run the model (put it behind your own gate).",
            host,
        )
    log_path = log_path or paths.home() / "triton" / "tritonserver.log"
    server = TritonServer(repository, http_port, grpc_port, metrics_port, log_path, host=host, python_env=python_env)
    click.echo(f"tritonserver's log: {log_path}", err=True)
    with server:
        click.echo(f"ready: {', '.join(server.models)} at {server.url} (gRPC {host}:{grpc_port})", err=True)
        try:
            code = server.server.process.wait()
        except KeyboardInterrupt:
            return
    if code:
        raise ChexopsError(f"tritonserver exited with code {code}:\n{server.server.logs()}")
