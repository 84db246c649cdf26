"""Drawing synthetic radiographs: the anatomy of a view, then one visual trace per latent finding.

A batch of images is drawn at once: per-image parameters are (n,) arrays broadcast over the pixel grid
(`_c`). The order of the random draws is part of the output: one seed, the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from chexops.data.synth.labels import FINDINGS

_LATERAL_TRACE = 0.5  # lateral views show traces at half strength
_F = {name: i for i, name in enumerate(FINDINGS)}


# --------------------------------------------------------------------------------------------- shapes


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


def _jitter(rng: np.random.Generator, n: int) -> np.ndarray:
    """A per-image size factor within 5%."""
    return rng.uniform(0.95, 1.05, n)


# --------------------------------------------------------------------------------------------- anatomy


@dataclass
class Scene:
    """A batch's anatomy as the traces need it. Lungs are column 0 and 1 of the (n, 2) arrays: frontal views
    show image left = patient right, lateral views anterior then posterior."""

    rng: np.random.Generator
    frontal: np.ndarray  # (n,) bool
    x: np.ndarray  # (n, 1, W) pixel columns, shifted and scaled per image
    y: np.ndarray  # (n, H, 1) pixel rows
    lcx: np.ndarray  # (n, 2) lung centres and half-axes
    lcy: np.ndarray
    lax: np.ndarray
    lay: np.ndarray
    medial: np.ndarray  # (n, 2) the sign towards the midline; 0 on lateral views
    hcx: np.ndarray  # (n,) the heart's centre and half-axes
    hcy: np.ndarray
    hax: np.ndarray
    hay: np.ndarray
    med_w: np.ndarray  # (n,) the mediastinum's half-width; negative (none) on lateral views
    atelectasis_side: np.ndarray | None = None  # (n,) set by _collapse_lung
    lungs: list[np.ndarray] | None = None  # the visible part of each lung, (n, H, W); set by _draw_anatomy
    ribs: np.ndarray | None = None  # the rib shadows over the visible lungs; set by _draw_anatomy

    def lung(self, idx: np.ndarray, side: np.ndarray):
        """Per image of `idx`: the visible mask and geometry of lung `side[i]`."""
        mask = np.where(_c(side) == 0, self.lungs[0][idx], self.lungs[1][idx])
        k = side
        return mask, self.lcx[idx, k], self.lcy[idx, k], self.lax[idx, k], self.lay[idx, k], self.medial[idx, k]


def _scene(rng: np.random.Generator, frontal: np.ndarray, size: int) -> Scene:
    """The pixel grid (shifted and scaled per image) and the geometry of lungs, heart and mediastinum."""
    n = len(frontal)
    u = rng.uniform
    g = ((np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1).astype(np.float32)
    scale = u(0.92, 1.08, n)
    x = (g[None, None, :] - _c(u(-0.06, 0.06, n))) / _c(scale)  # (n, 1, W)
    y = (g[None, :, None] - _c(u(-0.06, 0.06, n))) / _c(scale)  # (n, H, 1)
    lcx = np.stack([np.where(frontal, -0.37, -0.18), np.where(frontal, 0.38, 0.2)], 1)
    lcy = np.stack([np.where(frontal, -0.08, -0.05), np.where(frontal, -0.06, 0.0)], 1) + u(-0.03, 0.03, (n, 1))
    lax = np.stack([np.where(frontal, 0.26, 0.33), np.where(frontal, 0.25, 0.33)], 1) * _jitter(rng, n)[:, None]
    lay = np.stack([np.where(frontal, 0.6, 0.52), np.where(frontal, 0.58, 0.6)], 1) * _jitter(rng, n)[:, None]
    hcx = np.where(frontal, 0.1, -0.22) + u(-0.02, 0.02, n)
    hcy = np.where(frontal, 0.26, 0.32) + u(-0.03, 0.03, n)
    hax = np.where(frontal, 0.27, 0.24) * _jitter(rng, n)
    hay = np.where(frontal, 0.21, 0.21) * _jitter(rng, n)
    med_w = np.where(frontal, 0.1, -1.0) * _jitter(rng, n)
    medial = np.array([1.0, -1.0])[None, :] * np.where(frontal, 1.0, 0.0)[:, None]
    return Scene(rng, frontal, x, y, lcx, lcy, lax, lay, medial, hcx, hcy, hax, hay, med_w)


def _enlarge_heart(s: Scene, a: np.ndarray) -> None:
    """Cardiomegaly: a wider, taller heart, shifted to the patient's left on frontal views."""
    s.hax, s.hay, s.hcx = s.hax * (1 + 0.5 * a), s.hay * (1 + 0.2 * a), s.hcx + 0.06 * a * s.frontal


