"""Draw a study's findings into one image's density map, returning each finding's pixel mask.

Every drawing is confined to the anatomy it belongs to (lung findings to the lung field of their
side, cardiomegaly to the heart above the diaphragm), and its mask is the region it changed.
"""

from __future__ import annotations

import numpy as np

from data_prep.phantom.anatomy import Anatomy, FrontalAnatomy, polyline_distance, smooth_noise, soft
from data_prep.phantom.case import Finding

DRAW_ORDER = ("cardiomegaly", "effusion", "consolidation", "atelectasis", "lesion", "edema", "pneumothorax", "device")
EFFUSION_HEIGHT = {"small": 0.12, "moderate": 0.26, "large": 0.45}
PNEUMOTHORAX_DEPTH = {"small": (0.05, 0.3), "large": (0.15, 0.7)}  # (rim depth, fraction of lung height)
EDEMA = {"mild": (0.38, 0.10), "moderate": (0.5, 0.17)}  # (radius, density added)
MM_TO_BODY = 0.004  # nodules are drawn a little larger than life so they survive downsampling


def _sides(side: str | None) -> tuple[str, ...]:
    """The single sides a finding covers."""
    return ("left", "right") if side in ("bilateral", None) else (side,)


def _pick_point(rng: np.random.Generator, candidates: np.ndarray, anatomy: Anatomy) -> tuple[float, float]:
    """A random grid point (body coordinates) among the True pixels of ``candidates``."""
    flat = np.flatnonzero(candidates)
    if flat.size == 0:
        raise RuntimeError(f"no room to place a finding in the {anatomy.view} image")
    i = int(flat[int(rng.integers(flat.size))])
    r, c = divmod(i, anatomy.grid.cols)
    return float(anatomy.grid.x[r, c]), float(anatomy.grid.y[r, c])


def _inner(anatomy: Anatomy, side: str, margin: float, zone: str | None = None) -> np.ndarray:
    """Pixels at least ``margin`` inside a lung field (optionally within a zone band); relaxed if empty."""
    for m in (margin, margin / 2, 0.0):
        region = anatomy.lung_f(side) < -m
        if zone is not None:
            region &= anatomy.zone_band(side, zone)
        if region.any():
            return region
    return anatomy.lung_mask(side)


def draw_cardiomegaly(rng: np.random.Generator, a: np.ndarray, anatomy: Anatomy, f: Finding) -> np.ndarray:
    """The heart is already enlarged by the anatomy; the mask is its silhouette above the diaphragm."""
    above = anatomy.grid.y < np.maximum(anatomy.dome_y("left"), anatomy.dome_y("right"))
    if isinstance(anatomy, FrontalAnatomy):
        above = anatomy.grid.y < np.where(anatomy.grid.x > 0, anatomy.dome_y("left"), anatomy.dome_y("right"))
    return anatomy.heart_mask() & above


def draw_effusion(rng: np.random.Generator, a: np.ndarray, anatomy: Anatomy, f: Finding) -> np.ndarray:
    """A dense layer in the lung base with a meniscus rising towards the chest wall."""
    mask = np.zeros(a.shape, dtype=bool)
    e = 2.0 * anatomy.grid.px
    for side in _sides(f.side):
        top, bottom = anatomy.lung_extent(side)
        level = bottom + 0.12 - EFFUSION_HEIGHT[f.severity or "small"] * (bottom - top) * rng.uniform(0.9, 1.1)
        surface = level - 0.12 * anatomy.lateral_sign(side)
        lung = soft(anatomy.lung_f(side), 2 * e)
        fluid = soft(surface - anatomy.grid.y, 3 * e) * lung
        a += (0.58 - a) * fluid
        mask |= (fluid > 0.5) & anatomy.lung_mask(side)
    return mask


def draw_consolidation(rng: np.random.Generator, a: np.ndarray, anatomy: Anatomy, f: Finding) -> np.ndarray:
    """An irregular dense blob made of a few overlapping Gaussians in one zone of one lung."""
    side = _sides(f.side)[0]
    cx, cy = _pick_point(rng, _inner(anatomy, side, 0.1, f.zone), anatomy)
    g = anatomy.grid
    field = np.zeros(a.shape, dtype=np.float32)
    for _ in range(int(rng.integers(3, 6))):
        ox, oy = rng.normal(0, 0.05, size=2)
        r = rng.uniform(0.05, 0.09)
        field += np.exp(-((g.x - cx - ox) ** 2 + (g.y - cy - oy) ** 2) / (2 * r * r))
    field *= 1.0 + 0.25 * smooth_noise(rng, a.shape, 6)
    lung = anatomy.lung_mask(side)
    strength = 0.30 if f.status == "present" else 0.22
    a += strength * np.clip(field, 0, 1.2) * lung
    return (field > 0.45) & lung


