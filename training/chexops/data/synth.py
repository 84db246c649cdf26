"""A synthetic CheXpert-v1.0-small: the real layout, label rates and correlations; images with learnable traces.

`synthesize(out)` writes `out/CheXpert-v1.0-small/{train,valid}.csv` and the JPEGs they name. Labels come
from a latent multivariate normal per study (correlated like the real positives, shared in part by the
studies of one patient); train.csv shows them through CheXpert's noisy labeller (1.0, 0.0, -1.0, blank) at
the real rates, valid.csv shows the latent truth (1.0/0.0), like the radiologists' consensus of the real
valid set. Every latent finding leaves its own visual trace in the image.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from statistics import NormalDist

import numpy as np

from chexops.core.errors import UserInputError
from chexops.core.labels import CHEXPERT_LABELS, META_COLUMNS

log = logging.getLogger(__name__)

DATASET_DIR = "CheXpert-v1.0-small"
NO_FINDING = "No Finding"
SUPPORT_DEVICES = "Support Devices"
# The latent dimensions: every observation but No Finding, which is derived from them.
FINDINGS: tuple[str, ...] = tuple(label for label in CHEXPERT_LABELS if label != NO_FINDING)

_PATIENT_SHARE = 0.5  # share of the latent variance common to all studies of one patient
_MAX_PATIENTS = 99_999  # patient ids stay five digits, as in the real layout
_JPEG_QUALITY = 90
_LATERAL_TRACE = 0.5  # lateral views show traces at half strength
_BATCH_PIXELS = 1 << 21  # pixels rendered per vectorised batch

# Observed label codes.
_POS, _NEG, _UNC, _BLANK = 1, 0, -1, 2
_TRAIN_TEXT = {_POS: "1.0", _NEG: "0.0", _UNC: "-1.0", _BLANK: ""}


def load_stats() -> dict:
    """The label statistics of the real CheXpert train.csv shipped with the package."""
    return json.loads(resources.files("chexops.data").joinpath("label_stats.json").read_text("utf-8"))


# --------------------------------------------------------------------------------------------- labels


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
class _Model:
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


def _model(stats: dict) -> _Model:
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
    return _Model(
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
class _Split:
    """One split's rows: CSV text plus what the renderer needs."""

    rows: list[list[str]]
    paths: list[str]
    findings: np.ndarray  # (rows, F) latent truth
    frontal: np.ndarray  # (rows,) bool


def _draw_split(rng: np.random.Generator, m: _Model, split: str, n_patients: int, first_id: int) -> _Split:
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
    return _Split(rows, paths, latent[np.array(study_of_row, dtype=np.int64)], np.array(frontal, dtype=bool))


# --------------------------------------------------------------------------------------------- images

_F = {name: i for i, name in enumerate(FINDINGS)}


def _c(a: np.ndarray) -> np.ndarray:
    """Per-image parameters (n,) as (n, 1, 1), ready to broadcast over pixels."""
    return np.asarray(a, dtype=np.float32)[:, None, None]


def _ellipse(x, y, cx, cy, ax, ay, edge: float = 0.08) -> np.ndarray:
    """A soft-edged ellipse mask in [0, 1]; `edge` is the ramp width in ellipse radii."""
    d = np.sqrt(((x - _c(cx)) / _c(ax)) ** 2 + ((y - _c(cy)) / _c(ay)) ** 2)
    return np.clip((1 - d) / edge + 0.5, 0, 1)


def _lung(x, y, cx, cy, ax, ay, edge: float = 0.1) -> np.ndarray:
    """A lung field: an ellipse narrow at the apex and broad at the base."""
    t = (y - _c(cy)) / _c(ay)
    d = np.sqrt(((x - _c(cx)) / (_c(ax) * (1 + 0.3 * np.clip(t, -1, 1)))) ** 2 + t**2)
    return np.clip((1 - d) / edge + 0.5, 0, 1)


