"""The quality gate between evaluation and the registry: criteria as pure functions.

Each criterion turns an evaluation (`evaluation/<id>/metrics.json` of a run) and, when one exists,
the evidence about the model holding the `production` alias into a verdict with its value and
limit: held-out evidence only, the lower bound of the mean AUROC's interval against the floor,
slices judged by their positives, and a regression check only between numbers measured on the
same data. No MLflow here: `chexops.registry.register` fetches, this module judges. The hold-outs of training
sources (the feedback hold-out) are reported with the verdicts and tagged on the version, not judged
(why: `chexops.evaluation.run`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chexops.core.errors import ConfigError, validation_problems


class GateConfig(BaseModel):
    """The gate's limits; `configs/gate.yaml` holds the same defaults, flags override them."""

    model_config = ConfigDict(extra="forbid")

    min_mean_auroc: float = Field(
        0.8,
        ge=0.0,
        le=1.0,
        description="the lower bound of the mean AUROC's 95% interval (and the point estimate) must reach this",
    )
    max_slice_gap: float = Field(
        0.1, ge=0.0, le=1.0, description="no slice's mean AUROC more than this below the whole"
    )
    min_slice_positives: int = Field(
        20, ge=1, description="slices where a finding has fewer positives are reported but not judged"
    )
    max_regression: float = Field(
        0.02, ge=0.0, le=1.0, description="mean AUROC may drop at most this below production's"
    )
    accept_validation_evidence: bool = Field(
        False, description="judge metrics measured on the validation split (which chose the epoch and the thresholds)"
    )
    reevaluate_production: bool = Field(
        True,
        description="when production was measured on other data, evaluate it on the candidate's test split; "
        "else refuse",
    )


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
        raise ConfigError(f"invalid gate limits: {validation_problems(err)}.") from None


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


def check_evidence(evaluation: dict[str, Any], accept_validation: bool) -> Verdict:
    """The metrics must come from held-out data: the test split, which chose neither the epoch nor
    the thresholds, with no patient of the training data in it."""
    split, source = evaluation.get("split"), evaluation.get("test_source")
    overlap = int(evaluation.get("test_patients_in_train") or 0)
    if split == "test" and overlap == 0:
        return Verdict("held_out", None, 0.0, True, "metrics on the test split" + (f" ({source})" if source else ""))
    if split == "test":
        return Verdict(
            "held_out",
            float(overlap),
            0.0,
            False,
            f"{overlap} patients of the test split are also in the training data",
        )
    if accept_validation:
        return Verdict(
            "held_out", None, 0.0, True, f"metrics on the {split} split, accepted by accept_validation_evidence"
        )
    return Verdict(
        "held_out",
        None,
        0.0,
        False,
        f"metrics on the {split} split, which chose the epoch and the thresholds: give the config a test split "
        "(data.test_csv or data.test_fraction) and evaluate again, or set accept_validation_evidence",
    )


def check_mean_auroc(evaluation: dict[str, Any], limit: float) -> Verdict:
    """The lower bound of the mean AUROC's bootstrap interval (and the point estimate) against the floor."""
    value = _num(evaluation.get("mean_auroc"))
    over = ", ".join(evaluation.get("mean_over") or [])
    ci = evaluation.get("mean_auroc_ci") or None
    low = _num(ci[0]) if ci else None
    where = f"mean AUROC over {over} on {evaluation.get('split', '?')}"
    if value is None:
        return Verdict("min_mean_auroc", None, limit, False, where + " is undefined")
    if low is None:
        return Verdict(
            "min_mean_auroc",
            None,
            limit,
            False,
            f"{where} is {value:.3f} without a bootstrap interval: evaluate with --bootstrap > 0",
        )
    unit = evaluation.get("bootstrap_unit", "?")
    return Verdict(
        "min_mean_auroc",
        low,
        limit,
        low >= limit and value >= limit,
        f"lower bound of the 95% interval ({unit}s resampled); {where} {value:.3f} [{low:.3f}, "
        f"{_num(ci[1]) or float('nan'):.3f}]",
    )


