"""The healthy chest of one phantom image: view geometry, lung and heart masks, and a density map.

Shapes are signed implicit functions on a body coordinate grid (negative inside, in body units,
about 1 = half the shorter image side), so masks and soft edges come from the same numbers and a
rotation or shift of the grid moves every shape and mask together. ``X`` grows to the image's
right, which is the patient's left in PA/AP; ``Y`` grows downwards. In the lateral view anterior is
on the image's left and both lungs project onto one lung field.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

SIDE_SIGN = {"left": 1.0, "right": -1.0}  # patient side -> sign of X in a frontal view
NORMAL_CTR = {"PA": (0.40, 0.47), "AP": (0.42, 0.48)}
CARDIOMEGALY_CTR = {"mild": (0.54, 0.58), "moderate": (0.60, 0.64), "severe": (0.66, 0.71)}

AIR, SOFT_TISSUE, LUNG, MEDIASTINUM, HEART, ABDOMEN = 0.03, 0.50, 0.17, 0.60, 0.61, 0.60


def soft(f: np.ndarray, edge: float) -> np.ndarray:
    """Occupancy in [0, 1] of the region ``f < 0`` with a linear ramp ``edge`` wide (body units)."""
    return np.clip(0.5 - f / edge, 0.0, 1.0).astype(np.float32)


def ellipse_f(x: np.ndarray, y: np.ndarray, cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
    """Approximate signed distance to an axis-aligned ellipse (negative inside)."""
    return (np.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2) - 1.0) * min(ax, ay)


def segment_distance(x: np.ndarray, y: np.ndarray, p: tuple[float, float], q: tuple[float, float]) -> np.ndarray:
    """Distance from every grid point to the segment p-q."""
    dx, dy = q[0] - p[0], q[1] - p[1]
    t = np.clip(((x - p[0]) * dx + (y - p[1]) * dy) / max(dx * dx + dy * dy, 1e-12), 0.0, 1.0)
    return np.hypot(x - p[0] - t * dx, y - p[1] - t * dy)


def polyline_distance(x: np.ndarray, y: np.ndarray, points: list[tuple[float, float]]) -> np.ndarray:
    """Distance from every grid point to a polyline."""
    return np.minimum.reduce([segment_distance(x, y, a, b) for a, b in zip(points[:-1], points[1:])])


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: int) -> np.ndarray:
    """Unit-variance-ish smooth noise: a coarse Gaussian grid (one value per ``cell`` px) upsampled bicubically."""
    coarse = rng.standard_normal((shape[0] // cell + 3, shape[1] // cell + 3)).astype(np.float32)
    big = Image.fromarray(coarse, mode="F").resize(
        (coarse.shape[1] * cell, coarse.shape[0] * cell), Image.Resampling.BICUBIC
    )
    return np.asarray(big, dtype=np.float32)[cell : cell + shape[0], cell : cell + shape[1]]


@dataclass
class Grid:
    """Pixel grid of one image mapped to body coordinates (with the image's rotation and shift)."""

    rows: int
    cols: int
    x: np.ndarray
    y: np.ndarray
    px: float  # one pixel in body units


def make_grid(rng: np.random.Generator, rows: int, cols: int, y_center: float) -> Grid:
    """A grid whose body frame is rotated by a few degrees, shifted a little and scaled to the image."""
    scale = min(rows, cols) / 2.0 * rng.uniform(0.93, 1.03)
    angle = np.deg2rad(rng.uniform(-4.0, 4.0))
    shift_x, shift_y = rng.uniform(-0.05, 0.05, size=2)
    u = ((np.arange(cols, dtype=np.float32) + 0.5 - cols / 2) / scale)[None, :]
    v = ((np.arange(rows, dtype=np.float32) + 0.5 - rows / 2) / scale)[:, None]
    cos, sin = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    x = cos * u + sin * v - np.float32(shift_x)
    y = -sin * u + cos * v - np.float32(shift_y) + np.float32(y_center)
    return Grid(rows, cols, x.astype(np.float32), y.astype(np.float32), 1.0 / scale)


class Anatomy:
    """Geometry of one view: lung fields, heart, airway and device landmarks, and the healthy density map."""

    view: str
    grid: Grid
    heart_f: np.ndarray

    def lung_f(self, side: str) -> np.ndarray:
        """Signed implicit function of one lung field (the whole field in a lateral view)."""
        raise NotImplementedError

    def dome_y(self, side: str) -> np.ndarray:
        """The diaphragm height under ``side`` at every grid column position."""
        raise NotImplementedError

    def lung_extent(self, side: str) -> tuple[float, float]:
        """Apex and base heights (Y) of a lung field."""
        raise NotImplementedError

    def hilum(self, side: str) -> tuple[float, float]:
        """The hilum of a lung (body coordinates)."""
        raise NotImplementedError

    def airway(self) -> list[tuple[float, float]]:
        """The trachea's centre line from above the image down to the carina."""
        raise NotImplementedError

    def line_path(self, side: str, picc: bool) -> list[tuple[float, float]]:
        """Course of a central line entering on ``side`` (jugular or arm vein) down to the SVC."""
        raise NotImplementedError

    def lateral_sign(self, side: str) -> np.ndarray:
        """How lateral (0 medial .. 1 at the chest wall) each grid point is within ``side``'s lung."""
        raise NotImplementedError

    def lung_mask(self, side: str) -> np.ndarray:
        """Boolean lung field of ``side`` ("bilateral" = both)."""
        if side == "bilateral":
            return self.lung_mask("left") | self.lung_mask("right")
        return self.lung_f(side) < 0

    def heart_mask(self) -> np.ndarray:
        """Boolean heart silhouette."""
        return self.heart_f < 0

    def zone_band(self, side: str, zone: str) -> np.ndarray:
        """Boolean band of rows (as Y) covering the upper, mid or lower third of a lung's height."""
        top, bottom = self.lung_extent(side)
        third = (bottom - top) / 3.0
        k = {"upper": 0, "mid": 1, "lower": 2}[zone]
        return (self.grid.y >= top + k * third) & (self.grid.y < top + (k + 1) * third)


class FrontalAnatomy(Anatomy):
    """PA or AP chest: two lungs, heart to the image's right, mediastinum, domes, ribs, clavicles."""

    def __init__(self, rng: np.random.Generator, rows: int, cols: int, view: str, ctr: float) -> None:
        self.view, self.ctr = view, ctr
        self.grid = g = make_grid(rng, rows, cols, y_center=-0.05)
        self.half_width = rng.uniform(0.76, 0.84)
        ap = 0.06 if view == "AP" else 0.0
        self.dome_top = {"right": rng.uniform(0.30, 0.38) - ap}
        self.dome_top["left"] = self.dome_top["right"] + rng.uniform(0.02, 0.07)
        self.apex = -0.86 + rng.uniform(-0.03, 0.03)
        ah = ctr * self.half_width
        bh = 0.30 + 0.15 * (ctr - 0.45)
        dome_mean = 0.5 * (self.dome_top["left"] + self.dome_top["right"])
        self.heart_f = ellipse_f(g.x, g.y, 0.4 * ah, dome_mean - 0.14, ah, bh)
        self.mediastinum_f = np.abs(g.x - 0.02) - (0.10 + 0.03 * (g.y + 0.9))
        self.density = self._render_density(rng)

    def dome_y(self, side: str) -> np.ndarray:
        """Dome of one hemidiaphragm, lowest at the costophrenic angle."""
        offset = (SIDE_SIGN[side] * self.grid.x - 0.45 * self.half_width) / (0.5 * self.half_width)
        # Steep towards the sharp costophrenic angle, shallow towards the cardiophrenic angle.
        return self.dome_top[side] + np.where(offset > 0, 0.32, 0.10) * offset**2

    def lung_f(self, side: str) -> np.ndarray:
        """Lung ellipse above its dome, outside the mediastinum and the heart."""
        g, s, w = self.grid, SIDE_SIGN[side], self.half_width
        yc = 0.5 * (self.apex + 0.75)
        f = ellipse_f(g.x, g.y, s * 0.55 * w, yc, 0.45 * w, 0.75 - yc)
        f = np.maximum(f, g.y - self.dome_y(side))
        f = np.maximum(f, -self.mediastinum_f)
        f = np.maximum(f, -self.heart_f)
        return np.maximum(f, -s * g.x)

    def lung_extent(self, side: str) -> tuple[float, float]:
        """Apex to the top of the dome."""
        return self.apex, float(self.dome_top[side]) + 0.1

    def hilum(self, side: str) -> tuple[float, float]:
        """Hilum beside the mediastinum."""
        return SIDE_SIGN[side] * 0.24, -0.12

    def lateral_sign(self, side: str) -> np.ndarray:
        """0 at the mediastinum, 1 at the chest wall."""
        return np.clip((SIDE_SIGN[side] * self.grid.x - 0.1) / (self.half_width - 0.1), 0.0, 1.0)

    def airway(self) -> list[tuple[float, float]]:
        """Trachea in the midline down to the carina."""
        return [(0.0, -1.6), (-0.01, -0.8), (-0.01, -0.30)]

    def line_path(self, side: str, picc: bool) -> list[tuple[float, float]]:
        """Jugular or arm entry on ``side`` to the SVC, which lies right of midline (image left)."""
        s = SIDE_SIGN[side]
        svc = [(-0.07, -0.45), (-0.07, -0.22)]
        if picc:
            return [(s * (self.half_width + 0.3), -0.70), (s * 0.45, -0.68), (s * 0.15, -0.58), *svc]
        return [(s * 0.2, -1.6), (s * 0.16, -0.85), (s * 0.08, -0.6), *svc]

    def _render_density(self, rng: np.random.Generator) -> np.ndarray:
        """The healthy density map (bright = dense), before findings and noise."""
        g, e = self.grid, 1.5 * self.grid.px
        x, y = g.x, g.y
        width = self.half_width + 0.12 - 0.45 / (1.0 + np.exp((y + 0.98) / 0.04))
        body = soft(np.abs(x) - width, 4 * e)
        a = AIR + (SOFT_TISSUE - AIR) * body
        below = np.where(x > 0, y - self.dome_y("left"), y - self.dome_y("right"))
        a = a + (ABDOMEN - SOFT_TISSUE) * soft(-below, 3 * e) * body
        texture = 0.7 * smooth_noise(rng, (g.rows, g.cols), 12) + 0.3 * smooth_noise(rng, (g.rows, g.cols), 4)
        for side in ("left", "right"):
            occ = soft(self.lung_f(side), 3 * e)
            hx, hy = self.hilum(side)
            vessels = np.exp(-np.hypot(x - hx, y - hy) / 0.35) * np.clip(0.07 + 0.05 * texture, 0, None)
            a = a + (LUNG + vessels - a) * occ
        a = a + (MEDIASTINUM - a) * soft(self.mediastinum_f, 3 * e) * (y < 0.5)
        a = a + (HEART - a) * soft(self.heart_f, 3 * e)
        a = a - 0.12 * soft(polyline_distance(x, y, self.airway()) - 0.03, 2 * e)
        for s in (-1.0, 1.0):
            bronchus = segment_distance(x, y, (-0.01, -0.30), (s * 0.2, -0.14))
            a = a - 0.06 * soft(bronchus - 0.018, 2 * e)
            clavicle = segment_distance(x, y, (s * 0.1, -0.82), (s * 0.72, -0.97))
            a = a + 0.12 * soft(clavicle - 0.028, 2 * e) * body
        a = a + 0.035 * soft(np.abs(x) - 0.075, 2 * e) * body  # spine
        t = np.abs(x) / self.half_width
        phase = (y - (0.25 * t * t - 0.12 * t) + 0.9) / 0.155
        rib = soft(np.abs(phase - np.round(phase)) * 0.155 - 0.02, 5 * e)
        rib_zone = (np.round(phase) >= 0) & (np.round(phase) < 9) & (np.abs(x) > 0.06)
        a = a + 0.035 * rib * rib_zone * soft(np.abs(x) - self.half_width - 0.04, 3 * e)
        if rng.random() < 0.6:  # gastric bubble under the left dome
            bubble = ellipse_f(x, y, 0.45 * self.half_width, self.dome_top["left"] + 0.12, 0.13, 0.06)
            a = a - 0.25 * soft(bubble, 4 * e) * soft(-below, 3 * e)
        return a.astype(np.float32)


class LateralAnatomy(Anatomy):
    """Lateral chest: one lung field, heart anterior (image left), spine posterior, sternum."""

    def __init__(self, rng: np.random.Generator, rows: int, cols: int, view: str, ctr: float) -> None:
        self.view, self.ctr = view, ctr
        self.grid = g = make_grid(rng, rows, cols, y_center=-0.05)
        self.depth = rng.uniform(0.62, 0.72)
        self.dome_low = rng.uniform(0.34, 0.42)
        self.apex = -0.84 + rng.uniform(-0.03, 0.03)
        ah = 0.28 * ctr / 0.45
        self.heart_f = ellipse_f(g.x, g.y, -0.24 + 0.3 * (ah - 0.28), self.dome_low + 0.02, ah, 0.3)
        self.density = self._render_density(rng)

    def dome_y(self, side: str) -> np.ndarray:
        """One dome for both sides, deepest posteriorly."""
        return self.dome_low + 0.22 * ((self.grid.x + 0.25) / 0.7) ** 2

    def lung_f(self, side: str) -> np.ndarray:
        """The single projected lung field."""
        g = self.grid
        yc = 0.5 * (self.apex + 0.8)
        f = ellipse_f(g.x, g.y, 0.03, yc, 0.85 * self.depth, 0.8 - yc)
        f = np.maximum(f, g.y - self.dome_y(side))
        f = np.maximum(f, -self.heart_f)
        return np.maximum(f, g.x - 0.45)

    def lung_mask(self, side: str) -> np.ndarray:
        """Both sides project onto the same field."""
        return self.lung_f(side) < 0

    def lung_extent(self, side: str) -> tuple[float, float]:
        """Apex to the top of the dome."""
        return self.apex, self.dome_low + 0.1

    def hilum(self, side: str) -> tuple[float, float]:
        """Hilum in the middle of the field."""
        return 0.05, -0.08

    def lateral_sign(self, side: str) -> np.ndarray:
        """Posterior-ness: fluid layers in the posterior sulcus first."""
        return np.clip((self.grid.x + 0.5) / 0.95, 0.0, 1.0)

    def airway(self) -> list[tuple[float, float]]:
        """Trachea sloping backwards to the carina."""
        return [(-0.12, -1.6), (-0.06, -0.8), (0.02, -0.30)]

    def line_path(self, side: str, picc: bool) -> list[tuple[float, float]]:
        """A line descending in front of the trachea to the SVC."""
        start = (0.05, -1.6) if not picc else (0.35, -0.9)
        return [start, (-0.05, -0.7), (-0.12, -0.45), (-0.14, -0.22)]

    def _render_density(self, rng: np.random.Generator) -> np.ndarray:
        """The healthy lateral density map."""
        g, e = self.grid, 1.5 * self.grid.px
        x, y = g.x, g.y
        body = soft(np.abs(x) - self.depth - 0.1, 4 * e)
        a = AIR + (SOFT_TISSUE - AIR) * body
        a = a + (ABDOMEN - SOFT_TISSUE) * soft(self.dome_y("left") - y, 3 * e) * body
        texture = 0.7 * smooth_noise(rng, (g.rows, g.cols), 12) + 0.3 * smooth_noise(rng, (g.rows, g.cols), 4)
        occ = soft(self.lung_f("left"), 3 * e)
        hx, hy = self.hilum("left")
        vessels = np.exp(-np.hypot(x - hx, y - hy) / 0.3) * (0.08 + 0.03 * texture)
        a = a + (LUNG + 0.04 + vessels - a) * occ
        a = a + (0.5 - a) * soft(self.heart_f, 6 * e)
        a = a - 0.12 * soft(polyline_distance(x, y, self.airway()) - 0.04, 2 * e)
        vertebra = 0.5 + 0.5 * np.cos(2 * np.pi * (y / 0.14))
        spine = soft(np.abs(x - 0.56) - 0.08, 2 * e)
        a = a + (0.06 + 0.05 * (vertebra > 0.15)) * spine * body
        a = a + 0.10 * soft(np.abs(x + 0.62 + 0.05 * y) - 0.025, 2 * e) * (y > -0.7) * (y < 0.4)
        phase = (y - 0.35 * x + 0.9) / 0.16
        rib = soft(np.abs(phase - np.round(phase)) * 0.16 - 0.015, 3 * e)
        a = a + 0.04 * rib * (np.round(phase) >= 0) * (np.round(phase) < 9) * occ
        return a.astype(np.float32)


def build_anatomy(rng: np.random.Generator, view: str, rows: int, cols: int, cardiomegaly: str | None) -> Anatomy:
    """The healthy chest of one image; ``cardiomegaly`` (a severity or None) sets the heart size."""
    if cardiomegaly is None:
        ctr = rng.uniform(*NORMAL_CTR["AP" if view == "AP" else "PA"])
    else:
        ctr = rng.uniform(*CARDIOMEGALY_CTR[cardiomegaly])
    if view in ("PA", "AP"):
        return FrontalAnatomy(rng, rows, cols, view, ctr)
    if view in ("LATERAL", "LL"):
        return LateralAnatomy(rng, rows, cols, view, ctr)
    raise ValueError(f"unknown view {view!r}; expected PA, AP, LATERAL or LL")
