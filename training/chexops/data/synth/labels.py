"""The labels of a synthetic CheXpert: the real statistics, a latent correlation model, one split's rows.

Labels come from a latent multivariate normal per study (correlated like the real positives, shared in part
by the studies of one patient); train.csv shows them through CheXpert's noisy labeller (1.0, 0.0, -1.0,
blank) at the real rates, valid.csv shows the latent truth (1.0/0.0), like the radiologists' consensus of
the real valid set.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources
from statistics import NormalDist

import numpy as np

from chexops.core.errors import UserInputError
from chexops.core.labels import CHEXPERT_LABELS, META_COLUMNS
from chexops.data.chexpert import DATASET_DIR

NO_FINDING = "No Finding"
SUPPORT_DEVICES = "Support Devices"
# The latent dimensions: every observation but No Finding, which is derived from them.
FINDINGS: tuple[str, ...] = tuple(label for label in CHEXPERT_LABELS if label != NO_FINDING)

_PATIENT_SHARE = 0.5  # share of the latent variance common to all studies of one patient

# Observed label codes.
_POS, _NEG, _UNC, _BLANK = 1, 0, -1, 2
_TRAIN_TEXT = {_POS: "1.0", _NEG: "0.0", _UNC: "-1.0", _BLANK: ""}


def load_stats() -> dict:
    """The label statistics of the real CheXpert train.csv shipped with the package."""
    return json.loads(resources.files("chexops.data").joinpath("label_stats.json").read_text("utf-8"))


def _norm_sf(x: np.ndarray) -> np.ndarray:
    """The standard normal upper tail, via the Abramowitz-Stegun 7.1.26 erfc (error < 2e-7)."""
    z = np.abs(x) / math.sqrt(2)
    t = 1 / (1 + 0.3275911 * z)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    half_erfc = 0.5 * poly * np.exp(-z * z)
    return np.where(x >= 0, half_erfc, 1 - half_erfc)


def _both_above(t1: np.ndarray, t2: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """P(Z1 > t1, Z2 > t2) for standard bivariate normals with correlation rho (elementwise, by quadrature)."""
    z = t1[:, None] + np.linspace(0.0, 9.0, 1201)[None, :]
    inner = _norm_sf((t2[:, None] - rho[:, None] * z) / np.sqrt(1 - rho[:, None] ** 2))
    f = np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi) * inner
    return ((f[:, 1:] + f[:, :-1]) / 2 * np.diff(z, axis=1)).sum(axis=1)


def _latent_correlation(target: np.ndarray, thresholds: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The latent correlation whose observed positives (latent > threshold, kept with P `keep`) correlate as `target`.

    Thresholding and thinning shrink correlations; this inverts both pair by pair (bisection on rho).
    """
    f = len(thresholds)
    i, j = np.triu_indices(f, 1)
    p = np.array([_norm_sf(np.array([t]))[0] for t in thresholds])
    q = keep * p  # P(observed positive)
    cov = target[i, j] * np.sqrt(q[i] * (1 - q[i]) * q[j] * (1 - q[j])) / (keep[i] * keep[j])
    joint = np.clip(p[i] * p[j] + cov, 0.0, np.minimum(p[i], p[j]))
    lo, hi = np.full(len(i), -0.99), np.full(len(i), 0.99)
    for _ in range(30):
        mid = (lo + hi) / 2
        above = _both_above(thresholds[i], thresholds[j], mid) > joint
        hi, lo = np.where(above, mid, hi), np.where(above, lo, mid)
    corr = np.eye(f)
    corr[i, j] = corr[j, i] = (lo + hi) / 2
    return corr


@dataclass(frozen=True)
class LabelModel:
    """Everything drawn from the stats: label model, study structure, demographics."""

    columns: tuple[str, ...]
    thresholds: np.ndarray  # (F,) latent z > threshold means the finding is present
    chol: np.ndarray  # (F, F) Cholesky factor of the repaired correlation
    pos_given_latent: np.ndarray  # (F,) P(1.0 | latent positive); else -1.0
    neg_given_absent: np.ndarray  # (F,) P(0.0 | latent negative)
    blank_given_absent: np.ndarray  # (F,) P(blank | latent negative); else -1.0
    studies_per_patient: float
    extra_frontal: float  # P(a study has a second frontal view)
    lateral: float  # P(a study has a lateral view)
    ap: float  # P(AP | frontal)
    male: float
    age_probs: np.ndarray
    age_values: np.ndarray