def _collapse_lung(s: Scene, a: np.ndarray) -> None:
    """Atelectasis: one lung (drawn for every image) loses volume, its base rises and its apex stays."""
    s.atelectasis_side = s.rng.integers(0, 2, len(s.frontal))
    shrink = np.where(np.arange(2)[None, :] == s.atelectasis_side[:, None], 0.14 * a[:, None], 0.0)
    s.lcy, s.lay = s.lcy - shrink * s.lay, s.lay * (1 - shrink)


def _body(s: Scene) -> tuple[np.ndarray, np.ndarray]:
    """The image of torso and neck on the background, and the body mask."""
    n, u = len(s.frontal), s.rng.uniform
    body = np.maximum(
        _torso(s.x, s.y, np.where(s.frontal, 0.95, 0.8) * _jitter(s.rng, n), np.full(n, 1.2),
               np.where(s.frontal, 3.0, 2.4)),
        _ellipse(s.x, s.y, np.zeros(n), np.full(n, -1.0), np.full(n, 0.24), np.full(n, 0.4)),
    )  # fmt: skip
    bg, body_level = _c(u(0.03, 0.1, n)), _c(u(0.5, 0.6, n))
    return bg + (body_level - bg) * body, body


def _mediastinum(s: Scene, ecm: np.ndarray) -> np.ndarray:
    """The mediastinum above the heart, widened at the top by Enlarged Cardiomediastinum (`ecm`)."""
    bump = np.exp(-(((s.y + 0.4) / 0.3) ** 2))
    width = _c(s.med_w) * (1 + 1.4 * _c(ecm) * bump)
    return np.clip((width - np.abs(s.x)) / 0.04 + 0.5, 0, 1) * np.clip((0.4 - s.y) / 0.1, 0, 1)


def _ribs(s: Scene, visible: np.ndarray) -> np.ndarray:
    """Rib shadows: a curved stripe pattern over the visible lungs."""
    phase = _c(s.rng.uniform(0, 2 * np.pi, len(s.frontal)))
    return 0.05 * (0.5 + 0.5 * np.sin(2 * np.pi * 4.5 * (s.y + 0.25 * s.x * s.x) + phase)) * visible


def _spine(s: Scene, body: np.ndarray) -> np.ndarray:
    """The spine: central on frontal views, posterior on lateral ones."""
    return np.clip(1 - np.abs(s.x - _c(np.where(s.frontal, 0.0, 0.62))) / 0.09, 0, 1) * body


def _add_clavicles(s: Scene, img: np.ndarray) -> None:
    """Two clavicles, on frontal views only."""
    f = np.flatnonzero(s.frontal)
    if len(f):
        k = len(f)
        for side in (-1.0, 1.0):
            clavicle = _segment(s.x[f], s.y[f], np.full(k, 0.1 * side), np.full(k, -0.66),
                                np.full(k, 0.62 * side), np.full(k, -0.76), np.full(k, 0.035))  # fmt: skip
            img[f] += 0.1 * clavicle