def draw_atelectasis(rng: np.random.Generator, a: np.ndarray, anatomy: Anatomy, f: Finding) -> np.ndarray:
    """A thin, slightly tilted dense band just above the dome of each involved lung."""
    mask = np.zeros(a.shape, dtype=bool)
    g = anatomy.grid
    for side in _sides(f.side):
        lateral = anatomy.lateral_sign(side)
        lung = anatomy.lung_mask(side)
        tilt, half = rng.uniform(-0.06, 0.06), rng.uniform(0.012, 0.02)
        # Start just above the dome; climb if a big heart or a rotation leaves no lung there.
        for lift in np.linspace(rng.uniform(0.08, 0.14), 0.6, 12):
            centre = anatomy.dome_y(side) - lift + tilt * lateral
            band = soft(np.abs(g.y - centre) - half, 2 * g.px) * ((lateral > 0.15) & (lateral < 0.85)) * lung
            if (band > 0.5).any():
                break
        a += 0.22 * band
        mask |= band > 0.5
    return mask


def draw_lesion(rng: np.random.Generator, a: np.ndarray, anatomy: Anatomy, f: Finding) -> np.ndarray:
    """A small round dense nodule in one zone of one lung."""
    side = _sides(f.side)[0]
    radius = max((f.size_mm or 10) * MM_TO_BODY, 2.5 * anatomy.grid.px)
    cx, cy = _pick_point(rng, _inner(anatomy, side, radius + 0.03, f.zone), anatomy)
    g = anatomy.grid
    disc = soft(np.hypot(g.x - cx, g.y - cy) - radius, 2 * g.px) * anatomy.lung_mask(side)
    a += 0.32 * disc
    return disc > 0.5


def draw_edema(rng: np.random.Generator, a: np.ndarray, anatomy: Anatomy, f: Finding) -> np.ndarray:
    """Hazy density spreading from both hila, fading towards the periphery."""
    radius, amount = EDEMA[f.severity or "mild"]
    g = anatomy.grid
    mask = np.zeros(a.shape, dtype=bool)
    texture = 1.0 + 0.3 * smooth_noise(rng, a.shape, 8)
    for side in _sides(None):
        hx, hy = anatomy.hilum(side)
        haze = np.exp(-(((g.x - hx) / radius) ** 2 + ((g.y - hy) / (1.3 * radius)) ** 2))
        lung = anatomy.lung_mask(side)
        a += amount * haze * texture * lung
        mask |= (haze > 0.35) & lung
    return mask


def draw_pneumothorax(rng: np.random.Generator, a: np.ndarray, anatomy: Anatomy, f: Finding) -> np.ndarray:
    """A lucent rim without lung markings at the apex, bounded by a thin bright pleural line."""
    side = _sides(f.side)[0]
    depth, fraction = PNEUMOTHORAX_DEPTH[f.severity or "small"]
    top, bottom = anatomy.lung_extent(side)
    cut = top + fraction * (bottom - top)
    g = anatomy.grid
    rim = depth * np.clip((cut - g.y) / (cut - top), 0.0, 1.0) ** 0.5
    lung_f = anatomy.lung_f(side)
    lung = lung_f < 0
    region = lung & (lung_f > -rim) & (g.y < cut)
    a[region] = 0.06 + 0.01 * rng.random()
    line = soft(np.abs(lung_f + rim) - 0.6 * g.px, 1.5 * g.px) * lung * (g.y < cut) * (rim > 2 * g.px)
    a += 0.18 * line
    return region


def draw_device(rng: np.random.Generator, a: np.ndarray, anatomy: Anatomy, f: Finding) -> np.ndarray:
    """A thin very dense tube along the airway (ET tube) or a venous course (line)."""
    g = anatomy.grid
    if f.device == "ET tube":
        path = anatomy.airway()
        end_x, end_y = path[-1]
        path = [*path[:-1], (end_x, end_y - rng.uniform(0.06, 0.16))]
    else:
        path = anatomy.line_path(f.side or "right", picc="PICC" in f.phrase)
    width = max(0.008, 1.2 * g.px)
    tube = soft(polyline_distance(g.x, g.y, path) - width, 1.5 * g.px)
    a += (0.95 - a) * tube
    return tube > 0.5


DRAWERS = {
    "cardiomegaly": draw_cardiomegaly,
    "effusion": draw_effusion,
    "consolidation": draw_consolidation,
    "atelectasis": draw_atelectasis,
    "lesion": draw_lesion,
    "edema": draw_edema,
    "pneumothorax": draw_pneumothorax,
    "device": draw_device,
}


def draw_findings(
    rng: np.random.Generator, anatomy: Anatomy, findings: tuple[Finding, ...]
) -> tuple[np.ndarray, list[tuple[Finding, np.ndarray]]]:
    """Density map with every finding drawn, and (finding, mask) pairs in the case's order."""
    a = anatomy.density.copy()
    masks: dict[int, np.ndarray] = {}
    for kind in DRAW_ORDER:
        for i, finding in enumerate(findings):
            if finding.kind == kind:
                masks[i] = DRAWERS[kind](rng, a, anatomy, finding)
    pairs = []
    for i, finding in enumerate(findings):
        mask = masks[i]
        if not mask.any():
            raise RuntimeError(f"finding {finding.kind} ({finding.phrase!r}) drew nothing in the {anatomy.view} image")
        pairs.append((finding, mask))
    return a, pairs
