"""`chexops promote|loadtest|s3-credentials`: the delivery steps (GitOps promotion and its evidence)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from chexops.cli.output import Output, result_output
from chexops.core.errors import GateRefused, UserInputError
from chexops.core.names import DEFAULT_MODEL_NAME, ENVIRONMENTS
from chexops.delivery.s3_credentials import DEFAULT_DIR as DEFAULT_S3_DIR


@click.command("promote")
@click.option("--to", "target", type=click.Choice(ENVIRONMENTS), help="The environment to promote to.")
@click.option("--version", help="Registry version number N.")
@click.option("--image", help="REPO:TAG@sha256:DIGEST (staging: the image built for this version).")
@click.option(
    "--weight",
    type=click.IntRange(1, 99),
    default=10,
    show_default=True,
    help="Canary: share of traffic in percent (10, then 50).",
)
@click.option("--analysis-run", help="Production: the canary's AnalysisRun name.")
@click.option("--analysis-phase", help="Production: that AnalysisRun's phase (must be Successful).")
@click.option(
    "--rollback", "rollback_env", type=click.Choice(ENVIRONMENTS), help="Revert this environment's last promotion."
)
@click.option("--name", default=DEFAULT_MODEL_NAME, show_default=True, help="Registered model name.")
@click.option(
    "--repo",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="A clone of the GitOps repository.",
)
@click.option("--push", is_flag=True, help="git push the commit (to origin, same branch).")
@result_output
def promote_cmd(target, version, image, weight, analysis_run, analysis_phase, rollback_env, name, repo, push) -> Output:
    """Promote a registry version to staging, canary or production by a commit on its overlay; exit 3
    (nothing changed) when the evidence is missing. --rollback ENV reverts ENV's last promotion."""
    from chexops.delivery.promote import promote, rollback

    if rollback_env:
        if target or version:
            raise UserInputError("--rollback takes no --to/--version: it reverts the environment's last promotion.")
        result = rollback(rollback_env, name=name, repo=repo, push=push)
        return Output(
            result,
            f"Rolled back {rollback_env} to version {result.version or 'none'} "
            f"(reverted {result.reverted[:12]}, commit {result.commit[:12]}).",
        )
    if not target or not version:
        raise UserInputError("give --to ENV and --version N (or --rollback ENV).")
    if not version.isdigit():
        raise UserInputError(f"--version must be a registry version number, got {version!r}.")
    result = promote(
        target,
        version,
        name=name,
        repo=repo,
        image=image,
        weight=weight,
        analysis_run=analysis_run,
        analysis_phase=analysis_phase,
        push=push,
    )
    if not result.promoted:
        return Output(result, result.refusal, GateRefused(result.refusal))
    evidence = "\n".join(f"  {line}" for line in result.evidence)
    return Output(
        result,
        f"{result.subject}\n  commit {result.commit[:12]}{' (pushed)' if push else ''}, "
        f"alias {target} -> {version}\n{evidence}",
    )


@click.command("loadtest")
@click.option("--host", required=True, help="The clinic endpoint, e.g. http://chexops.staging.svc:3000")
@click.option("--users", type=click.IntRange(1), default=4, show_default=True, help="Simulated clinicians.")
@click.option(
    "--spawn-rate",
    type=click.FloatRange(0, min_open=True),
    default=4,
    show_default=True,
    help="Users started per second.",
)
@click.option("--duration", default="60s", show_default=True, help="How long: 60s, 2m, ...")
@click.option(
    "--max-p95-ms",
    type=click.FloatRange(0, min_open=True),
    default=1000,
    show_default=True,
    help="Pass: p95 latency at most this.",
)
@click.option(
    "--max-error-ratio",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Pass: failed requests at most this share.",
)
@click.option(
    "--api-key-env", default="CHEXOPS_API_KEY", show_default=True, help="Environment variable holding the API key."
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("loadtest"),
    show_default=True,
    help="Folder for the CSV and HTML reports.",
)
@click.option(
    "--images",
    multiple=True,
    type=click.Path(exists=True, path_type=Path),
    help="Radiographs to send (files or folders; repeatable) [default: the shared real radiographs, else generated].",
)
@click.option("--record", "record_ref", help="models:/NAME/N: store the result on that version (staging evidence).")
@result_output
def loadtest_cmd(
    host, users, spawn_rate, duration, max_p95_ms, max_error_ratio, api_key_env, out, images, record_ref
) -> Output:
    """Load-test the clinic endpoint with Locust (headless); exit 3 when the pass criteria fail."""
    from chexops.delivery import loadtest

    result = loadtest.loadtest(
        host,
        users=users,
        spawn_rate=spawn_rate,
        duration=duration,
        out=out,
        api_key_env=api_key_env,
        images=images,
        record_ref=record_ref,
        criteria=loadtest.Criteria(max_p95_ms=max_p95_ms, max_error_ratio=max_error_ratio),
    )
    refusal = None
    if not result.passed:
        failed = ", ".join(c["criterion"] for c in result.checks if not c["passed"])
        refusal = GateRefused(f"the load test failed ({failed}); reports in {out}.")
    return Output(result, loadtest.format_result(result), refusal)


@click.command("s3-credentials")
@click.option(
    "--dir",
    "directory",
    default=lambda: os.environ.get("CHEXOPS_S3_CREDENTIALS_DIR", DEFAULT_S3_DIR),
    show_default=True,
    help="The mounted Secret's folder ($CHEXOPS_S3_CREDENTIALS_DIR).",
)
def s3_credentials(directory: str) -> None:
    """Print S3 credentials as boto3's credential_process expects them (JSON on stdout)."""
    from chexops.delivery.s3_credentials import read_credentials

    # Not a step result: boto3 reads exactly this JSON, and credentials never go to $CHEXOPS_OUTPUTS.
    click.echo(json.dumps(read_credentials(directory)))
