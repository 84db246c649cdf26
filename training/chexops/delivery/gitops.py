"""The GitOps side of `chexops promote`: edit an environment overlay's kustomization.yaml (image,
model-version label, freight annotation), commit with trailers, find and revert promotion commits.

Two overlays: staging, and production, whose Argo Rollout runs the canary. A canary promotion edits
production's overlay (the Rollout then moves traffic 10 % → 50 % → 100 %); the production promotion
that follows a successful canary changes no file: its commit records the verdict in git.

Git is the plain `git` command (what an operator would type). YAML goes through ruamel.yaml's
round-trip mode so that the comments and layout of the overlays survive an edit.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from chexops.core.errors import ChexopsError, UserInputError

log = logging.getLogger(__name__)

OVERLAYS = Path("k8s/chexops/overlays")
IMAGE_NAME = "chexops-serving"  # the image name in the base Rollout
VERSION_LABEL = "chexops.io/model-version"
FREIGHT_ANNOTATION = "chexops.io/freight"
OVERLAY_OF = {"staging": "staging", "canary": "production", "production": "production"}
TRAILER_ENV = "Chexops-Environment"
TRAILER_VERSION = "Chexops-Version"
TRAILER_PREVIOUS = "Chexops-Previous-Version"
TRAILER_ROLLBACK = "Chexops-Rollback-Of"
DEFAULT_AUTHOR = ("chexops", "chexops@localhost")
_IMAGE = re.compile(
    r"^(?P<repo>[a-z0-9][a-z0-9._\-/:]*?[a-z0-9])(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}))?"
    r"@(?P<digest>sha256:[0-9a-f]{64})$"
)


@dataclass(frozen=True)
class Image:
    repo: str
    tag: str
    digest: str

    @classmethod
    def parse(cls, ref: str) -> "Image":
        """REPO:TAG@sha256:DIGEST (both tag and digest: the tag for people, the digest for the kubelet)."""
        m = _IMAGE.match(ref.strip())
        if not m or not m.group("tag"):
            raise UserInputError(f"--image {ref!r} must be REPO:TAG@sha256:<64 hex> (a tag and an immutable digest).")
        return cls(m.group("repo"), m.group("tag"), m.group("digest"))

    def __str__(self) -> str:
        return f"{self.repo}:{self.tag}@{self.digest}"


def _yaml():
    from ruamel.yaml import YAML

    yaml = YAML()  # round-trip: comments, order and quotes kept
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096
    return yaml


class Overlay:
    """One environment's kustomization.yaml, loaded for a round-trip edit."""

    def __init__(self, repo: Path, environment: str):
        directory = OVERLAY_OF.get(environment, environment)
        self.path = repo / OVERLAYS / directory / "kustomization.yaml"
        self.relpath = (OVERLAYS / directory / "kustomization.yaml").as_posix()
        if not self.path.is_file():
            raise UserInputError(
                f"{self.path} does not exist: --repo must be the GitOps repository (with {OVERLAYS}/)."
            )
        self._yaml = _yaml()
        self.doc = self._yaml.load(self.path.read_text())

    def _image(self):
        for entry in self.doc.get("images") or []:
            if entry.get("name") == IMAGE_NAME:
                return entry
        return None

    @property
    def version(self) -> str | None:
        for entry in self.doc.get("labels") or []:
            value = (entry.get("pairs") or {}).get(VERSION_LABEL)
            if value is not None:
                return str(value)
        return None

    @property
    def image(self) -> str | None:
        entry = self._image()
        if entry is None:
            return None
        return f"{entry.get('newName', IMAGE_NAME)}:{entry.get('newTag', '')}@{entry.get('digest', '')}"

    @property
    def freight(self) -> str | None:
        return (self.doc.get("commonAnnotations") or {}).get(FREIGHT_ANNOTATION)

    def set_image(self, image: Image, version: str) -> None:
        from ruamel.yaml.comments import CommentedMap, CommentedSeq
        from ruamel.yaml.scalarstring import DoubleQuotedScalarString as Q

        entry = self._image()
        if entry is None:
            self.doc.setdefault("images", CommentedSeq()).append(entry := CommentedMap(name=IMAGE_NAME))
        entry["newName"], entry["newTag"], entry["digest"] = image.repo, Q(image.tag), image.digest
        for label in self.doc.get("labels") or []:
            pairs = label.get("pairs")
            if pairs is not None and VERSION_LABEL in pairs:
                pairs[VERSION_LABEL] = Q(version)
                return
        self.doc.setdefault("labels", CommentedSeq()).append(
            CommentedMap(pairs=CommentedMap({VERSION_LABEL: Q(version)}), includeTemplates=True)
        )

    def set_freight(self, freight_json: str) -> None:
        """The freight annotation on every object and pod (the service shows it in /model)."""
        from ruamel.yaml.comments import CommentedMap
        from ruamel.yaml.scalarstring import SingleQuotedScalarString as Q

        self.doc.setdefault("commonAnnotations", CommentedMap())[FREIGHT_ANNOTATION] = Q(freight_json)

    def save(self) -> None:
        with open(self.path, "w") as fh:
            self._yaml.dump(self.doc, fh)


