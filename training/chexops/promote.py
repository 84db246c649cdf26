"""`chexops promote`: move a registry version through staging → canary → production by commits on
the environment overlays, with the evidence each step requires; `--rollback ENV` reverts.

Order of work: read and judge the evidence (nothing written), check the repository, edit the
overlay(s), commit (and push), then move the MLflow alias and record the evidence as version tags.
A refusal (exit 3) or a user error (exit 2) happens before any write; a failed push undoes the
commit. Git holds what runs where; the alias mirrors it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from . import evidence as ev
from . import gitops
from .errors import GateRefused, UserInputError

log = logging.getLogger(__name__)


def _message(subject: str, body: list[str], trailers: dict[str, str]) -> str:
    lines = [subject, ""]
    if body:
        lines += ["Evidence:", *(f"- {line}" for line in body), ""]
    lines += [f"{k}: {v}" for k, v in trailers.items()]
    return "\n".join(lines) + "\n"


def _trailers(environment: str, name: str, version: str, previous: str | None, image: str, **extra: str) -> dict[str, str]:
    return {gitops.TRAILER_ENV: environment, "Chexops-Model": name, gitops.TRAILER_VERSION: version,
            gitops.TRAILER_PREVIOUS: previous or "none", "Chexops-Image": image, **extra}


def _commit(repo: Path, paths: list[str], message: str, do_push: bool, whole_index: bool = False) -> str:
    sha = gitops.commit(repo, paths, message, whole_index)
    if do_push:
        try:
            gitops.push(repo)
        except Exception:
            gitops.undo_last_commit(repo)
            log.error("Push refused: the promotion commit %s was undone; pull and promote again", sha[:12])
            raise
    return sha


def promote(target: str, version: str, *, name: str, repo: Path, image: str | None = None, weight: int = 10,
            analysis_run: str | None = None, analysis_phase: str | None = None, push: bool = False) -> dict[str, Any]:
    """Promote `version` to `target`. Raises GateRefused (nothing changed) when evidence is missing."""
    from .tracking import mlflow_client

    repo = repo.resolve()
    if target == "staging" and not image:
        raise UserInputError("--to staging needs --image REPO:TAG@sha256:DIGEST (the image built for this version).")
    parsed = gitops.Image.parse(image) if image else None
    if target != "canary" and weight != 10:
        raise UserInputError("--weight applies to --to canary only.")
    client = mlflow_client()
    tags = dict(ev.version_or_fail(client, name, version).tags or {})
    canary_holder = ev.alias_version(client, name, "canary")
    if target == "staging":
        found = ev.gate_evidence(tags)
    elif target == "canary":
        found = ev.canary_evidence(tags)
    else:
        found = ev.production_evidence(tags, canary_holder, version, analysis_run, analysis_phase)
    result: dict[str, Any] = {"environment": target, "model": name, "version": version, "promoted": False,
                              "evidence": found.lines, "refused": found.reasons}
    if not found.ok:
        result["refusal"] = f"{name} version {version} cannot go to {target}: " + "; ".join(found.reasons) + ". Nothing was changed."
        return result
    parsed = parsed or gitops.Image.parse(found.facts["image"])

    overlays = {env: gitops.Overlay(repo, env) for env in (("production", "canary") if target == "production" else (target,))}
    gitops.check_repo(repo, [o.relpath for o in overlays.values()])
    previous = ev.alias_version(client, name, target)
    overlay = overlays[target]
    overlay.set_image(parsed, version)
    extra: dict[str, str] = {}
    if target == "canary":
        stable = gitops.stable_replicas(repo)
        replicas = gitops.canary_replicas(stable, weight)
        overlay.set_replicas(replicas)
        extra = {"Chexops-Canary-Weight": str(weight)}
        subject = f"promote canary: {name} version {version} at {weight}% ({replicas} canary / {stable} stable replicas)"
        result.update(weight=weight, replicas=replicas, stable_replicas=stable)
    elif target == "production":
        overlays["canary"].set_replicas(0)
        extra = {"Chexops-Analysis-Run": str(analysis_run)}
        subject = f"promote production: {name} version {version}; canary slice retired"
    else:
        subject = f"promote staging: {name} version {version}"
    body = [f"image {parsed}", *found.lines]
    message = _message(subject, body, _trailers(target, name, version, previous, str(parsed), **extra))
    for edited in overlays.values():
        edited.save()
    sha = _commit(repo, [o.relpath for o in overlays.values()], message, push)

    at = ev.now()
    ev.move_alias(client, name, target, version)
    recorded = {f"{target}.commit": sha, f"{target}.at": at}
    if target == "staging":
        recorded["staging.image"] = str(parsed)
    elif target == "canary":
        recorded["canary.weight"] = str(weight)
    else:
        recorded.update({"analysis.run": str(analysis_run), "analysis.phase": str(analysis_phase)})
        if canary_holder == version:
            ev.move_alias(client, name, "canary", None)  # the canary slice is retired with this commit
    ev.record(client, name, version, recorded)
    log.info("Promoted %s version %s to %s in commit %s", name, version, target, sha[:12])
    result.update(promoted=True, commit=sha, pushed=push, previous_version=previous, image=str(parsed), alias=target,
                  files=[o.relpath for o in overlays.values()], subject=subject)
    return result


def rollback(environment: str, *, name: str, repo: Path, push: bool = False) -> dict[str, Any]:
    """Revert `environment`'s last promotion commit and move its alias back to the version before."""
    from .tracking import mlflow_client

    repo = repo.resolve()
    overlays = [gitops.Overlay(repo, env) for env in (("production", "canary") if environment == "production" else (environment,))]
    gitops.check_repo(repo, [o.relpath for o in overlays])
    found = gitops.last_promotion(repo, environment)
    if found is None:
        raise UserInputError(f"no promotion commit of {environment} (trailer {gitops.TRAILER_ENV}: {environment}) to roll back "
                             "on this branch.")
    sha, trailers = found
    name = trailers.get("Chexops-Model", name)
    version, previous = trailers.get(gitops.TRAILER_VERSION, "?"), trailers.get(gitops.TRAILER_PREVIOUS, "none")
    previous = None if previous in ("", "none") else previous
    client = mlflow_client()
    gitops.revert(repo, sha)
    if environment == "production":  # the revert would bring the retired canary slice back: keep it retired
        canary = gitops.Overlay(repo, "canary")
        canary.set_replicas(0)
        canary.save()
    subject = gitops.git(repo, "log", "-1", "--format=%s", sha).strip()
    message = _message(f"rollback {environment}: revert \"{subject}\"",
                       [f"reverts {sha}", f"{environment} goes back to version {previous or 'none (bootstrap)'}"],
                       {gitops.TRAILER_ENV: environment, "Chexops-Model": name, gitops.TRAILER_VERSION: previous or "none",
                        gitops.TRAILER_ROLLBACK: sha})
    new = _commit(repo, [o.relpath for o in overlays], message, push, whole_index=True)
    ev.move_alias(client, name, environment, previous)
    if version != "?":
        ev.record(client, name, version, {f"rollback.{environment}": f"{new} at {ev.now()}"})
    log.info("Rolled back %s: %s version %s -> %s in commit %s", environment, name, version, previous or "none", new[:12])
    return {"environment": environment, "model": name, "rolled_back": True, "reverted": sha, "commit": new, "pushed": push,
            "version": previous, "from_version": version, "alias": environment}