def check_slice_gap(evaluation: dict[str, Any], limit: float, min_positives: int) -> Verdict:
    """The largest shortfall of a slice's mean AUROC below the whole, over slices in which every
    finding of the mean has at least `min_positives` positives (an AUROC rests on its positives)."""
    slices = evaluation.get("slices") or []
    judged = [s for s in slices if s.get("min_positives", 0) >= min_positives and _num(s.get("gap")) is not None]
    skipped = [s["slice"] for s in slices if s not in judged]
    if not judged:
        return Verdict(
            "max_slice_gap",
            None,
            limit,
            True,
            f"no slice with >= {min_positives} positives per finding and a defined AUROC"
            + (f" (skipped: {', '.join(skipped)})" if skipped else ""),
        )
    worst = min(judged, key=lambda s: s["gap"])
    shortfall = max(0.0, -float(worst["gap"]))
    detail = (
        f"worst slice {worst['slice']} (n={worst['n']}, fewest positives {worst['min_positives']}, "
        f"mean AUROC {worst['mean_auroc']:.3f})"
    )
    if skipped:
        detail += f"; not judged (< {min_positives} positives of a finding, or undefined): {', '.join(skipped)}"
    return Verdict("max_slice_gap", shortfall, limit, shortfall <= limit, detail)


def check_regression(evaluation: dict[str, Any], production: dict[str, Any] | None, limit: float) -> Verdict:
    """Candidate vs the model holding `production`: its mean AUROC may be at most `limit` lower,
    compared only when both were measured on the same data (equal `split_version`). `production`
    holds that version's `version`, `mean_auroc`, `split_version`, and `source` (where the number
    comes from) or `reason` (why there is no comparable number)."""
    if production is None:
        return Verdict("max_regression", None, limit, True, "no model holds the production alias")
    version = production.get("version")
    ours_on, theirs_on = evaluation.get("split_version"), production.get("split_version")
    if not ours_on or ours_on != theirs_on:
        reason = (
            production.get("reason")
            or f"measured on other data ({theirs_on or 'unknown'} vs the candidate's {ours_on or 'unknown'})"
        )
        return Verdict("max_regression", None, limit, False, f"production version {version} not compared: {reason}")
    ours, theirs = _num(evaluation.get("mean_auroc")), _num(production.get("mean_auroc"))
    if ours is None or theirs is None:
        return Verdict(
            "max_regression",
            None,
            limit,
            False,
            f"cannot compare with production version {version}: a mean AUROC is missing",
        )
    drop = theirs - ours
    detail = f"production version {version} mean AUROC {theirs:.3f}, candidate {ours:.3f}, both on split {ours_on}" + (
        f" ({production['source']})" if production.get("source") else ""
    )
    return Verdict("max_regression", drop, limit, drop <= limit, detail)


def judge(evaluation: dict[str, Any], production: dict[str, Any] | None, config: GateConfig) -> list[Verdict]:
    """Every criterion's verdict; the gate passes when all pass."""
    return [
        check_evidence(evaluation, config.accept_validation_evidence),
        check_mean_auroc(evaluation, config.min_mean_auroc),
        check_slice_gap(evaluation, config.max_slice_gap, config.min_slice_positives),
        check_regression(evaluation, production, config.max_regression),
    ]


def passed(verdicts: list[Verdict]) -> bool:
    return all(v.passed for v in verdicts)


def format_verdicts(verdicts: list[Verdict]) -> str:
    ops = {"held_out": "<=", "min_mean_auroc": ">=", "max_slice_gap": "<=", "max_regression": "<="}
    lines = [f"{'criterion':<16}{'value':>9}  {'limit':<9}{'verdict':<8}detail"]
    for v in verdicts:
        value = "n/a" if v.value is None else f"{v.value:.4f}"
        lines.append(
            f"{v.criterion:<16}{value:>9}  {ops.get(v.criterion, '')} "
            f"{v.limit:<6.3f}{'PASS' if v.passed else 'FAIL':<8}{v.detail}"
        )
    return "\n".join(lines)