def label_model(stats: dict) -> LabelModel:
    """Derive the generator's parameters from label statistics; UserInputError when they are malformed."""
    try:
        columns = tuple(stats["columns"])
        if sorted(columns) != sorted(META_COLUMNS + CHEXPERT_LABELS) or len(set(columns)) != len(columns):
            expected = list(META_COLUMNS + CHEXPERT_LABELS)
            raise UserInputError(f"stats columns must be the CheXpert columns {expected}, got {list(columns)}")
        counts = np.array(
            [[float(stats["labels"][f][k]) for k in ("positive", "negative", "uncertain", "blank")] for f in FINDINGS]
        )
        if (counts < 0).any() or (counts.sum(axis=1) <= 0).any():
            raise UserInputError("stats label counts must be non-negative with a positive total per label")
        pos, neg, unc, blank = counts.T
        total = counts.sum(axis=1)
        prevalence = np.clip((pos + 0.5 * unc) / total, 1e-6, 1 - 1e-6)
        absent = neg + blank + 0.5 * unc
        with np.errstate(divide="ignore", invalid="ignore"):
            pos_given = np.where(pos + unc > 0, pos / (pos + 0.5 * unc), 1.0)
            neg_given = np.where(absent > 0, neg / absent, 0.0)
            blank_given = np.where(absent > 0, blank / absent, 1.0)
        corr_table = stats.get("positive_correlation") or {}
        corr = np.eye(len(FINDINGS))
        for i, a in enumerate(FINDINGS):
            for j, b in enumerate(FINDINGS):
                if i != j and a in corr_table and b in corr_table[a]:
                    corr[i, j] = float(corr_table[a][b])
        rows = float(stats["rows"])
        studies = float(stats["studies"])
        patients = float(stats["patients"])
        views = stats["frontal_lateral"]
        lateral_rows = float(views["Lateral"])
        ap, pa = float(stats["ap_pa"]["AP"]), float(stats["ap_pa"]["PA"])
        male, female = float(stats["sex"]["Male"]), float(stats["sex"]["Female"])
        age = stats["age"]
        quantiles = sorted((float(q), float(v)) for q, v in age["quantiles"].items())
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UserInputError(f"label stats are malformed: missing or bad entry {exc!s}") from exc
    if min(rows, studies, patients, ap + pa, male + female) <= 0 or studies < patients or rows < studies:
        raise UserInputError("label stats are malformed: rows >= studies >= patients > 0 is required")

    normal = NormalDist()
    thresholds = np.array([normal.inv_cdf(1 - p) for p in prevalence])
    # The stats correlate observed positives; find the latent correlation that reproduces them, then repair
    # it to positive definite: symmetrise, clip eigenvalues, restore the unit diagonal.
    corr = _latent_correlation((corr + corr.T) / 2, thresholds, pos_given)
    values, vectors = np.linalg.eigh(corr)
    corr = (vectors * np.clip(values, 1e-3, None)) @ vectors.T
    scale = np.sqrt(np.diag(corr))
    corr = corr / np.outer(scale, scale)
    per_study = rows / studies
    lateral = min(lateral_rows / rows * per_study, 1.0)
    age_points = [(0.0, float(age.get("min", 0)))] + quantiles + [(1.0, float(age.get("max", 90)))]
    return LabelModel(
        columns=columns,
        thresholds=thresholds,
        chol=np.linalg.cholesky(corr),
        pos_given_latent=pos_given,
        neg_given_absent=neg_given,
        blank_given_absent=blank_given,
        studies_per_patient=studies / patients,
        extra_frontal=float(np.clip(per_study - 1 - lateral, 0.0, 1.0)),
        lateral=lateral,
        ap=ap / (ap + pa),
        male=male / (male + female),
        age_probs=np.array([p for p, _ in age_points]),
        age_values=np.array([v for _, v in age_points]),
    )