def _draw_anatomy(s: Scene, ecm: np.ndarray) -> np.ndarray:
    """Torso, lungs (darker), heart and mediastinum (covering the lungs), ribs, spine, clavicles."""
    img, body = _body(s)
    heart = _ellipse(s.x, s.y, s.hcx, s.hcy, s.hax, s.hay, 0.12)
    med = _mediastinum(s, ecm)
    cover = (1 - heart) * (1 - med)
    s.lungs = [_lung(s.x, s.y, s.lcx[:, k], s.lcy[:, k], s.lax[:, k], s.lay[:, k]) * cover for k in range(2)]
    visible = np.maximum(s.lungs[0], s.lungs[1])
    s.ribs = _ribs(s, visible)
    img = img - _c(s.rng.uniform(0.28, 0.36, len(s.frontal))) * visible + s.ribs + 0.08 * heart + 0.08 * med
    img = img + 0.06 * _spine(s, body) * (1 - visible)
    _add_clavicles(s, img)
    return img


# --------------------------------------------------------------------------------------------- findings
# Each trace: (scene, idx of the images with the finding, its amplitude a (len(idx),), their x, y) -> pixels to add.


def _effusion(s: Scene, idx, a, xs, ys):
    """Pleural Effusion: fluid filling one or both lung bases, its meniscus rising laterally."""
    both = s.rng.random(len(idx)) < 0.5
    side = s.rng.integers(0, 2, len(idx))
    out = 0.0
    for k in range(2):
        on = (both | (side == k)).astype(np.float32)
        cx, cy, ax, ay = s.lcx[idx, k], s.lcy[idx, k], s.lax[idx, k], s.lay[idx, k]
        level = _c(cy + ay * (1.0 - 0.8 * a))  # a = 0.5: blunted angle; a = 1: a fifth of the lung
        lateral = np.clip(-(xs - _c(cx)) / _c(ax) * _c(s.medial[idx, k]), 0, 1)
        fluid = np.clip((ys - (level - 0.3 * _c(ay) * lateral)) / 0.05 + 0.5, 0, 1)
        out = np.maximum(out, _c(on) * fluid * s.lungs[k][idx])
    return 0.28 * out


def _edema(s: Scene, idx, a, xs, ys):
    """Edema: a perihilar haze in both lungs."""
    out = 0.0
    for k in range(2):
        cx, cy, ax, ay = s.lcx[idx, k], s.lcy[idx, k], s.lax[idx, k], s.lay[idx, k]
        hx = np.where(s.frontal[idx], cx + 0.5 * ax * s.medial[idx, k], cx)
        haze = np.exp(-(((xs - _c(hx)) / _c(0.55 * ax)) ** 2) - ((ys - _c(cy + 0.1 * ay)) / _c(0.5 * ay)) ** 2)
        out = out + haze * s.lungs[k][idx]
    return 0.22 * _c(a) * np.minimum(out, 1.0)


def _consolidation(s: Scene, idx, a, xs, ys):
    """Consolidation: a dense patch in the lower part of one lung."""
    u = s.rng.uniform
    mask, cx, cy, ax, ay, _ = s.lung(idx, s.rng.integers(0, 2, len(idx)))
    px, py = _in_lung(s.rng, len(idx), cx, cy, ax, ay, 0.55, -0.2, 1.0)
    patch = _ellipse(xs, ys, px, py, u(0.13, 0.2, len(idx)), u(0.11, 0.17, len(idx)), 0.25)
    return 0.32 * _c(a) * patch * mask


def _opacity(s: Scene, idx, a, xs, ys):
    """Lung Opacity: a soft Gaussian shadow anywhere in one lung."""
    mask, cx, cy, ax, ay, _ = s.lung(idx, s.rng.integers(0, 2, len(idx)))
    px, py = _in_lung(s.rng, len(idx), cx, cy, ax, ay, 0.6)
    sigma = _c(s.rng.uniform(0.14, 0.22, len(idx)))
    return 0.2 * _c(a) * np.exp(-((xs - _c(px)) ** 2 + (ys - _c(py)) ** 2) / (2 * sigma**2)) * mask


