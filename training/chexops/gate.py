"""The quality gate between evaluation and the registry: criteria as pure functions.

Each criterion turns an evaluation (`evaluation/metrics.json` of a run) and, when one exists, the
evaluation summary of the model holding the `production` alias into a verdict with its value and
limit. No MLflow here: `chexops.registry` fetches, this module judges.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError


class GateConfig(BaseModel):
    """The gate's limits; `configs/gate.yaml` holds the same defaults, flags override them."""

    model_config = ConfigDict(extra="forbid")

    min_mean_auroc: float = Field(0.8, ge=0.0, le=1.0, description="the evaluation's mean AUROC must reach this")
    max_slice_gap: float = Field(0.1, ge=0.0, le=1.0, description="no slice's mean AUROC more than this below the whole")
    min_slice_size: int = Field(30, ge=1, description="slices with fewer images are reported but not judged")
    max_regression: float = Field(0.02, ge=0.0, le=1.0, description="mean AUROC may drop at most this below production's")


def load_gate_config(path: str | Path | None, overrides: dict[str, Any]) -> GateConfig:
    """Defaults, then the YAML file (if any), then the flags that were given (not None)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read gate config {path}: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of gate limits.")
        data.update(loaded.get("gate", loaded))
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return GateConfig.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"invalid gate limits: {problems}.") from None


@dataclass
class Verdict:
    criterion: str
    value: float | None
    limit: float
    passed: bool
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _num(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def check_mean_auroc(evaluation: dict[str, Any], limit: float) -> Verdict:
    value = _num(evaluation.get("mean_auroc"))
    over = ", ".join(evaluation.get("mean_over") or [])
    return Verdict("min_mean_auroc", value, limit, value is not None and value >= limit,
                   f"mean AUROC over {over} on {evaluation.get('split', '?')}" + ("" if value is not None else " is undefined"))


def check_slice_gap(evaluation: dict[str, Any], limit: float, min_size: int) -> Verdict:
    """The largest shortfall of a slice's mean AUROC below the whole, over slices of at least `min_size` images."""
    judged = [s for s in evaluation.get("slices") or [] if s.get("n", 0) >= min_size and _num(s.get("gap")) is not None]
    skipped = [s["slice"] for s in evaluation.get("slices") or [] if s not in judged]
    if not judged:
        return Verdict("max_slice_gap", None, limit, True,
                       f"no slice with >= {min_size} images and a defined AUROC" + (f" (skipped: {', '.join(skipped)})" if skipped else ""))
    worst = min(judged, key=lambda s: s["gap"])
    shortfall = max(0.0, -float(worst["gap"]))
    detail = f"worst slice {worst['slice']} (n={worst['n']}, mean AUROC {worst['mean_auroc']:.3f})"
    if skipped:
        detail += f"; not judged (< {min_size} images or undefined): {', '.join(skipped)}"
    return Verdict("max_slice_gap", shortfall, limit, shortfall <= limit, detail)


def check_regression(evaluation: dict[str, Any], production: dict[str, Any] | None, limit: float) -> Verdict:
    """Candidate vs the model holding `production`: its mean AUROC may be at most `limit` lower.
    `production` holds that version's `version`, `mean_auroc` and `data_version` (its tags)."""
    if production is None:
        return Verdict("max_regression", None, limit, True, "no model holds the production alias")
    ours, theirs = _num(evaluation.get("mean_auroc")), _num(production.get("mean_auroc"))
    if ours is None or theirs is None:
        return Verdict("max_regression", None, limit, False,
                       f"cannot compare with production version {production.get('version')}: a mean AUROC is missing")
    drop = theirs - ours
    detail = f"production version {production.get('version')} mean AUROC {theirs:.3f}, candidate {ours:.3f}"
    if production.get("data_version") and production.get("data_version") != evaluation.get("data_version"):
        detail += f" (evaluated on other data: {production.get('data_version')} vs {evaluation.get('data_version')})"
    return Verdict("max_regression", drop, limit, drop <= limit, detail)


def judge(evaluation: dict[str, Any], production: dict[str, Any] | None, config: GateConfig) -> list[Verdict]:
    """Every criterion's verdict; the gate passes when all pass."""
    return [
        check_mean_auroc(evaluation, config.min_mean_auroc),
        check_slice_gap(evaluation, config.max_slice_gap, config.min_slice_size),
        check_regression(evaluation, production, config.max_regression),
    ]


def passed(verdicts: list[Verdict]) -> bool:
    return all(v.passed for v in verdicts)


def format_verdicts(verdicts: list[Verdict]) -> str:
    ops = {"min_mean_auroc": ">=", "max_slice_gap": "<=", "max_regression": "<="}
    lines = [f"{'criterion':<16}{'value':>9}  {'limit':<9}{'verdict':<8}detail"]
    for v in verdicts:
        value = "n/a" if v.value is None else f"{v.value:.4f}"
        lines.append(f"{v.criterion:<16}{value:>9}  {ops.get(v.criterion, '')} {v.limit:<6.3f}{'PASS' if v.passed else 'FAIL':<8}{v.detail}")
    return "\n".join(lines)