def _torso(x, y, ax, ay, power) -> np.ndarray:
    """The body outline: a superellipse (boxier for larger `power`) centred low in the frame."""
    d = (np.abs(x / _c(ax)) ** _c(power) + np.abs((y - 0.25) / _c(ay)) ** _c(power)) ** (1 / _c(power))
    return np.clip((1 - d) / 0.06 + 0.5, 0, 1)


def _segment(x, y, x0, y0, x1, y1, width) -> np.ndarray:
    """A line segment with a triangular profile, 1 on the segment and 0 beyond `width`."""
    x0, y0, x1, y1, width = map(_c, (x0, y0, x1, y1, width))
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy), 0, 1)
    dist = np.sqrt((x - x0 - t * dx) ** 2 + (y - y0 - t * dy) ** 2)
    return np.clip(1 - dist / width, 0, 1)


def _in_lung(rng, n, cx, cy, ax, ay, radius: float, y_low: float = -1.0, y_high: float = 1.0):
    """Random points inside lung ellipses (within `radius` of the centre), rows of the ellipse in [y_low, y_high]."""
    r = radius * np.sqrt(rng.random(n))
    phi = rng.uniform(0, 2 * np.pi, n)
    ry = np.clip(r * np.sin(phi), y_low, y_high)
    return cx + ax * r * np.cos(phi), cy + ay * ry