def _pneumonia(s: Scene, idx, a, xs, ys):
    """Pneumonia: a mottled, textured region in one lung."""
    rng = s.rng
    mask, cx, cy, ax, ay, _ = s.lung(idx, rng.integers(0, 2, len(idx)))
    px, py = _in_lung(rng, len(idx), cx, cy, ax, ay, 0.5, -0.3, 1.0)
    region = np.exp(-((xs - _c(px)) ** 2 + (ys - _c(py)) ** 2) / (2 * 0.2**2))
    texture = 0.0
    for _ in range(3):
        theta, k = rng.uniform(0, np.pi, len(idx)), rng.uniform(22, 34, len(idx))
        phase = rng.uniform(0, 2 * np.pi, len(idx))
        texture = texture + np.cos(_c(k * np.cos(theta)) * xs + _c(k * np.sin(theta)) * ys + _c(phase))
    return 0.4 * _c(a) * region * np.clip(texture / 2, 0, 1) * mask


def _atelectasis(s: Scene, idx, a, xs, ys):
    """Atelectasis: a dense band low in the lung that lost volume (_collapse_lung)."""
    u = s.rng.uniform
    mask, cx, cy, ax, ay, _ = s.lung(idx, s.atelectasis_side[idx])
    bx = cx + u(-0.25, 0.25, len(idx)) * ax
    by = cy + u(0.25, 0.5, len(idx)) * ay
    half, angle = 0.45 * ax, u(-0.3, 0.3, len(idx))
    dx, dy = half * np.cos(angle), half * np.sin(angle)
    band = _segment(xs, ys, bx - dx, by - dy, bx + dx, by + dy, np.full(len(idx), 0.045))
    return 0.35 * _c(a) * band * mask


def _pneumothorax(s: Scene, idx, a, xs, ys):
    """Pneumothorax: air without rib markings around a collapsed lung, whose edge shows as a line."""
    mask, cx, cy, ax, ay, med_sign = s.lung(idx, s.rng.integers(0, 2, len(idx)))
    f = 1 - 0.35 * a  # the collapsed lung, pulled towards the hilum and the base
    cxs, cys = cx + med_sign * (1 - f) * ax, cy + (1 - f) * ay
    d = np.sqrt(((xs - _c(cxs)) / _c(f * ax)) ** 2 + ((ys - _c(cys)) / _c(f * ay)) ** 2)
    air = np.clip((d - 1) / 0.08 + 0.5, 0, 1) * mask
    line = np.clip(1 - np.abs(d - 1) / 0.05, 0, 1) * mask
    return -(0.12 * _c(a) * air + s.ribs[idx] * air) + 0.1 * _c(a) * line


def _lesion(s: Scene, idx, a, xs, ys):
    """Lung Lesion: a small round nodule in one lung."""
    mask, cx, cy, ax, ay, _ = s.lung(idx, s.rng.integers(0, 2, len(idx)))
    px, py = _in_lung(s.rng, len(idx), cx, cy, ax, ay, 0.7)
    r = s.rng.uniform(0.045, 0.07, len(idx))
    return 0.32 * _c(a) * _ellipse(xs, ys, px, py, r, r, 0.3) * mask


def _pleural_other(s: Scene, idx, a, xs, ys):
    """Pleural Other: a thickened pleura along the lateral edge of one lung."""
    mask, cx, cy, ax, ay, med_sign = s.lung(idx, s.rng.integers(0, 2, len(idx)))
    inner = _ellipse(xs, ys, cx + med_sign * 0.1 * a * ax, cy, ax * (1 - 0.2 * a), ay * 0.97, 0.1)
    lateral = np.clip(-(xs - _c(cx)) / _c(ax) * _c(np.where(med_sign == 0, -1.0, med_sign)) * 2, 0, 1)
    return 0.3 * _c(a) * mask * (1 - inner) * lateral


