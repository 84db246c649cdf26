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

from chexops.core.errors import UserInputError
from chexops.core.results import Result
from chexops.delivery import gitops
from chexops.registry import evidence as ev

log = logging.getLogger(__name__)


class Promotion(Result):
    """`chexops promote`'s result: the evidence judged and, when refused, why (nothing changed); when
    promoted, the commit and what it changed (a canary also its weight and replicas)."""

    omit_unset = frozenset(
        {
            "refusal",
            "weight",
            "replicas",
            "stable_replicas",
            "commit",
            "pushed",
            "previous_version",
            "image",
            "alias",
            "files",
            "subject",
        }
    )

    environment: str
    model: str
    version: str
    promoted: bool
    evidence: list[str]
    refused: list[str]
    refusal: str | None = None
    weight: int | None = None
    replicas: int | None = None
    stable_replicas: int | None = None
    commit: str | None = None
    pushed: bool | None = None
    previous_version: str | None = None
    image: str | None = None
    alias: str | None = None
    files: list[str] | None = None
    subject: str | None = None


class Rollback(Result):
    """`chexops promote --rollback`'s result: the promotion reverted, the new commit, the version now in place."""

    environment: str
    model: str
    rolled_back: bool
    reverted: str
    commit: str
    pushed: bool
    version: str | None
    from_version: str
    alias: str


def _message(subject: str, body: list[str], trailers: dict[str, str]) -> str:
    lines = [subject, ""]
    if body:
        lines += ["Evidence:", *(f"- {line}" for line in body), ""]
    lines += [f"{k}: {v}" for k, v in trailers.items()]
    return "\n".join(lines) + "\n"


def _trailers(
    environment: str, name: str, version: str, previous: str | None, image: str, **extra: str
) -> dict[str, str]:
    return {
        gitops.TRAILER_ENV: environment,
        "Chexops-Model": name,
        gitops.TRAILER_VERSION: version,
        gitops.TRAILER_PREVIOUS: previous or "none",
        "Chexops-Image": image,
        **extra,
    }


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


def promote(
    target: str,
    version: str,
    *,
    name: str,
    repo: Path,
    image: str | None = None,
    weight: int = 10,
    analysis_run: str | None = None,
    analysis_phase: str | None = None,
    push: bool = False,
) -> Promotion:
    """Promote `version` to `target`. Raises GateRefused (nothing changed) when evidence is missing."""
    from chexops.tracking import mlflow_client

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
    judged = {
        "environment": target,
        "model": name,
        "version": version,
        "evidence": found.lines,
        "refused": found.reasons,
    }
    if not found.ok:
        return Promotion(
            **judged,
            promoted=False,
            refusal=f"{name} version {version} cannot go to {target}: "
            + "; ".join(found.reasons)
            + ". Nothing was changed.",
        )
    parsed = parsed or gitops.Image.parse(found.facts["image"])

    overlays = {
        env: gitops.Overlay(repo, env) for env in (("production", "canary") if target == "production" else (target,))
    }
    gitops.check_repo(repo, [o.relpath for o in overlays.values()])
    previous = ev.alias_version(client, name, target)
    overlay = overlays[target]
    overlay.set_image(parsed, version)
    extra: dict[str, str] = {}
    canary: dict[str, int] = {}
    if target == "canary":
        stable = gitops.stable_replicas(repo)
        replicas = gitops.canary_replicas(stable, weight)
        overlay.set_replicas(replicas)
        extra = {"Chexops-Canary-Weight": str(weight)}
        subject = (
            f"promote canary: {name} version {version} at {weight}% ({replicas} canary / {stable} stable replicas)"
        )
        canary = {"weight": weight, "replicas": replicas, "stable_replicas": stable}
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
    return Promotion(
        **judged,
        promoted=True,
        **canary,
        commit=sha,
        pushed=push,
        previous_version=previous,
        image=str(parsed),
        alias=target,
        files=[o.relpath for o in overlays.values()],
        subject=subject,
    )


def rollback(environment: str, *, name: str, repo: Path, push: bool = False) -> Rollback:
    """Revert `environment`'s last promotion commit and move its alias back to the version before."""
    from chexops.tracking import mlflow_client

    repo = repo.resolve()
    overlays = [
        gitops.Overlay(repo, env)
        for env in (("production", "canary") if environment == "production" else (environment,))
    ]
    gitops.check_repo(repo, [o.relpath for o in overlays])
    found = gitops.last_promotion(repo, environment)
    if found is None:
        raise UserInputError(
            f"no promotion commit of {environment} (trailer {gitops.TRAILER_ENV}: {environment}) to roll back "
            "on this branch."
        )
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
    message = _message(
        f'rollback {environment}: revert "{subject}"',
        [f"reverts {sha}", f"{environment} goes back to version {previous or 'none (bootstrap)'}"],
        {
            gitops.TRAILER_ENV: environment,
            "Chexops-Model": name,
            gitops.TRAILER_VERSION: previous or "none",
            gitops.TRAILER_ROLLBACK: sha,
        },
    )
    new = _commit(repo, [o.relpath for o in overlays], message, push, whole_index=True)
    ev.move_alias(client, name, environment, previous)
    if version != "?":
        ev.record(client, name, version, {f"rollback.{environment}": f"{new} at {ev.now()}"})
    log.info(
        "Rolled back %s: %s version %s -> %s in commit %s", environment, name, version, previous or "none", new[:12]
    )
    return Rollback(
        environment=environment,
        model=name,
        rolled_back=True,
        reverted=sha,
        commit=new,
        pushed=push,
        version=previous,
        from_version=version,
        alias=environment,
    )
