"""A patient's chest: normal anatomy, a follow-up's pose, and the distances the drawing uses.

Each patient's anatomy comes from an RNG seeded by ``(seed, patient id)``, so every follow-up of a
patient shares it; a follow-up changes only position, rotation, scale and inspiration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from .plan import PATIENT_STREAM


@dataclass(frozen=True)
class Anatomy:
    """A patient's chest in normalized coordinates (x right, y down, both in [-1, 1]).

    Per-side tuples are indexed 0 = image left (the patient's right), 1 = image right.
    """

    body_w: float  # half-width of the torso's soft tissue
    neck_w: float
    shoulder_y: float
    x_lat: tuple[float, float]  # lateral lung border
    x_med: float  # medial lung border (mediastinum half-width)
    apex: tuple[float, float]  # lung apex height
    dome_top: tuple[float, float]  # top of each hemidiaphragm
    dome_h: tuple[float, float]  # dome top to costophrenic angle
    mid_shift: float  # mediastinal shift (atelectasis pulls it to the collapsed side)
    ctr: float  # cardiothoracic ratio
    heart_h: float  # heart half-height
    heart_tilt: float
    rib_y0: float
    rib_d: float  # rib spacing
    rib_k: float  # rib arch curvature
    clav_y: float
    air: float  # lung air contrast
    markings: float  # vessel marking strength
    vessel_m: tuple[int, ...] = field(default=(11, 15, 19, 23, 9))
    vessel_b: tuple[float, ...] = field(default=(0.0,) * 5)
    vessel_p: tuple[float, ...] = field(default=(0.0,) * 5)
    breasts: float = 0.0
    gastric: float = 0.0
    rotation: float = 0.0  # radians
    shift: tuple[float, float] = (0.0, 0.0)
    scale: float = 1.0

    @property
    def thorax_w(self) -> float:
        return 0.5 * (self.x_lat[0] + self.x_lat[1])


def patient_anatomy(seed: int, patient_id: int) -> Anatomy:
    """Normal anatomy of one patient, varied within a plausible range."""
    r = np.random.default_rng([seed, PATIENT_STREAM, patient_id, 1])
    u = r.uniform
    x_lat = u(0.74, 0.84)
    dome = u(0.26, 0.40)
    apex = u(-0.80, -0.70)
    return Anatomy(
        body_w=x_lat + u(0.10, 0.22),
        neck_w=u(0.20, 0.27),
        shoulder_y=u(-0.98, -0.86),
        x_lat=(x_lat + u(-0.02, 0.02), x_lat + u(-0.02, 0.02)),
        x_med=u(0.1, 0.14),
        apex=(apex + u(-0.02, 0.02), apex + u(-0.02, 0.02)),
        dome_top=(dome, dome + u(0.02, 0.08)),  # the left hemidiaphragm sits lower
        dome_h=(u(0.12, 0.18), u(0.12, 0.18)),
        mid_shift=0.0,
        ctr=u(0.38, 0.47),
        heart_h=u(0.2, 0.24),
        heart_tilt=u(0.25, 0.45),
        rib_y0=apex - u(0.02, 0.06),
        rib_d=u(0.115, 0.135),
        rib_k=u(0.45, 0.7),
        clav_y=u(-0.66, -0.58),
        air=u(0.45, 0.6),
        markings=u(0.16, 0.24),
        vessel_m=tuple(int(m) for m in r.integers(7, 26, size=5)),
        vessel_b=tuple(float(b) for b in r.uniform(-7, 7, size=5)),
        vessel_p=tuple(float(p) for p in r.uniform(0, 2 * np.pi, size=5)),
        breasts=0.0,
        gastric=u(0.0, 0.35) if r.random() < 0.7 else 0.0,
    )


def breast_density(seed: int, patient_id: int) -> float:
    """A female patient's breast shadows: from the patient's stream, so follow-ups share them."""
    return float(np.random.default_rng([seed, PATIENT_STREAM, patient_id, 2]).uniform(0.06, 0.14))


def follow_up_pose(a: Anatomy, rng: np.random.Generator) -> Anatomy:
    """A follow-up's pose and inspiration: small changes around the patient's anatomy."""
    inspiration = rng.uniform(-0.03, 0.03)
    return replace(
        a,
        rotation=rng.uniform(-0.06, 0.06),
        shift=(rng.uniform(-0.05, 0.05), rng.uniform(-0.04, 0.04)),
        scale=rng.uniform(0.95, 1.04),
        dome_top=(a.dome_top[0] + inspiration, a.dome_top[1] + inspiration),
    )


def lung_margin(x: np.ndarray, y: np.ndarray, a: Anatomy, side: int,
                heart: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Approximate signed distance into one lung (positive inside) and into its outer wall.

    Returns ``(margin, wall)``: ``wall`` is the distance to the apical/lateral pleura only, which
    the pneumothorax rim follows. ``heart`` is the heart's margin when the caller has it.
    """
    s = -1.0 if side == 0 else 1.0
    xs = s * x
    x_med = a.x_med + s * a.mid_shift
    x_lat = a.x_lat[side]
    cp_y = a.dome_top[side] + a.dome_h[side]
    xc = x_med + 0.55 * (x_lat - x_med)
    ax, ay = x_lat - xc, cp_y - a.apex[side]
    dx, dy = (xs - xc) / ax, (y - cp_y) / ay
    f = dx * dx + dy * dy
    grad = 2.0 * np.sqrt((dx / ax) ** 2 + (dy / ay) ** 2) + 1e-3
    wall = (1.0 - f) / grad
    x_dc = x_med + 0.45 * (x_lat - x_med)
    t = (xs - x_dc) / (x_lat - x_dc)
    dome = a.dome_top[side] + a.dome_h[side] * t * t
    slope = 2.0 * a.dome_h[side] * t / (x_lat - x_dc)
    m_dome = (dome - y) / np.sqrt(1.0 + slope * slope)
    margin = np.minimum(np.minimum(wall, m_dome), xs - x_med)
    if heart is None:
        heart = heart_margin(x, y, a)
    return np.minimum(margin, -heart), wall


def heart_geometry(a: Anatomy) -> tuple[float, float, float, float]:
    """The heart's ellipse: centre ``(x, y)``, half-width, half-height (from the CTR)."""
    width = 2.0 * a.ctr * a.thorax_w
    half_w = 0.5 * width
    xh = a.mid_shift + width * (0.5 - 0.33)  # a third right of the midline, two thirds left
    yh = 0.5 * (a.dome_top[0] + a.dome_top[1]) - 0.3 * a.heart_h
    return xh, yh, half_w, a.heart_h


def heart_margin(x: np.ndarray, y: np.ndarray, a: Anatomy) -> np.ndarray:
    """Approximate signed distance into the heart (positive inside): lungs end where it starts."""
    xh, yh, hw, hh = heart_geometry(a)
    c, s = math.cos(a.heart_tilt), math.sin(a.heart_tilt)
    dx, dy = x - xh, y - yh
    px, py = (c * dx + s * dy) / hw, (-s * dx + c * dy) / hh
    f = px * px + py * py
    return (1.0 - f) * 0.5 * min(hw, hh)
