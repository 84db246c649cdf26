"""`chexops promote|loadtest|verify-serving|wait-synced|wait-rollout|s3-credentials`: the delivery steps (GitOps
promotion, the waits for what was promoted, and the evidence)."""

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
@click.option("--analysis-run", help="Production: the canary's AnalysisRun names (comma-separated).")
@click.option("--analysis-phase", help="Production: their phase (must be Successful).")
@click.option(
    "--rollback", "rollback_env", type=click.Choice(ENVIRONMENTS), help="Revert this environment's last promotion."
)
@click.option(
    "--if-version",
    help="With --rollback: revert only when the last promotion is this version (else nothing to do, exit 0).",
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
def promote_cmd(
    target, version, image, analysis_run, analysis_phase, rollback_env, if_version, name, repo, push
) -> Output:
    """Promote a registry version to staging, canary or production by a commit on its overlay; exit 3
    (nothing changed) when the evidence is missing. --rollback ENV reverts ENV's last promotion."""
    from chexops.delivery.promote import promote, rollback

    if rollback_env:
        if target or version:
            raise UserInputError("--rollback takes no --to/--version: it reverts the environment's last promotion.")
        result = rollback(rollback_env, name=name, repo=repo, push=push, if_version=if_version)
        if not result.rolled_back:
            return Output(result, result.message)
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
        analysis_run=analysis_run,
        analysis_phase=analysis_phase,
        push=push,
    )
    if not result.promoted:
        return Output(result, result.refusal, GateRefused(result.refusal))
    evidence = "\n".join(f"  {line}" for line in result.evidence)
    if result.already_done:
        return Output(result, f"{name} version {version} is already in {target}: commit {result.commit[:12]}")
    return Output(
        result,
        f"{result.subject}\n  commit {result.commit[:12]}{' (pushed)' if push else ''}, "
        f"alias {target} -> {version}\n{evidence}",
        freight=result.freight,
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
@click.option(
    "--expect-version",
    help="Fail (exit 3) when any /predict answer came from another registry version [default: --record's N].",
)
@result_output
def loadtest_cmd(
    host, users, spawn_rate, duration, max_p95_ms, max_error_ratio, api_key_env, out, images, record_ref, expect_version
) -> Output:
    """Load-test the clinic endpoint with Locust (headless); exit 3 when the pass criteria fail."""
    from chexops.delivery import loadtest

    recorded = loadtest.recorded_version(record_ref) if record_ref else None
    if expect_version and recorded and expect_version != recorded:
        raise UserInputError(f"--expect-version {expect_version} and --record {record_ref} name different versions.")
    expect_version = expect_version or recorded
    if expect_version is not None and not expect_version.isdigit():
        raise UserInputError(f"--expect-version must be a registry version number, got {expect_version!r}.")

    result = loadtest.loadtest(
        host,
        users=users,
        spawn_rate=spawn_rate,
        duration=duration,
        out=out,
        api_key_env=api_key_env,
        images=images,
        record_ref=record_ref,
        criteria=loadtest.Criteria(
            max_p95_ms=max_p95_ms, max_error_ratio=max_error_ratio, expect_version=expect_version
        ),
    )
    refusal = None
    if not result.passed:
        failed = ", ".join(c["criterion"] for c in result.checks if not c["passed"])
        refusal = GateRefused(f"the load test failed ({failed}); reports in {out}.")
    return Output(result, loadtest.format_result(result), refusal)


@click.command("verify-serving")
@click.option("--url", required=True, help="The endpoint, e.g. http://chexops.staging.svc.cluster.local:3000")
@click.option("--version", required=True, help="The registry version N that must answer.")
@click.option("--timeout", type=click.FloatRange(0), default=300, show_default=True, help="Seconds to wait for N.")
@click.option(
    "--consecutive", type=click.IntRange(1), default=5, show_default=True, help="Answers in a row from N needed."
)
@click.option(
    "--hold",
    type=click.FloatRange(0),
    default=0,
    show_default=True,
    help="Then keep verifying for this many seconds (production verification).",
)
@click.option("--interval", type=click.FloatRange(0.05), default=1.0, show_default=True, help="Seconds between asks.")
@result_output
def verify_serving_cmd(url, version, timeout, consecutive, hold, interval) -> Output:
    """Wait until the endpoint's /model reports version N on consecutive answers; exit 3 at the timeout
    (naming the versions seen) or when, holding, another version or repeated errors answer."""
    from chexops.delivery.verify import verify_serving

    if not version.isdigit():
        raise UserInputError(f"--version must be a registry version number, got {version!r}.")
    result = verify_serving(url, version, timeout=timeout, consecutive=consecutive, hold=hold, interval=interval)
    return _verdict(result, result.verified, f"{url}: {result.message}")


def _verdict(result, ok: bool, message: str) -> Output:
    """A wait's result: printed either way, and exit 3 (with the message) unless it succeeded."""
    return Output(result, message, None if ok else GateRefused(message))


_API = click.option("--api", help="Kubernetes API URL [default: in-cluster, from the pod's ServiceAccount].")


@click.command("wait-synced")
@click.option("--application", required=True, help="The Argo CD Application (chexops-staging, chexops-production).")
@click.option("--revision", required=True, help="The promotion commit it must be synced to.")
@click.option("--namespace", default="argocd", show_default=True, help="Argo CD's namespace.")
@click.option(
    "--health",
    type=click.Choice(["Healthy", "any"]),
    default="Healthy",
    show_default=True,
    help="Health required once synced (production: any, then wait-rollout judges the canary).",
)
@click.option("--timeout", type=click.FloatRange(0), default=600, show_default=True, help="Seconds.")
@click.option("--interval", type=click.FloatRange(0.05), default=5, show_default=True, help="Seconds between reads.")
@_API
@result_output
def wait_synced_cmd(application, revision, namespace, health, timeout, interval, api) -> Output:
    """Wait until an Argo CD Application is synced to the promotion commit (and Healthy); exit 3 when its
    sync fails or at the timeout, naming the revision and health it saw."""
    from chexops.delivery.kube import Kube
    from chexops.delivery.wait import wait_synced

    result = wait_synced(
        Kube.connect(api), application, revision, namespace=namespace, health=health, timeout=timeout, interval=interval
    )
    return _verdict(result, result.synced, f"Application {application}: {result.message}")


@click.command("wait-rollout")
@click.option("--rollout", default="chexops", show_default=True, help="The Argo Rollout.")
@click.option("--namespace", default="production", show_default=True)
@click.option("--version", required=True, help="The registry version whose canary is judged.")
@click.option("--timeout", type=click.FloatRange(0), default=3600, show_default=True, help="Seconds for the canary.")
@click.option(
    "--decision-timeout",
    type=click.FloatRange(0),
    default=86400,
    show_default=True,
    help="Seconds a person has to decide a canary paused on an Inconclusive analysis.",
)
@click.option("--interval", type=click.FloatRange(0.05), default=10, show_default=True)
@_API
@result_output
def wait_rollout_cmd(rollout, namespace, version, timeout, decision_timeout, interval, api) -> Output:
    """Wait for the canary of version N: exit 0 when promoted, and when undecided (paused on an Inconclusive
    analysis and nobody decided: neither promote nor roll back); exit 3 when aborted or timed out (the
    pipeline rolls back). The `outcome` output says which."""
    from chexops.delivery.kube import Kube
    from chexops.delivery.wait import wait_rollout

    result = wait_rollout(
        Kube.connect(api),
        rollout,
        version,
        namespace=namespace,
        timeout=timeout,
        decision_timeout=decision_timeout,
        interval=interval,
    )
    runs = ", ".join(f"{r['name']} {r['phase']}" for r in result.analysis_runs) or "none"
    human = f"Rollout {rollout}: {result.outcome}: {result.message} (analyses: {runs})"
    return _verdict(result, result.outcome in ("promoted", "undecided"), human)


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
