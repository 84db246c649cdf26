"""Freight: the one record of what a pipeline run is, as Kargo names it.

The git commit the run's code comes from, the training image built from it, the data version it
trained on, the registry version it produced and the Bento image serving it. The first step
creates it (`chexops freight create`), every step gets it as `$CHEXOPS_FREIGHT` and may add the
facts it establishes (never change one), and it ends up tagged on the MLflow run and version, in
each promotion commit's trailers, on the serving pods (annotation `chexops.io/freight`) and in
`/model`.

A step whose own code is another commit than its freight names refuses at once, naming both: the
training image carries the commit it was built from (`$CHEXOPS_IMAGE_COMMIT`, baked at build); a
checkout answers `git rev-parse HEAD`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chexops.core.errors import ChexopsError, ConfigError, validation_problems

ENV = "CHEXOPS_FREIGHT"
IMAGE_COMMIT_ENV = "CHEXOPS_IMAGE_COMMIT"
ANNOTATION = "chexops.io/freight"
TRAILER_PREFIX = "Chexops-Freight-"
TAG_PREFIX = "freight."
_SHA = r"^[0-9a-f]{40}$"
_DIGEST_IMAGE = r"^[^\s@]+@sha256:[0-9a-f]{64}$"


class FreightMismatch(ChexopsError):
    """This step runs other code than its freight names, or would change a fact the freight holds."""

    exit_code = 2


class Freight(BaseModel):
    """What one run is. Facts are added as steps establish them; none changes once set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    commit: str = Field(pattern=_SHA, description="the git commit whose code every step runs")
    training_image: str | None = Field(None, pattern=_DIGEST_IMAGE, description="built from `commit`, by digest")
    data_version: str | None = Field(None, min_length=1, description="the prepared data's content hash")
    model_name: str | None = Field(None, min_length=1)
    model_version: str | None = Field(None, pattern=r"^\d+$", description="the registry version trained")
    bento_image: str | None = Field(None, pattern=_DIGEST_IMAGE, description="the serving image, by digest")

    @classmethod
    def parse(cls, text: str, where: str = ENV) -> Freight:
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise ConfigError(f"{where} is not a valid freight record: {validation_problems(exc)}") from None

    @classmethod
    def from_env(cls) -> Freight | None:
        text = os.environ.get(ENV, "").strip()
        return cls.parse(text) if text else None

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=True)

    def facts(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.model_dump(exclude_none=True).items()}

    def add(self, **facts: str | None) -> Freight:
        """This freight with `facts` added; a fact already held with another value is a mismatch."""
        given = {k: str(v) for k, v in facts.items() if v not in (None, "")}
        unknown = sorted(set(given) - set(type(self).model_fields))
        if unknown:
            raise ValueError(f"not freight facts: {', '.join(unknown)}")
        held = self.facts()
        changed = {k: (held[k], v) for k, v in given.items() if k in held and held[k] != v}
        if changed:
            raise FreightMismatch(
                "this step would change its freight: "
                + "; ".join(f"{k} is {old} in the freight, the step found {new}" for k, (old, new) in changed.items())
            )
        try:
            return type(self).model_validate({**held, **given})
        except ValidationError as exc:
            raise FreightMismatch(f"the facts found are not valid freight: {validation_problems(exc)}") from None

    def trailers(self) -> dict[str, str]:
        """Git trailers for a promotion commit (`Chexops-Freight-Training-Image: ...`)."""
        return {TRAILER_PREFIX + k.replace("_", "-").title(): v for k, v in self.facts().items()}

    def tags(self) -> dict[str, str]:
        """MLflow tags for the run and the model version (`freight.commit`, ...), and the whole record."""
        return {**{TAG_PREFIX + k: v for k, v in self.facts().items()}, "freight": self.to_json()}

    @classmethod
    def from_trailers(cls, trailers: dict[str, str]) -> Freight | None:
        facts = {
            k.removeprefix(TRAILER_PREFIX).replace("-", "_").lower(): v
            for k, v in trailers.items()
            if k.startswith(TRAILER_PREFIX)
        }
        return cls.model_validate(facts) if facts else None


def running_commit(start: Path | None = None) -> str | None:
    """The commit of the code running here: the image's build commit, else the checkout's HEAD."""
    baked = os.environ.get(IMAGE_COMMIT_ENV, "").strip()
    if baked:
        return baked
    cwd = start or Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out if re.match(_SHA, out) else None


def check(freight: Freight, commit: str | None = None) -> None:
    """Refuse to run other code than the freight's commit (and code whose commit is unknown)."""
    running = commit if commit is not None else running_commit()
    if running is None:
        raise FreightMismatch(
            f"the freight names commit {freight.commit}, and this step cannot tell which commit it runs "
            f"(no ${IMAGE_COMMIT_ENV} in the image and no git checkout): refusing to run unknown code"
        )
    if running != freight.commit:
        raise FreightMismatch(
            f"this step runs commit {running}, but its freight names commit {freight.commit}: "
            "the image or checkout is not the code this run was started for"
        )


def check_env() -> Freight | None:
    """The freight of `$CHEXOPS_FREIGHT`, checked against the running code; None when unset."""
    freight = Freight.from_env()
    if freight is not None:
        check(freight)
    return freight


def loads_annotation(text: str) -> dict[str, str]:
    """The freight annotation as the service shows it: a JSON object of strings (or {} when unreadable)."""
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
