"""Training configuration: YAML validated into typed objects, with `key.sub=value` overrides.

Strings may reference environment variables as `${VAR}` or `${VAR:-default}`; `${CHEXOPS_HOME}`
always resolves (to ./.chexops when unset).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from chexops.core import paths
from chexops.core.errors import ConfigError, validation_problems
from chexops.core.labels import CHEXPERT_LABELS, COMPETITION_LABELS
from chexops.imaging.preprocessing import PreprocessSpec

Policy = Literal["ones", "zeros", "ignore"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


LIBAUC_PER_LABEL: dict[str, Policy] = {"Atelectasis": "ones", "Edema": "ones"}


class PolicyConfig(_Strict):
    """What uncertain (-1) and blank labels become. With neither `uncertain` nor
    `uncertain_per_label` set, LibAUC's default: U-Ones for Atelectasis and Edema, U-Zeros for the
    rest. A policy the user sets in `uncertain` applies to every label; per-label exceptions only
    when listed in `uncertain_per_label`. Blank as negative, as in the CheXpert paper."""

    uncertain: Policy = "zeros"
    uncertain_per_label: dict[str, Policy] = Field(default_factory=dict)
    blank: Literal["negative", "ignore"] = "negative"

    @model_validator(mode="before")
    @classmethod
    def _libauc_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and "uncertain" not in data and "uncertain_per_label" not in data:
            return {**data, "uncertain_per_label": dict(LIBAUC_PER_LABEL)}
        return data

    def for_label(self, label: str) -> Policy:
        return self.uncertain_per_label.get(label, self.uncertain)


class ExtraSource(BaseModel):
    """A CheXpert-layout source joining the training data (`data.sources`), e.g. `chexops feedback export`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_.-]+$")
    csv: Path
    root: Path | None = None
    weight: float = Field(1.0, gt=0, le=20)
    holdout_fraction: float = Field(0.2, ge=0, lt=1)
    allow_empty: bool = False  # a CSV without rows (of the configured view) adds nothing instead of failing


class Provenance(_Strict):
    """Where the training data came from: the exported model carries it (metadata `training_data`), and the
    service shows it; a model trained on `synthetic` data is shown as not for clinical use."""

    kind: Literal["synthetic", "dataset"]
    description: str = Field(min_length=1, max_length=200)


class DataConfig(_Strict):
    kind: Literal["chexpert", "npz"] = "chexpert"
    provenance: Provenance | None = None  # None: the model says it does not know (and is not for clinical use)
    csv: Path | None = None
    root: Path | None = None
    test_csv: Path | None = None
    npz: Path | None = None
    labels: list[str] = Field(default_factory=lambda: list(CHEXPERT_LABELS))
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    view: Literal["frontal", "ap", "pa", "all"] = "frontal"
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    test_fraction: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="without test_csv: this fraction of csv's patients is carved out as the held-out test split",
    )
    test_seed: int = Field(
        0, description="seed of the test carve, apart from `seed` so the test split stays put across training seeds"
    )
    skip_bad_images: bool = False
    cache_images: bool = True
    sources: list[ExtraSource] = Field(default_factory=list)  # extra CheXpert-layout sources (chexops.data.sources)

    @model_validator(mode="after")
    def _sources(self) -> "DataConfig":
        if self.kind == "chexpert" and self.csv is None:
            raise ValueError("data.csv is required when data.kind is 'chexpert'")
        if self.kind == "npz" and self.npz is None:
            raise ValueError("data.npz is required when data.kind is 'npz'")
        if self.test_fraction > 0 and (self.kind != "chexpert" or self.test_csv is not None):
            raise ValueError(
                "data.test_fraction carves a test split from data.csv: use it with kind chexpert and without "
                "data.test_csv"
            )
        if not self.labels:
            raise ValueError("data.labels must name at least one label")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("data.labels has duplicates")
        unknown = set(self.policy.uncertain_per_label) - set(CHEXPERT_LABELS) - set(self.labels)
        if unknown:
            raise ValueError(f"data.policy.uncertain_per_label names unknown labels: {sorted(unknown)}")
        return self