def _render(rng: np.random.Generator, findings: np.ndarray, frontal: np.ndarray, size: int) -> np.ndarray:
    """Render images (n, size, size) uint8 for latent `findings` (n, F) and view flags `frontal` (n,)."""
    n = len(frontal)
    u = rng.uniform  # shorthand
    amp = u(0.5, 1.0, (n, len(FINDINGS))) * np.where(frontal, 1.0, _LATERAL_TRACE)[:, None]
    amp = np.where(findings, amp, 0.0)

    g = ((np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1).astype(np.float32)
    scale = u(0.92, 1.08, n)
    x = (g[None, None, :] - _c(u(-0.06, 0.06, n))) / _c(scale)  # (n, 1, W)
    y = (g[None, :, None] - _c(u(-0.06, 0.06, n))) / _c(scale)  # (n, H, 1)

    # Geometry: two lung fields (frontal: image left = patient right; lateral: anterior, posterior).
    jitter = lambda: u(0.95, 1.05, n)  # noqa: E731
    lcx = np.stack([np.where(frontal, -0.37, -0.18), np.where(frontal, 0.38, 0.2)], 1)
    lcy = np.stack([np.where(frontal, -0.08, -0.05), np.where(frontal, -0.06, 0.0)], 1) + u(-0.03, 0.03, (n, 1))
    lax = np.stack([np.where(frontal, 0.26, 0.33), np.where(frontal, 0.25, 0.33)], 1) * jitter()[:, None]
    lay = np.stack([np.where(frontal, 0.6, 0.52), np.where(frontal, 0.58, 0.6)], 1) * jitter()[:, None]
    hcx = np.where(frontal, 0.1, -0.22) + u(-0.02, 0.02, n)
    hcy = np.where(frontal, 0.26, 0.32) + u(-0.03, 0.03, n)
    hax = np.where(frontal, 0.27, 0.24) * jitter()
    hay = np.where(frontal, 0.21, 0.21) * jitter()
    med_w = np.where(frontal, 0.1, -1.0) * jitter()  # lateral: none
    medial = np.array([1.0, -1.0])[None, :] * np.where(frontal, 1.0, 0.0)[:, None]  # towards the midline

    # Findings that change the anatomy.
    a = amp[:, _F["Cardiomegaly"]]
    hax, hay, hcx = hax * (1 + 0.5 * a), hay * (1 + 0.2 * a), hcx + 0.06 * a * frontal
    ecm = amp[:, _F["Enlarged Cardiomediastinum"]]
    ate = amp[:, _F["Atelectasis"]]
    ate_side = rng.integers(0, 2, n)
    shrink = np.where(np.arange(2)[None, :] == ate_side[:, None], 0.14 * ate[:, None], 0.0)
    lcy, lay = lcy - shrink * lay, lay * (1 - shrink)  # lung base rises, apex stays

    # Base scene: torso, lungs (darker), heart and mediastinum (covering the lungs), ribs, clavicles, spine.
    body = np.maximum(
        _torso(x, y, np.where(frontal, 0.95, 0.8) * jitter(), np.full(n, 1.2), np.where(frontal, 3.0, 2.4)),
        _ellipse(x, y, np.zeros(n), np.full(n, -1.0), np.full(n, 0.24), np.full(n, 0.4)),
    )
    bg, body_level = _c(u(0.03, 0.1, n)), _c(u(0.5, 0.6, n))
    img = bg + (body_level - bg) * body
    heart = _ellipse(x, y, hcx, hcy, hax, hay, 0.12)
    bump = np.exp(-(((y + 0.4) / 0.3) ** 2))
    width = _c(med_w) * (1 + 1.4 * _c(ecm) * bump)
    med = np.clip((width - np.abs(x)) / 0.04 + 0.5, 0, 1) * np.clip((0.4 - y) / 0.1, 0, 1)
    cover = (1 - heart) * (1 - med)
    lungs = [_lung(x, y, lcx[:, k], lcy[:, k], lax[:, k], lay[:, k]) * cover for k in range(2)]  # visible parts
    visible = np.maximum(lungs[0], lungs[1])
    ribs = 0.05 * (0.5 + 0.5 * np.sin(2 * np.pi * 4.5 * (y + 0.25 * x * x) + _c(u(0, 2 * np.pi, n)))) * visible
    img = img - _c(u(0.28, 0.36, n)) * visible + ribs + 0.08 * heart + 0.08 * med
    spine = np.clip(1 - np.abs(x - _c(np.where(frontal, 0.0, 0.62))) / 0.09, 0, 1) * body
    img = img + 0.06 * spine * (1 - visible)
    f = np.flatnonzero(frontal)
    if len(f):
        for s in (-1.0, 1.0):
            clavicle = _segment(x[f], y[f], np.full(len(f), 0.1 * s), np.full(len(f), -0.66),
                                np.full(len(f), 0.62 * s), np.full(len(f), -0.76), np.full(len(f), 0.035))  # fmt: skip
            img[f] += 0.1 * clavicle

    def side_lung(idx, side):
        """Per image of `idx`: the lung mask and geometry of lung `side[i]`."""
        k = side
        mask = np.where(_c(k) == 0, lungs[0][idx], lungs[1][idx])
        return mask, lcx[idx, k], lcy[idx, k], lax[idx, k], lay[idx, k], medial[idx, k]

    def add(name, fn):
        idx = np.flatnonzero(amp[:, _F[name]] > 0)
        if len(idx):
            img[idx] += fn(idx, amp[idx, _F[name]], x[idx], y[idx])

    def effusion(idx, a, xs, ys):
        both = rng.random(len(idx)) < 0.5
        side = rng.integers(0, 2, len(idx))
        out = 0.0
        for k in range(2):
            on = (both | (side == k)).astype(np.float32)
            cx, cy, ax, ay = lcx[idx, k], lcy[idx, k], lax[idx, k], lay[idx, k]
            level = _c(cy + ay * (1.0 - 0.8 * a))  # a = 0.5: blunted angle; a = 1: a fifth of the lung
            lateral = np.clip(-(xs - _c(cx)) / _c(ax) * _c(medial[idx, k]), 0, 1)
            fluid = np.clip((ys - (level - 0.3 * _c(ay) * lateral)) / 0.05 + 0.5, 0, 1)
            out = np.maximum(out, _c(on) * fluid * lungs[k][idx])
        return 0.28 * out

    def edema(idx, a, xs, ys):
        out = 0.0
        for k in range(2):
            cx, cy, ax, ay = lcx[idx, k], lcy[idx, k], lax[idx, k], lay[idx, k]
            hx = np.where(frontal[idx], cx + 0.5 * ax * medial[idx, k], cx)
            haze = np.exp(-(((xs - _c(hx)) / _c(0.55 * ax)) ** 2) - ((ys - _c(cy + 0.1 * ay)) / _c(0.5 * ay)) ** 2)
            out = out + haze * lungs[k][idx]
        return 0.22 * _c(a) * np.minimum(out, 1.0)

    def consolidation(idx, a, xs, ys):
        mask, cx, cy, ax, ay, _ = side_lung(idx, rng.integers(0, 2, len(idx)))
        px, py = _in_lung(rng, len(idx), cx, cy, ax, ay, 0.55, -0.2, 1.0)
        patch = _ellipse(xs, ys, px, py, u(0.13, 0.2, len(idx)), u(0.11, 0.17, len(idx)), 0.25)
        return 0.32 * _c(a) * patch * mask

    def opacity(idx, a, xs, ys):
        mask, cx, cy, ax, ay, _ = side_lung(idx, rng.integers(0, 2, len(idx)))
        px, py = _in_lung(rng, len(idx), cx, cy, ax, ay, 0.6)
        sigma = _c(u(0.14, 0.22, len(idx)))
        return 0.2 * _c(a) * np.exp(-((xs - _c(px)) ** 2 + (ys - _c(py)) ** 2) / (2 * sigma**2)) * mask

    def pneumonia(idx, a, xs, ys):
        mask, cx, cy, ax, ay, _ = side_lung(idx, rng.integers(0, 2, len(idx)))
        px, py = _in_lung(rng, len(idx), cx, cy, ax, ay, 0.5, -0.3, 1.0)
        region = np.exp(-((xs - _c(px)) ** 2 + (ys - _c(py)) ** 2) / (2 * 0.2**2))
        texture = 0.0
        for _ in range(3):
            theta, k = rng.uniform(0, np.pi, len(idx)), rng.uniform(22, 34, len(idx))
            phase = rng.uniform(0, 2 * np.pi, len(idx))
            texture = texture + np.cos(_c(k * np.cos(theta)) * xs + _c(k * np.sin(theta)) * ys + _c(phase))
        return 0.4 * _c(a) * region * np.clip(texture / 2, 0, 1) * mask

    def atelectasis(idx, a, xs, ys):
        side = ate_side[idx]
        mask, cx, cy, ax, ay, _ = side_lung(idx, side)
        bx = cx + u(-0.25, 0.25, len(idx)) * ax
        by = cy + u(0.25, 0.5, len(idx)) * ay
        half, angle = 0.45 * ax, u(-0.3, 0.3, len(idx))
        dx, dy = half * np.cos(angle), half * np.sin(angle)
        band = _segment(xs, ys, bx - dx, by - dy, bx + dx, by + dy, np.full(len(idx), 0.045))
        return 0.35 * _c(a) * band * mask

    def pneumothorax(idx, a, xs, ys):
        side = rng.integers(0, 2, len(idx))
        mask, cx, cy, ax, ay, med_sign = side_lung(idx, side)
        f = 1 - 0.35 * a  # the collapsed lung, pulled towards the hilum and the base
        cxs, cys = cx + med_sign * (1 - f) * ax, cy + (1 - f) * ay
        d = np.sqrt(((xs - _c(cxs)) / _c(f * ax)) ** 2 + ((ys - _c(cys)) / _c(f * ay)) ** 2)
        air = np.clip((d - 1) / 0.08 + 0.5, 0, 1) * mask
        line = np.clip(1 - np.abs(d - 1) / 0.05, 0, 1) * mask
        return -(0.12 * _c(a) * air + ribs[idx] * air) + 0.1 * _c(a) * line

    def lesion(idx, a, xs, ys):
        mask, cx, cy, ax, ay, _ = side_lung(idx, rng.integers(0, 2, len(idx)))
        px, py = _in_lung(rng, len(idx), cx, cy, ax, ay, 0.7)
        r = u(0.045, 0.07, len(idx))
        return 0.32 * _c(a) * _ellipse(xs, ys, px, py, r, r, 0.3) * mask

    def pleural_other(idx, a, xs, ys):
        mask, cx, cy, ax, ay, med_sign = side_lung(idx, rng.integers(0, 2, len(idx)))
        inner = _ellipse(xs, ys, cx + med_sign * 0.1 * a * ax, cy, ax * (1 - 0.2 * a), ay * 0.97, 0.1)
        lateral = np.clip(-(xs - _c(cx)) / _c(ax) * _c(np.where(med_sign == 0, -1.0, med_sign)) * 2, 0, 1)
        return 0.3 * _c(a) * mask * (1 - inner) * lateral

    def fracture(idx, a, xs, ys):
        sign = np.where(rng.random(len(idx)) < 0.5, -1.0, 1.0)
        x0 = sign * u(0.6, 0.72, len(idx))
        y0 = u(-0.55, 0.35, len(idx))
        angle, half = u(0.2, 0.6, len(idx)), u(0.06, 0.09, len(idx))
        x1, y1 = x0 + sign * half * np.cos(angle) * 2, y0 + half * np.sin(angle) * 2
        return 0.5 * _c(a) * _segment(xs, ys, x0, y0, x1, y1, np.full(len(idx), 0.03))

    def devices(idx, a, xs, ys):
        k = len(idx)
        top, end = np.full(k, -1.2), u(-0.1, 0.5, k)
        x0, bend = u(-0.06, 0.06, k), u(-0.15, 0.15, k)
        centre = _c(x0) + _c(bend) * (ys - _c(top)) ** 2 / 2
        tube = np.clip(1 - np.abs(xs - centre) / 0.025, 0, 1) * np.clip((_c(end) - ys) / 0.03, 0, 1)
        return 0.6 * _c(a) * tube

    add("Pleural Effusion", effusion)
    add("Edema", edema)
    add("Consolidation", consolidation)
    add("Lung Opacity", opacity)
    add("Pneumonia", pneumonia)
    add("Atelectasis", atelectasis)
    add("Pneumothorax", pneumothorax)
    add("Lung Lesion", lesion)
    add("Pleural Other", pleural_other)
    add("Fracture", fracture)
    add("Support Devices", devices)

    pivot = np.float32(0.35)
    img = (img - pivot) * _c(u(0.85, 1.15, n)) + pivot + _c(u(-0.05, 0.05, n))
    img += _c(u(0.012, 0.03, n)) * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)