def _fracture(s: Scene, idx, a, xs, ys):
    """Fracture: a bright short line at the edge of the ribcage."""
    u = s.rng.uniform
    sign = np.where(s.rng.random(len(idx)) < 0.5, -1.0, 1.0)
    x0 = sign * u(0.6, 0.72, len(idx))
    y0 = u(-0.55, 0.35, len(idx))
    angle, half = u(0.2, 0.6, len(idx)), u(0.06, 0.09, len(idx))
    x1, y1 = x0 + sign * half * np.cos(angle) * 2, y0 + half * np.sin(angle) * 2
    return 0.5 * _c(a) * _segment(xs, ys, x0, y0, x1, y1, np.full(len(idx), 0.03))


def _devices(s: Scene, idx, a, xs, ys):
    """Support Devices: a bright tube from the top of the image, bending down the chest."""
    u = s.rng.uniform
    k = len(idx)
    top, end = np.full(k, -1.2), u(-0.1, 0.5, k)
    x0, bend = u(-0.06, 0.06, k), u(-0.15, 0.15, k)
    centre = _c(x0) + _c(bend) * (ys - _c(top)) ** 2 / 2
    tube = np.clip(1 - np.abs(xs - centre) / 0.025, 0, 1) * np.clip((_c(end) - ys) / 0.03, 0, 1)
    return 0.6 * _c(a) * tube


# Drawn in this order (the random draws follow it). Cardiomegaly, Enlarged Cardiomediastinum and
# Atelectasis also change the anatomy itself (_enlarge_heart, _mediastinum, _collapse_lung).
TRACES = (
    ("Pleural Effusion", _effusion),
    ("Edema", _edema),
    ("Consolidation", _consolidation),
    ("Lung Opacity", _opacity),
    ("Pneumonia", _pneumonia),
    ("Atelectasis", _atelectasis),
    ("Pneumothorax", _pneumothorax),
    ("Lung Lesion", _lesion),
    ("Pleural Other", _pleural_other),
    ("Fracture", _fracture),
    ("Support Devices", _devices),
)


def _expose(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Contrast, brightness and noise per image, then 8 bits."""
    n, u = len(img), rng.uniform
    pivot = np.float32(0.35)
    img = (img - pivot) * _c(u(0.85, 1.15, n)) + pivot + _c(u(-0.05, 0.05, n))
    img += _c(u(0.012, 0.03, n)) * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)


def render(rng: np.random.Generator, findings: np.ndarray, frontal: np.ndarray, size: int) -> np.ndarray:
    """Render images (n, size, size) uint8 for latent `findings` (n, F) and view flags `frontal` (n,)."""
    amp = rng.uniform(0.5, 1.0, (len(frontal), len(FINDINGS))) * np.where(frontal, 1.0, _LATERAL_TRACE)[:, None]
    amp = np.where(findings, amp, 0.0)
    scene = _scene(rng, frontal, size)
    _enlarge_heart(scene, amp[:, _F["Cardiomegaly"]])
    _collapse_lung(scene, amp[:, _F["Atelectasis"]])
    img = _draw_anatomy(scene, amp[:, _F["Enlarged Cardiomediastinum"]])
    for name, trace in TRACES:
        idx = np.flatnonzero(amp[:, _F[name]] > 0)
        if len(idx):
            img[idx] += trace(scene, idx, amp[idx, _F[name]], scene.x[idx], scene.y[idx])
    return _expose(rng, img)


def render_example_grid(image_size: int = 96, per_finding: int = 4, seed: int = 0, frontal: bool = True) -> np.ndarray:
    """A uint8 grid for eyeballing: row 0 without findings, then one row per finding (that finding alone)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(-1, len(FINDINGS)):
        findings = np.zeros((per_finding, len(FINDINGS)), dtype=bool)
        if i >= 0:
            findings[:, i] = True
        rows.append(np.concatenate(list(render(rng, findings, np.full(per_finding, frontal), image_size)), axis=1))
    return np.concatenate(rows, axis=0)