class PreprocessConfig(_Strict):
    size: int = Field(224, ge=8, le=2048)
    channels: Literal[1, 3] = 1
    mean: list[float] = Field(default_factory=lambda: [0.5])
    std: list[float] = Field(default_factory=lambda: [0.25])
    resample: Literal["nearest", "bilinear", "bicubic", "lanczos"] = "bilinear"

    def spec(self) -> PreprocessSpec:
        return PreprocessSpec(self.size, self.channels, tuple(self.mean), tuple(self.std), self.resample)

    @model_validator(mode="after")
    def _check(self) -> "PreprocessConfig":
        self.spec()
        return self


class ModelConfig(_Strict):
    name: Literal["small", "densenet121", "vit"] = "densenet121"
    pretrained_weights: Path | None = None
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    width: int = Field(32, ge=4, le=512, description="channels of the small CNN's first block")
    vit_patch_size: int = Field(16, ge=2)
    vit_hidden_size: int = Field(384, ge=16)
    vit_layers: int = Field(6, ge=1)
    vit_heads: int = Field(6, ge=1)

    @field_validator("pretrained_weights", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return None if value in ("", None) else value


class TrainConfig(_Strict):
    epochs: int = Field(3, ge=1)
    max_steps: int | None = Field(None, ge=1)
    batch_size: int = Field(16, ge=1)
    accum_steps: int = Field(1, ge=1)
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = Field(1e-4, ge=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    schedule: Literal["constant", "cosine", "onecycle"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    patience: int | None = Field(
        None, ge=1, description="epochs without a better validation mean AUROC before stopping"
    )
    checkpoint_every: int = Field(100, ge=1, description="optimizer steps between checkpoints")
    num_workers: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True
    channels_last: bool = True
    threads: int | None = Field(None, ge=1)


class TrackingConfig(_Strict):
    experiment: str = "chexops"
    run_name: str | None = None
    system_metrics: bool = True


class EvalConfig(_Strict):
    mean_over: list[str] | None = None

    def mean_labels(self, labels: list[str]) -> list[str]:
        """The labels averaged into `mean_auroc`: configured, else the competition five present, else all."""
        if self.mean_over:
            return [label for label in self.mean_over if label in labels]
        competition = [label for label in COMPETITION_LABELS if label in labels]
        return competition or list(labels)


class Config(_Strict):
    name: str = "chexops"
    seed: int = 0
    data: DataConfig
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", value):
            raise ValueError("name must be 1-64 letters, digits, '.', '_' or '-'")
        return value

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand(value: Any) -> Any:
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name == "CHEXOPS_HOME" and name not in os.environ:
                return str(Path(paths.HOME_DIR).resolve())
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise ConfigError(f"the config references ${{{name}}}, which is not set in the environment")

        return _VAR.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v) for v in value]
    return value


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply one `a.b.c=value` override in place; the value is parsed as YAML."""
    key, sep, raw = override.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {override!r} is not of the form key.sub=value")
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = yaml.safe_load(raw) if raw else None


def _format_validation(source: str, err: ValidationError) -> str:
    return f"{source} is not a valid chexops config: {validation_problems(err)}."


def load_config(
    path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), base: dict | None = None
) -> Config:
    """Read a YAML config (or start from `base`), apply overrides, expand variables, validate."""
    data: dict[str, Any] = dict(base or {})
    source = "the configuration"
    if path is not None:
        path = Path(path)
        source = str(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping at the top level, got {type(loaded).__name__}")
        data.update(loaded)
    for override in overrides:
        apply_override(data, override)
    try:
        return Config.model_validate(_expand(data))
    except ValidationError as err:
        blamed = _overrides_at_fault(err, overrides)
        if blamed:  # a typo on the command line is not the config file's fault
            raise ConfigError(
                f"the command-line override{'s' if len(blamed) > 1 else ''} {', '.join(map(repr, blamed))} "
                f"{'are' if len(blamed) > 1 else 'is'} not valid: {validation_problems(err)}."
            ) from None
        raise ConfigError(_format_validation(source, err)) from None


def _overrides_at_fault(err: ValidationError, overrides: list[str] | tuple[str, ...]) -> list[str]:
    """The overrides whose key is where a validation error is (all errors must be theirs)."""
    keys = {o.partition("=")[0].strip(): o for o in overrides}
    blamed = []
    for item in err.errors():
        where = ".".join(str(p) for p in item["loc"])
        match = next((o for k, o in keys.items() if where == k or where.startswith(k + ".")), None)
        if match is None:
            return []
        if match not in blamed:
            blamed.append(match)
    return blamed