def _write_images(root: Path, split: _Split, seed: int, tag: int, size: int, bar) -> None:
    """Render a split in vectorised batches and write each image as JPEG under `root` (the dataset dir)."""
    from PIL import Image

    for d in sorted({str(Path(p).parent) for p in split.paths}):
        (root / Path(d).relative_to(DATASET_DIR)).mkdir(parents=True, exist_ok=True)
    batch = max(1, _BATCH_PIXELS // (size * size))
    for b, start in enumerate(range(0, len(split.paths), batch)):
        rng = np.random.default_rng(np.random.SeedSequence([seed, tag, b]))
        stop = min(start + batch, len(split.paths))
        pixels = _render(rng, split.findings[start:stop], split.frontal[start:stop], size)
        for path, arr in zip(split.paths[start:stop], pixels):
            Image.fromarray(arr).save(root / Path(path).relative_to(DATASET_DIR), format="JPEG", quality=_JPEG_QUALITY)
        bar.update(stop - start)


def render_example_grid(image_size: int = 96, per_finding: int = 4, seed: int = 0, frontal: bool = True) -> np.ndarray:
    """A uint8 grid for eyeballing: row 0 without findings, then one row per finding (that finding alone)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(-1, len(FINDINGS)):
        findings = np.zeros((per_finding, len(FINDINGS)), dtype=bool)
        if i >= 0:
            findings[:, i] = True
        rows.append(np.concatenate(list(_render(rng, findings, np.full(per_finding, frontal), image_size)), axis=1))
    return np.concatenate(rows, axis=0)


# --------------------------------------------------------------------------------------------- entry


def _check_int(name: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise UserInputError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise UserInputError(f"{name} must be between {low} and {high}, got {value}")
    return int(value)


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[list[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)


def synthesize(
    out: Path,
    *,
    patients: int = 800,
    valid_patients: int = 200,
    image_size: int = 96,
    seed: int = 0,
    stats: dict | None = None,
    progress: bool = True,
    overwrite: bool = False,
    images: bool = True,
) -> dict:
    """Write a synthetic CheXpert-v1.0-small under `out` (the dataset root); return a summary.

    The dataset is built in a hidden directory next to the target and renamed into place at the end.
    An existing `out/CheXpert-v1.0-small` is refused unless `overwrite`. `images=False` writes the CSVs only.
    """
    started = time.perf_counter()
    patients = _check_int("patients", patients, 1, _MAX_PATIENTS)
    valid_patients = _check_int("valid_patients", valid_patients, 1, _MAX_PATIENTS)
    if patients + valid_patients > _MAX_PATIENTS:
        raise UserInputError(f"patients + valid_patients must be at most {_MAX_PATIENTS}")
    image_size = _check_int("image_size", image_size, 16, 1024)
    seed = _check_int("seed", seed, 0, 2**63 - 1)
    if stats is None:
        stats = load_stats()
    elif not isinstance(stats, dict):
        raise UserInputError(f"stats must be a dict of label statistics, got {type(stats).__name__}")
    model = _model(stats)

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"{out} exists and is not a directory")
    target = out / DATASET_DIR
    if (target.exists() or target.is_symlink()) and not overwrite:
        raise UserInputError(f"{target} already exists; remove it or pass overwrite=True")
    out.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    train = _draw_split(rng, model, "train", patients, 1)
    valid = _draw_split(rng, model, "valid", valid_patients, patients + 1)

    tmp = out / f".{DATASET_DIR}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        _write_csv(tmp / "train.csv", model.columns, train.rows)
        _write_csv(tmp / "valid.csv", model.columns, valid.rows)
        if images:
            from tqdm import tqdm

            total = len(train.paths) + len(valid.paths)
            with tqdm(total=total, unit="img", desc="synthesizing", disable=not progress) as bar:
                _write_images(tmp, train, seed, 1, image_size, bar)
                _write_images(tmp, valid, seed, 2, image_size, bar)
        old = None
        if target.exists() or target.is_symlink():
            old = out / f".{DATASET_DIR}.old-{os.getpid()}-{secrets.token_hex(4)}"
            target.rename(old)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)

    summary = {
        "root": str(out),
        "train_csv": str(target / "train.csv"),
        "valid_csv": str(target / "valid.csv"),
        "train_rows": len(train.rows),
        "valid_rows": len(valid.rows),
        "patients": patients,
        "valid_patients": valid_patients,
        "image_size": image_size,
        "seed": seed,
        "seconds": round(time.perf_counter() - started, 3),
    }
    log.info(
        "synthesized %d train + %d valid rows (%d + %d patients, %dpx, seed %d) under %s in %.1fs",
        summary["train_rows"], summary["valid_rows"], patients, valid_patients, image_size, seed, target,
        summary["seconds"],
    )  # fmt: skip
    return SynthSummary(**summary)


from chexops.core.results import Result  # noqa: E402


class SynthSummary(Result):
    """What `synthesize` wrote: the dataset root, its two CSVs and their rows, the settings, the seconds it took."""

    root: str
    train_csv: str
    valid_csv: str
    train_rows: int
    valid_rows: int
    patients: int
    valid_patients: int
    image_size: int
    seed: int
    seconds: float
