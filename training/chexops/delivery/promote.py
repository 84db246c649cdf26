"""`chexops promote`: move a registry version through staging → canary → production by commits on
the environment overlays, with the evidence each step requires; `--rollback ENV` reverts.

staging: the staging overlay's image. canary: production's overlay (image, version, freight), which
starts the Argo Rollout's canary (10 % → analysis → 50 % → analysis → 100 %). production: once the
Rollout promoted the canary and the production verification held, a commit that changes no file and
records the verdict (the analyses). `--rollback production` reverts that verdict and the canary
commit of the same version, so the overlay again names the version before.

Order of work: read and judge the evidence (nothing written), check the repository, edit the
overlay, commit (and push), then move the MLflow alias and record the evidence as version tags.
A refusal (exit 3) or a user error (exit 2) happens before any write; a failed push undoes the
commit. Retried after its push went through (a pod retry clones again), a promotion that git already
holds is reported as done, not made twice. Git holds what runs where; the alias mirrors it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from chexops.core.errors import UserInputError
from chexops.core.freight import Freight
from chexops.core.results import Result
from chexops.delivery import gitops
from chexops.registry import evidence as ev

log = logging.getLogger(__name__)

ROLLOUT_STEPS = "Argo Rollouts: 10 % → analysis → 50 % → analysis → 100 %"


class Promotion(Result):
    """`chexops promote`'s result: the evidence judged and, when refused, why (nothing changed); when
    promoted, the commit and what it changed, and the run's freight."""

    omit_unset = frozenset(
        {
            "refusal",
            "already_done",
            "freight",
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
    already_done: bool | None = None  # a retry: git already held this promotion, nothing was committed again
    freight: dict[str, str] | None = None
    commit: str | None = None
    pushed: bool | None = None
    previous_version: str | None = None
    image: str | None = None
    alias: str | None = None
    files: list[str] | None = None
    subject: str | None = None


class Rollback(Result):
    """`chexops promote --rollback`'s result: the promotion reverted, the new commit, the version now in place
    (or, with --if-version and nothing of that version to revert, rolled_back false and why)."""

    omit_unset = frozenset({"reverted", "commit", "pushed", "from_version", "alias", "message"})

    environment: str
    model: str
    rolled_back: bool
    version: str | None
    reverted: str | None = None
    commit: str | None = None
    pushed: bool | None = None
    from_version: str | None = None
    alias: str | None = None
    message: str | None = None


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


def _commit(
    repo: Path, paths: list[str], message: str, do_push: bool, whole_index: bool = False, allow_empty: bool = False
) -> str:
    sha = gitops.commit(repo, paths, message, whole_index, allow_empty)
    if do_push:
        try:
            gitops.push(repo)
        except Exception:
            gitops.undo_last_commit(repo)
            log.error("Push refused: the promotion commit %s was undone; pull and promote again", sha[:12])
            raise
    return sha


def _already(repo: Path, target: str, version: str, overlay: gitops.Overlay, image: str | None) -> str | None:
    """The promotion commit git already holds for `target` at `version` (a retry after a push), else None."""
    found = gitops.last_promotion(repo, target)
    if found is None or found[1].get(gitops.TRAILER_VERSION) != version:
        return None
    if target != "production" and (overlay.version != version or (image and overlay.image != image)):
        return None
    return found[0]


def promote(
    target: str,
    version: str,
    *,
    name: str,
    repo: Path,
    image: str | None = None,
    analysis_run: str | None = None,
    analysis_phase: str | None = None,
    push: bool = False,
) -> Promotion:
    """Promote `version` to `target`. Returns promoted=False with the refusal (nothing changed) when evidence is
    missing."""
    from chexops.tracking import mlflow_client

    repo = repo.resolve()
    if target == "staging" and not image:
        raise UserInputError("--to staging needs --image REPO:TAG@sha256:DIGEST (the image built for this version).")
    parsed = gitops.Image.parse(image) if image else None
    client = mlflow_client()
    tags = dict(ev.version_or_fail(client, name, version).tags or {})
    canary_holder = ev.alias_version(client, name, "canary")
    if target == "staging":
        found = ev.gate_evidence(tags)
    elif target == "canary":
        found = ev.canary_evidence(tags, version)
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
    freight = _freight(tags, name, version, str(parsed))

    overlay = gitops.Overlay(repo, target)
    gitops.check_repo(repo, [overlay.relpath])
    done = _already(repo, target, version, overlay, str(parsed))
    if done is not None:
        log.info("%s version %s is already in %s (commit %s): nothing to do", name, version, target, done[:12])
        return Promotion(
            **judged, promoted=True, already_done=True, commit=done, pushed=False, image=str(parsed), alias=target,
            freight=freight.facts() if freight else None,
        )  # fmt: skip
    previous = ev.alias_version(client, name, target)
    extra: dict[str, str] = dict(freight.trailers()) if freight else {}
    if target == "production":
        extra["Chexops-Analysis-Run"] = str(analysis_run)
        subject = f"promote production: {name} version {version}; its canary passed ({analysis_run})"
    else:
        overlay.set_image(parsed, version)
        if freight:
            overlay.set_freight(freight.to_json())
        overlay.save()
        subject = (
            f"promote canary: {name} version {version} ({ROLLOUT_STEPS})"
            if target == "canary"
            else f"promote staging: {name} version {version}"
        )
    body = [f"image {parsed}", *found.lines]
    message = _message(subject, body, _trailers(target, name, version, previous, str(parsed), **extra))
    sha = _commit(repo, [overlay.relpath], message, push, allow_empty=target == "production")

    at = ev.now()
    ev.move_alias(client, name, target, version)
    recorded = {f"{target}.commit": sha, f"{target}.at": at}
    if target == "staging":
        recorded["staging.image"] = str(parsed)
    elif target == "production":
        recorded.update({"analysis.run": str(analysis_run), "analysis.phase": str(analysis_phase)})
        if canary_holder == version:
            ev.move_alias(client, name, "canary", None)  # the canary is the whole of production now
    if freight:
        recorded.update(freight.tags())
    ev.record(client, name, version, recorded)
    log.info("Promoted %s version %s to %s in commit %s", name, version, target, sha[:12])
    return Promotion(
        **judged,
        promoted=True,
        freight=freight.facts() if freight else None,
        commit=sha,
        pushed=push,
        previous_version=previous,
        image=str(parsed),
        alias=target,
        files=[overlay.relpath],
        subject=subject,
    )


def _freight(tags: dict[str, str], name: str, version: str, image: str) -> Freight | None:
    """The run's freight with this promotion's facts: `$CHEXOPS_FREIGHT` in a pipeline, else the one
    recorded on the version (a manual promotion); None when neither exists (a version from before freight)."""
    carried = Freight.from_env() or (
        Freight.parse(tags["freight"], "the version's freight tag") if "freight" in tags else None
    )
    if carried is None:
        return None
    return carried.add(model_name=name, model_version=version, bento_image=image)


def rollback(environment: str, *, name: str, repo: Path, push: bool = False, if_version: str | None = None) -> Rollback:
    """Revert `environment`'s last promotion and move its alias back to the version before. Production's
    verdict is reverted with the canary commit of its version (that commit changed the overlay)."""
    from chexops.tracking import mlflow_client

    repo = repo.resolve()
    overlay = gitops.Overlay(repo, environment)
    gitops.check_repo(repo, [overlay.relpath])
    found = gitops.last_promotion(repo, environment)
    if found is None and if_version is not None:
        message = f"no promotion of {environment} on this branch: nothing of version {if_version} to roll back"
        return Rollback(environment=environment, model=name, rolled_back=False, version=None, message=message)
    if found is None:
        raise UserInputError(
            f"no promotion commit of {environment} (trailer {gitops.TRAILER_ENV}: {environment}) to roll back "
            "on this branch."
        )
    sha, trailers = found
    name = trailers.get("Chexops-Model", name)
    version, previous = trailers.get(gitops.TRAILER_VERSION, "?"), trailers.get(gitops.TRAILER_PREVIOUS, "none")
    if if_version is not None and version != if_version:
        message = f"{environment}'s last promotion is version {version}, not {if_version}: nothing to roll back"
        log.info("%s", message)
        return Rollback(environment=environment, model=name, rolled_back=False, version=version, message=message)
    previous = None if previous in ("", "none") else previous
    reverted = [sha]
    if environment == "production":
        canary = gitops.last_promotion(repo, "canary")
        if canary is not None and canary[1].get(gitops.TRAILER_VERSION) == version:
            reverted.append(canary[0])
            gitops.revert(repo, canary[0])
    else:
        gitops.revert(repo, sha)
    client = mlflow_client()
    subject = gitops.git(repo, "log", "-1", "--format=%s", sha).strip()
    message = _message(
        f'rollback {environment}: revert "{subject}"',
        [f"reverts {' and '.join(reverted)}", f"{environment} goes back to version {previous or 'none (bootstrap)'}"],
        {
            gitops.TRAILER_ENV: environment,
            "Chexops-Model": name,
            gitops.TRAILER_VERSION: previous or "none",
            gitops.TRAILER_ROLLBACK: " ".join(reverted),
        },
    )
    # A revert is in progress unless production's verdict had no canary commit left to revert.
    changed = environment != "production" or len(reverted) > 1
    new = _commit(repo, [overlay.relpath], message, push, whole_index=changed, allow_empty=not changed)
    ev.move_alias(client, name, environment, previous)
    if environment == "production" and len(reverted) > 1:
        ev.move_alias(client, name, "canary", None)
    if version != "?":
        ev.record(client, name, version, {f"rollback.{environment}": f"{new} at {ev.now()}"})
    log.info(
        "Rolled back %s: %s version %s -> %s in commit %s", environment, name, version, previous or "none", new[:12]
    )
    return Rollback(
        environment=environment,
        model=name,
        rolled_back=True,
        reverted=" ".join(reverted),
        commit=new,
        pushed=push,
        version=previous,
        from_version=version,
        alias=environment,
    )