# --- git ----------------------------------------------------------------------------------------------


def git(repo: Path, *args: str, check: bool = True) -> str:
    env = dict(os.environ)
    result = subprocess.run(["git", *_identity(repo), *args], cwd=repo, capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        raise ChexopsError(f"git {' '.join(args)} failed in {repo}: {(result.stderr or result.stdout).strip()}")
    return result.stdout


def _identity(repo: Path) -> list[str]:
    """`-c user.name/email` with the chexops default when git config (or GIT_AUTHOR_*) has none."""
    if os.environ.get("GIT_AUTHOR_EMAIL"):
        return []
    found = subprocess.run(["git", "config", "user.email"], cwd=repo, capture_output=True, text=True)
    if found.returncode == 0 and found.stdout.strip():
        return []
    return ["-c", f"user.name={DEFAULT_AUTHOR[0]}", "-c", f"user.email={DEFAULT_AUTHOR[1]}"]


def check_repo(repo: Path, paths: list[str]) -> None:
    """A git work tree whose promoted files have no uncommitted changes (they would ride along)."""
    if subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], cwd=repo, capture_output=True).returncode != 0:
        raise UserInputError(f"{repo} is not a git work tree: --repo must be a clone of the GitOps repository.")
    dirty = git(repo, "status", "--porcelain", "--", *paths).strip()
    if dirty:
        raise UserInputError(
            f"uncommitted changes in the overlays would be mixed into the promotion; commit or stash them:\n{dirty}"
        )
    if git(repo, "diff", "--cached", "--name-only").strip():
        raise UserInputError("the git index has staged changes; commit or reset them before promoting.")


def commit(repo: Path, paths: list[str], message: str, whole_index: bool = False, allow_empty: bool = False) -> str:
    """Commit `paths` only; `whole_index` commits the index as staged (a revert in progress allows no
    partial commit; check_repo made sure nothing else is staged); `allow_empty` records a decision
    that changes no file."""
    git(repo, "add", "--", *paths)
    if allow_empty:
        git(repo, "commit", "-q", "--allow-empty", "-m", message, "--", *paths)
        return git(repo, "rev-parse", "HEAD").strip()
    git(repo, "commit", "-q", "-m", message, *(() if whole_index else ("--", *paths)))
    if whole_index:
        git(repo, "revert", "--quit", check=False)
    return git(repo, "rev-parse", "HEAD").strip()


def head(repo: Path) -> str:
    return git(repo, "rev-parse", "HEAD").strip()


def push(repo: Path, remote: str = "origin") -> None:
    """Push the current branch; on refusal the caller undoes its commit."""
    branch = git(repo, "rev-parse", "--abbrev-ref", "HEAD").strip()
    git(repo, "push", "-q", remote, f"HEAD:refs/heads/{branch}")


def trailers(repo: Path, sha: str) -> dict[str, str]:
    raw = git(repo, "log", "-1", "--format=%(trailers:only,unfold)", sha)
    found = {}
    for line in raw.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            found[key.strip()] = value.strip()
    return found


def reverted_commits(repo: Path) -> set[str]:
    """Every commit a rollback commit names (`Chexops-Rollback-Of: SHA [SHA ...]`) on the current branch."""
    reverted: set[str] = set()
    for sha in git(repo, "log", "--first-parent", "--format=%H", f"--grep={TRAILER_ROLLBACK}: ").split():
        reverted.update(trailers(repo, sha).get(TRAILER_ROLLBACK, "").split())
    return reverted


def last_promotion(repo: Path, environment: str) -> tuple[str, dict[str, str]] | None:
    """The newest promotion commit of `environment` on the current branch that no rollback has reverted."""
    reverted = reverted_commits(repo)
    shas = git(repo, "log", "--first-parent", "--format=%H", f"--grep={TRAILER_ENV}: {environment}").split()
    for sha in shas:
        found = trailers(repo, sha)
        if found.get(TRAILER_ENV) != environment or TRAILER_ROLLBACK in found or sha in reverted:
            continue
        return sha, found
    return None


def revert(repo: Path, sha: str) -> None:
    """`git revert --no-commit SHA`: the caller may add to it, then commits."""
    result = subprocess.run(
        ["git", *_identity(repo), "revert", "--no-commit", sha], cwd=repo, capture_output=True, text=True
    )
    if result.returncode != 0:
        subprocess.run(["git", "revert", "--abort"], cwd=repo, capture_output=True)
        raise ChexopsError(
            f"git revert of {sha[:12]} does not apply cleanly (later commits changed the same lines); "
            f"nothing was changed. Resolve by hand: git revert {sha[:12]}\n{result.stderr.strip()}"
        )


def undo_last_commit(repo: Path) -> None:
    git(repo, "reset", "-q", "--keep", "HEAD~1")