@dataclass
class DrawnSplit:
    """One split's rows: CSV text plus what the renderer needs."""

    rows: list[list[str]]
    paths: list[str]
    findings: np.ndarray  # (rows, F) latent truth
    frontal: np.ndarray  # (rows,) bool


def draw_split(rng: np.random.Generator, m: LabelModel, split: str, n_patients: int, first_id: int) -> DrawnSplit:
    """Patients, studies, views, demographics and labels of one split."""
    f = len(FINDINGS)
    if split == "train":
        n_studies = rng.geometric(1.0 / m.studies_per_patient, n_patients)
    else:  # the real valid set: one study per patient
        n_studies = np.ones(n_patients, dtype=np.int64)
    total = int(n_studies.sum())
    patient_of = np.repeat(np.arange(n_patients), n_studies)
    study_no = np.arange(total) - np.repeat(np.cumsum(n_studies) - n_studies, n_studies) + 1

    z_patient = rng.standard_normal((n_patients, f)) @ m.chol.T
    z_study = rng.standard_normal((total, f)) @ m.chol.T
    z = math.sqrt(_PATIENT_SHARE) * z_patient[patient_of] + math.sqrt(1 - _PATIENT_SHARE) * z_study
    latent = z > m.thresholds

    u = rng.random((total, f))
    observed = np.where(
        latent,
        np.where(u < m.pos_given_latent, _POS, _UNC),
        np.where(
            u < m.neg_given_absent,
            _NEG,
            np.where(u < m.neg_given_absent + m.blank_given_absent, _BLANK, _UNC),
        ),
    )
    pathology = [i for i, name in enumerate(FINDINGS) if name != SUPPORT_DEVICES]
    no_finding = ~latent[:, pathology].any(axis=1)

    male = rng.random(n_patients) < m.male
    base_age = np.interp(rng.random(n_patients), m.age_probs, m.age_values)
    age = np.clip(np.rint(base_age[patient_of] + (study_no - 1) * rng.random(total)), 18, 90).astype(int)
    extra_frontal = rng.random(total) < m.extra_frontal
    lateral = rng.random(total) < m.lateral
    ap_draw = rng.random((total, 2)) < m.ap

    col = {name: i for i, name in enumerate(m.columns)}
    rows: list[list[str]] = []
    paths: list[str] = []
    study_of_row: list[int] = []
    frontal: list[bool] = []
    for s in range(total):
        if split == "train":
            labels = [_TRAIN_TEXT[int(c)] for c in observed[s]]
            nf = "1.0" if no_finding[s] else ""
        else:
            labels = ["1.0" if x else "0.0" for x in latent[s]]
            nf = "1.0" if no_finding[s] else "0.0"
        views = ["frontal"] + (["frontal"] if extra_frontal[s] else []) + (["lateral"] if lateral[s] else [])
        stem = f"{DATASET_DIR}/{split}/patient{first_id + patient_of[s]:05d}/study{study_no[s]}"
        for v, view in enumerate(views, start=1):
            row = [""] * len(m.columns)
            row[col["Path"]] = f"{stem}/view{v}_{view}.jpg"
            row[col["Sex"]] = "Male" if male[patient_of[s]] else "Female"
            row[col["Age"]] = str(age[s])
            row[col["Frontal/Lateral"]] = "Frontal" if view == "frontal" else "Lateral"
            row[col["AP/PA"]] = ("AP" if ap_draw[s, v - 1] else "PA") if view == "frontal" else ""
            row[col[NO_FINDING]] = nf
            for name, text in zip(FINDINGS, labels):
                row[col[name]] = text
            rows.append(row)
            paths.append(row[col["Path"]])
            study_of_row.append(s)
            frontal.append(view == "frontal")
    return DrawnSplit(rows, paths, latent[np.array(study_of_row, dtype=np.int64)], np.array(frontal, dtype=bool))