@click.command("promote")
@click.option("--to", "target", type=click.Choice(ev.ENVIRONMENTS), help="The environment to promote to.")
@click.option("--version", help="Registry version number N.")
@click.option("--image", help="REPO:TAG@sha256:DIGEST (staging: the image built for this version).")
@click.option("--weight", type=click.IntRange(1, 99), default=10, show_default=True, help="Canary: share of traffic in percent (10, then 50).")
@click.option("--analysis-run", help="Production: the canary's AnalysisRun name.")
@click.option("--analysis-phase", help="Production: that AnalysisRun's phase (must be Successful).")
@click.option("--rollback", "rollback_env", type=click.Choice(ev.ENVIRONMENTS), help="Revert this environment's last promotion.")
@click.option("--name", default="chexops-cxr", show_default=True, help="Registered model name.")
@click.option("--repo", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True,
              help="A clone of the GitOps repository.")
@click.option("--push", is_flag=True, help="git push the commit (to origin, same branch).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def promote_cmd(target, version, image, weight, analysis_run, analysis_phase, rollback_env, name, repo, push, as_json) -> None:
    """Promote a registry version to staging, canary or production by a commit on its overlay; exit 3
    (nothing changed) when the evidence is missing. --rollback ENV reverts ENV's last promotion."""
    import contextlib
    import sys

    from .cli import emit

    stream = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        if rollback_env:
            if target or version:
                raise UserInputError("--rollback takes no --to/--version: it reverts the environment's last promotion.")
            result = rollback(rollback_env, name=name, repo=repo, push=push)
            emit(result, as_json, f"Rolled back {rollback_env} to version {result['version'] or 'none'} "
                 f"(reverted {result['reverted'][:12]}, commit {result['commit'][:12]}).", stream)
            return
        if not target or not version:
            raise UserInputError("give --to ENV and --version N (or --rollback ENV).")
        if not version.isdigit():
            raise UserInputError(f"--version must be a registry version number, got {version!r}.")
        result = promote(target, version, name=name, repo=repo, image=image, weight=weight, analysis_run=analysis_run,
                         analysis_phase=analysis_phase, push=push)
    if not result["promoted"]:
        emit(result, as_json, result["refusal"], stream)
        raise GateRefused(result["refusal"])
    evidence = "\n".join(f"  {line}" for line in result["evidence"])
    emit(result, as_json, f"{result['subject']}\n  commit {result['commit'][:12]}{' (pushed)' if push else ''}, "
         f"alias {target} -> {version}\n{evidence}", stream)
