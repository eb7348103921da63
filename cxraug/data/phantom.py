"""Procedural chest radiograph phantoms in NIH ChestX-ray14 format (``cxraug demo-data``).

Anyone without the 45 GB NIH download can still try every command: this module draws a
deterministic data set of synthetic PA chest radiographs (body outline, lungs with vessel markings,
heart and mediastinum, ribs, clavicles, diaphragm domes, spine) with one visible, class-specific
sign per finding, and writes it exactly as NIH ships its data: ``images/PPPPPPPP_FFF.png`` plus a
``Data_Entry_2017.csv`` with NIH's header quirk.

Design choices, and why:

* **Deterministic and worker-independent.** The data-set plan (labels, patients, follow-ups) comes
  from one RNG seeded by ``(seed, n)``; each patient's anatomy from ``(seed, patient id)``; each
  image's pose, sign and exposure from ``(seed, image index)``. An image therefore never depends on
  which process drew it, and the same ``(n, size, seed)`` gives byte-identical files (with the
  same numpy and Pillow versions).
* **Resolution-independent.** Geometry lives in normalized coordinates and every random field is
  drawn on a fixed coarse grid, so ``--size 64`` and ``--size 256`` show the same patients.
* **Not separable by brightness.** Every image is rescaled to a random target mean and contrast
  (as a radiograph's automatic exposure processing does), so a classifier on global mean and
  standard deviation is at chance while the signs themselves stay visible.
* **Patients.** Each patient has 1-4 follow-ups sharing anatomy with small changes in position,
  inspiration and exposure, so a patient-level split is meaningful.

Only numpy and Pillow are used; all drawing is vectorized over the pixel grid.
"""

from __future__ import annotations

import io
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from ..errors import CxrError
from ..io_utils import exit_with_parent
from .nih import (
    FINDING_LABELS,
    FOLLOW_UP,
    HEIGHT,
    IMAGE_INDEX,
    NO_FINDING,
    PATIENT_AGE,
    PATIENT_GENDER,
    PATIENT_ID,
    SPACING_X,
    SPACING_Y,
    VIEW_POSITION,
    WIDTH,
    image_name,
    write_nih_csv,
)

#: Relative frequency of each single-label class, ordered like NIH's single-label counts
#: (Infiltration > Atelectasis > Effusion > Nodule > Mass > Pneumothorax), so ``--top-k 6`` picks
#: the paper's six; Cardiomegaly is the rarer extra class.
CLASS_WEIGHTS: dict[str, float] = {
    NO_FINDING: 30.5,
    "Infiltration": 13.0,
    "Atelectasis": 10.5,
    "Effusion": 10.0,
    "Nodule": 9.5,
    "Mass": 9.0,
    "Pneumothorax": 8.5,
    "Cardiomegaly": 5.0,
}

#: Every class a phantom can show.
PHANTOM_CLASSES: tuple[str, ...] = tuple(CLASS_WEIGHTS)
PHANTOM_PATHOLOGIES: tuple[str, ...] = tuple(c for c in PHANTOM_CLASSES if c != NO_FINDING)

#: Pixel spacing (mm) of NIH's 1024-pixel PNGs; a phantom of side ``size`` covers the same field.
NIH_SPACING_MM = 0.143
CSV_NAME = "Data_Entry_2017.csv"
README_NAME = "README.txt"
README_MARKER = "cxraug phantom data set"

_FOLLOW_UP_P = (0.45, 0.27, 0.17, 0.11)  # share of patients with 1, 2, 3, 4 images
_PLAN, _PATIENT, _IMAGE = 0, 1, 2  # RNG domains, so the three streams never collide
_MIN_SIZE, _MAX_SIZE = 32, 2048
_MAX_N = 1_000_000


# ----------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class ImageSpec:
    """One image of the plan: who it shows and which findings it carries."""

    index: int
    patient_id: int
    follow_up: int
    labels: tuple[str, ...]  # () for No Finding, else sorted pathology names
    age: int
    gender: str
    view: str

    @property
    def name(self) -> str:
        return image_name(self.patient_id, self.follow_up)

    @property
    def finding_labels(self) -> str:
        """NIH's ``Finding Labels`` text: names joined by ``|`` in alphabetical order."""
        return "|".join(self.labels) if self.labels else NO_FINDING


def _quotas(total: int, weights: dict[str, float]) -> dict[str, int]:
    """Largest-remainder apportionment: exact counts, so small sets still hold every class."""
    wsum = sum(weights.values())
    raw = {k: total * w / wsum for k, w in weights.items()}
    counts = {k: int(math.floor(v)) for k, v in raw.items()}
    left = total - sum(counts.values())
    order = sorted(weights, key=lambda k: (-(raw[k] - counts[k]), list(weights).index(k)))
    for k in order[:left]:
        counts[k] += 1
    return counts


def plan_dataset(n: int, seed: int = 0, multi_label_fraction: float = 0.1) -> list[ImageSpec]:
    """Labels, patients and metadata of every image, in file order (patient, then follow-up)."""
    _check_options(n, 64, seed, multi_label_fraction)
    rng = np.random.default_rng([seed, _PLAN, n])
    n_multi = int(round(n * multi_label_fraction))
    singles = _quotas(n - n_multi, CLASS_WEIGHTS)
    labels: list[tuple[str, ...]] = []
    for name, count in singles.items():
        labels += [() if name == NO_FINDING else (name,)] * count
    path_w = np.array([CLASS_WEIGHTS[p] for p in PHANTOM_PATHOLOGIES])
    for _ in range(n_multi):
        pair = rng.choice(len(PHANTOM_PATHOLOGIES), size=2, replace=False, p=path_w / path_w.sum())
        labels.append(tuple(sorted(PHANTOM_PATHOLOGIES[int(j)] for j in pair)))
    order = rng.permutation(len(labels))

    specs: list[ImageSpec] = []
    patient = 0
    while len(specs) < n:
        patient += 1
        follow_ups = int(rng.choice(len(_FOLLOW_UP_P), p=_FOLLOW_UP_P)) + 1
        prng = np.random.default_rng([seed, _PATIENT, patient, 0])
        age0 = int(prng.integers(18, 86))
        gender = "M" if prng.random() < 0.56 else "F"
        for f in range(follow_ups):
            if len(specs) == n:
                break
            i = len(specs)
            view = "PA" if rng.random() < 0.6 else "AP"
            age = min(age0 + int(rng.integers(0, 2)) * (f > 0) + f // 2, 95)
            specs.append(ImageSpec(i, patient, f, labels[order[i]], age, gender, view))
    return specs


# ---------------------------------------------------------------------------------- anatomy
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
    r = np.random.default_rng([seed, _PATIENT, patient_id, 1])
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


# --------------------------------------------------------------------------- geometry helpers
def _sigmoid(z: np.ndarray) -> np.ndarray:
    """A logistic-like step (smoothstep over ``|z| < 3``): no transcendental, so it is cheap."""
    t = z * (1.0 / 6.0) + 0.5
    np.minimum(np.maximum(t, 0.0, out=t), 1.0, out=t)
    return t * t * (3.0 - 2.0 * t)


def _lung_margin(x: np.ndarray, y: np.ndarray, a: Anatomy, side: int,
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
        heart = _heart_margin(x, y, a)
    return np.minimum(margin, -heart), wall


def _heart_geometry(a: Anatomy) -> tuple[float, float, float, float]:
    width = 2.0 * a.ctr * a.thorax_w
    half_w = 0.5 * width
    xh = a.mid_shift + width * (0.5 - 0.33)  # a third right of the midline, two thirds left
    yh = 0.5 * (a.dome_top[0] + a.dome_top[1]) - 0.3 * a.heart_h
    return xh, yh, half_w, a.heart_h


def _heart_margin(x: np.ndarray, y: np.ndarray, a: Anatomy) -> np.ndarray:
    xh, yh, hw, hh = _heart_geometry(a)
    c, s = math.cos(a.heart_tilt), math.sin(a.heart_tilt)
    dx, dy = x - xh, y - yh
    px, py = (c * dx + s * dy) / hw, (-s * dx + c * dy) / hh
    f = px * px + py * py
    return (1.0 - f) * 0.5 * min(hw, hh)


def _band(dist: np.ndarray, half: float) -> np.ndarray:
    """Flat-topped band profile: 1 inside ``|dist| < half``, smooth shoulders."""
    q = dist / half
    return np.exp(-(q * q) ** 2)


@lru_cache(maxsize=16)
def _interp_matrix(size: int, grid: int) -> np.ndarray:
    """Gaussian interpolation weights from a ``grid`` of control points to ``size`` pixels."""
    px = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    centers = np.linspace(-1.15, 1.15, grid)
    width = (centers[1] - centers[0]) * 0.75
    w = np.exp(-0.5 * ((px[:, None] - centers[None, :]) / width) ** 2)
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def _smooth_field(rng: np.random.Generator, size: int, grid: int) -> np.ndarray:
    """A smooth random field with zero mean and unit variance (coarse noise, upsampled)."""
    coarse = rng.standard_normal((grid, grid), dtype=np.float32)
    m = _interp_matrix(size, grid)
    f = m @ coarse @ m.T
    return (f - f.mean()) / (f.std() + 1e-9)


@lru_cache(maxsize=8)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = ((np.arange(size) + 0.5) / size * 2.0 - 1.0).astype(np.float32)
    return np.meshgrid(c, c)  # u (x, right), v (y, down); float32 halves the drawing time


# ------------------------------------------------------------------------------------ signs
@dataclass
class _Scene:
    """Fields a finding can change before the image is composed."""

    opacity: list[np.ndarray]  # per side, fraction of lung air replaced by fluid or tissue
    no_markings: list[np.ndarray]  # per side, where vessel markings vanish (pneumothorax)
    extra: np.ndarray  # added attenuation (pleural line, dense nodules)


def _point_in_lung(rng: np.random.Generator, a: Anatomy, side: int, clearance: float,
                   y_range: tuple[float, float] = (0.1, 0.9)) -> tuple[float, float]:
    """A random point at least ``clearance`` inside one lung (rejection sampling, vectorized)."""
    s = -1.0 if side == 0 else 1.0
    x_med = a.x_med + s * a.mid_shift
    xs = rng.uniform(x_med, a.x_lat[side], size=64)
    y0, y1 = a.apex[side], a.dome_top[side] + a.dome_h[side]
    ys = rng.uniform(y0 + y_range[0] * (y1 - y0), y0 + y_range[1] * (y1 - y0), size=64)
    margin, _ = _lung_margin(s * xs, ys, a, side)
    ok = np.flatnonzero(margin > clearance)
    j = int(ok[0]) if ok.size else int(np.argmax(margin))
    return float(s * xs[j]), float(ys[j])


def _round_opacity(x: np.ndarray, y: np.ndarray, cx: float, cy: float, r: float,
                   rng: np.random.Generator, edge: float, lobulation: float) -> np.ndarray:
    """A sphere's projected thickness (0..1), lobulated, with a soft edge of width ``edge``."""
    dx, dy = x - cx, y - cy
    d = np.sqrt(dx * dx + dy * dy)
    theta = np.arctan2(dy, dx)
    ph = rng.uniform(0, 2 * np.pi, size=2)
    wobble = 0.6 * np.sin(3 * theta + ph[0]) + 0.4 * np.sin(5 * theta + ph[1])
    rr = r * (1.0 + lobulation * wobble)
    inside = np.clip(1.0 - (d / rr) ** 2, 0.0, 1.0)
    return np.sqrt(inside) * 0.7 + 0.3 * _sigmoid((rr - d) / edge)


def _pre_anatomy(labels: tuple[str, ...], a: Anatomy, rng: np.random.Generator,
                 ) -> tuple[Anatomy, dict]:
    """Findings that change the anatomy itself: cardiomegaly and atelectatic volume loss."""
    info: dict = {}
    if "Cardiomegaly" in labels:
        a = replace(a, ctr=rng.uniform(0.56, 0.66), heart_h=a.heart_h * rng.uniform(1.03, 1.1))
    if "Atelectasis" in labels:
        side = int(rng.integers(0, 2))
        s = -1.0 if side == 0 else 1.0
        dome = list(a.dome_top)
        dome[side] -= rng.uniform(0.04, 0.09)  # elevated hemidiaphragm
        x_lat = list(a.x_lat)
        x_lat[side] -= rng.uniform(0.01, 0.04)
        a = replace(a, dome_top=(dome[0], dome[1]), x_lat=(x_lat[0], x_lat[1]),
                    mid_shift=a.mid_shift + s * rng.uniform(0.015, 0.04))
        info["atelectasis_side"] = side
    return a, info


def _apply_signs(labels: tuple[str, ...], a: Anatomy, info: dict, x: np.ndarray, y: np.ndarray,
                 rng: np.random.Generator, margins: list[np.ndarray], walls: list[np.ndarray],
                 eps: float, size: int) -> _Scene:
    """Draw each finding's sign into the scene; location, size and density vary per image."""
    zeros = np.zeros_like(x)
    scene = _Scene([zeros.copy(), zeros.copy()], [zeros.copy(), zeros.copy()], zeros.copy())
    lung_w = [a.x_lat[k] - a.x_med for k in (0, 1)]

    for label in labels:
        if label == "Effusion":
            sides = (0, 1) if rng.random() < 0.15 else (int(rng.integers(0, 2)),)
            for side in sides:
                s = -1.0 if side == 0 else 1.0
                x_med = a.x_med + s * a.mid_shift
                cp_y = a.dome_top[side] + a.dome_h[side]
                height = rng.uniform(0.14, 0.36)
                t = np.clip((s * x - x_med) / (a.x_lat[side] - x_med), 0.0, 1.2)
                # meniscus: the fluid climbs the lateral wall and hides the dome
                level = cp_y - 0.5 * a.dome_h[side] - height * (0.35 + 0.65 * t * t)
                fluid = _sigmoid((y - level) / max(eps, 0.012))
                scene.opacity[side] = np.maximum(scene.opacity[side],
                                                 fluid * rng.uniform(0.85, 1.0))
        elif label == "Atelectasis":
            side = info.get("atelectasis_side", int(rng.integers(0, 2)))
            s = -1.0 if side == 0 else 1.0
            if rng.random() < 0.5:  # plate-like (discoid) atelectasis in the lower zone
                for _ in range(int(rng.integers(1, 3))):
                    cy = a.dome_top[side] - rng.uniform(0.04, 0.22)
                    cx = s * (a.x_med + rng.uniform(0.35, 0.6) * lung_w[side])
                    ang = rng.uniform(-0.25, 0.25)
                    half_len = rng.uniform(0.12, 0.22)
                    half_th = rng.uniform(0.018, 0.032)
                    c, sn = math.cos(ang), math.sin(ang)
                    along = c * (x - cx) + sn * (y - cy)
                    across = -sn * (x - cx) + c * (y - cy)
                    plate = _band(across, half_th) * _band(along, half_len)
                    scene.opacity[side] = np.maximum(scene.opacity[side],
                                                      plate * rng.uniform(0.8, 1.0))
            else:  # lobar collapse: a dense wedge fanning out from the hilum
                hx, hy = s * 0.22 + a.mid_shift, -0.1
                centre = rng.choice([-1.25, -0.55, 1.35]) + rng.uniform(-0.2, 0.2)
                half_ang = rng.uniform(0.25, 0.42)
                ang_map = np.arctan2(y - hy, s * (x - hx))
                r = np.hypot(x - hx, y - hy)
                dang = np.angle(np.exp(1j * (ang_map - centre)))
                wedge = _sigmoid((half_ang - np.abs(dang)) / 0.06) * _sigmoid((r - 0.03) / 0.03)
                scene.opacity[side] = np.maximum(scene.opacity[side],
                                                  wedge * rng.uniform(0.75, 0.95))
        elif label == "Infiltration":
            patches = _smooth_field(rng, size, 14)
            fine = _smooth_field(rng, size, 28)
            thr = rng.uniform(0.0, 0.5)
            patchy = _sigmoid((patches + 0.5 * fine - thr) / 0.25)
            sides = (0, 1) if rng.random() < 0.4 else (int(rng.integers(0, 2)),)
            for side in sides:
                cx, cy = _point_in_lung(rng, a, side, 0.05)
                env = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * rng.uniform(0.22, 0.34) ** 2))
                scene.opacity[side] = np.maximum(
                    scene.opacity[side], patchy * env * rng.uniform(0.7, 0.95))
        elif label in ("Mass", "Nodule"):
            side = int(rng.integers(0, 2))
            if label == "Mass":
                radius = rng.uniform(0.12, 0.18) * lung_w[side]
                dens, lob, edge = rng.uniform(0.8, 1.0), rng.uniform(0.03, 0.12), max(eps, 0.012)
            else:
                radius = rng.uniform(0.045, 0.07) * lung_w[side]
                dens, lob, edge = rng.uniform(0.85, 1.0), 0.02, max(eps * 0.7, 0.005)
            cx, cy = _point_in_lung(rng, a, side, radius + 0.02)
            blob = _round_opacity(x, y, cx, cy, radius, rng, edge, lob)
            scene.opacity[side] = np.maximum(scene.opacity[side], blob * dens)
            if label == "Nodule":  # small nodules are often calcified: denser than soft tissue
                scene.extra += blob * rng.uniform(0.15, 0.35) * a.air
        elif label == "Pneumothorax":
            side = int(rng.integers(0, 2))
            cp_y = a.dome_top[side] + a.dome_h[side]
            depth = rng.uniform(0.1, 0.2)
            frac = np.clip((y - a.apex[side]) / (cp_y - a.apex[side]), 0.0, 1.0)
            rim = depth * (1.0 - frac) ** rng.uniform(0.6, 1.2)  # air rises: widest at the apex
            wall = walls[side]
            inside = _sigmoid(margins[side] / eps)
            ptx = inside * _sigmoid((rim - wall) / eps)
            scene.no_markings[side] = np.maximum(scene.no_markings[side], ptx)
            line_w = max(eps * 0.8, 0.006)
            line = np.exp(-(((wall - rim) / line_w) ** 2)) * inside * _sigmoid((rim - 0.01) / eps)
            scene.extra += line * rng.uniform(0.25, 0.4) * a.air
    return scene


# ---------------------------------------------------------------------------------- drawing
def _jitter(a: Anatomy, rng: np.random.Generator) -> Anatomy:
    """A follow-up's pose and inspiration: small changes around the patient's anatomy."""
    inspiration = rng.uniform(-0.03, 0.03)
    return replace(
        a,
        rotation=rng.uniform(-0.06, 0.06),
        shift=(rng.uniform(-0.05, 0.05), rng.uniform(-0.04, 0.04)),
        scale=rng.uniform(0.95, 1.04),
        dome_top=(a.dome_top[0] + inspiration, a.dome_top[1] + inspiration),
    )


def render_image(spec: ImageSpec, size: int, seed: int = 0) -> np.ndarray:
    """Draw one phantom as uint8 ``[size, size]``; depends only on ``(spec, size, seed)``."""
    rng = np.random.default_rng([seed, _IMAGE, spec.index])
    a = patient_anatomy(seed, spec.patient_id)
    if spec.gender == "F":
        a = replace(a, breasts=float(np.random.default_rng([seed, _PATIENT, spec.patient_id, 2])
                                     .uniform(0.06, 0.14)))
    a = _jitter(a, rng)
    a, info = _pre_anatomy(spec.labels, a, rng)

    u, v = _pixel_grid(size)
    c, s = math.cos(a.rotation), math.sin(a.rotation)
    du, dv = (u - a.shift[0]) / a.scale, (v - a.shift[1]) / a.scale
    x, y = c * du + s * dv, -s * du + c * dv  # anatomical coordinates
    eps = max(1.2 * 2.0 / size, 0.006)  # edge softness: about a pixel, never sharper

    # body: neck, rounded shoulders, torso thicker in the middle
    sh = _sigmoid((y - a.shoulder_y) / 0.06)
    half = a.neck_w + (a.body_w + 0.25 - a.neck_w) * sh
    body = _sigmoid((half - np.abs(x)) / (2 * eps))
    thick = np.sqrt(np.clip(1.0 - (x / (a.body_w + 0.3)) ** 2, 0.0, 1.0))
    att = body * (0.45 + 0.55 * thick)

    heart_m = _heart_margin(x, y, a)
    margins, walls = [], []
    for side in (0, 1):
        margin, wall = _lung_margin(x, y, a, side, heart_m)
        margins.append(margin)
        walls.append(wall)
    scene = _apply_signs(spec.labels, a, info, x, y, rng, margins, walls, eps, size)

    # lungs: air with slow density variation and vessel markings fanning out from each hilum;
    # both lungs in one pass (each pixel uses the hilum of its own side)
    air_var = 0.9 + 0.1 * _smooth_field(rng, size, 6)
    right = x > a.mid_shift
    sgn = np.where(right, np.float32(1.0), np.float32(-1.0))
    hx, hy = sgn * 0.2 + a.mid_shift, -0.12
    dxh, dyh = x - hx, y - hy
    r = np.sqrt(dxh * dxh + dyh * dyh)
    theta = np.arctan2(dyh, sgn * dxh)
    # vessels: lines of constant warped angle (they fan out and never cross); a coarse and a fine
    # family, both thinning with distance from the hilum
    m, b, p = a.vessel_m, a.vessel_b, a.vessel_p
    warp = 0.25 * np.sin(b[0] * r + p[0]) + 0.15 * np.sin(2 * theta + b[1] * r + p[1])
    inv_thin = (r + 0.12) * 20.0
    coarse = np.sin(0.5 * (m[0] + 6) * (theta + warp) + p[2]) * inv_thin * (1 / 1.2)
    fine = np.sin((m[1] + 14) * (theta + 0.6 * warp) + p[3]) * inv_thin * (1 / 1.8)
    fine_w = 0.6 * min(1.0, (size / 192) ** 2)  # sub-pixel vessels would only alias into speckle
    vessels = np.exp(-coarse * coarse) + fine_w * np.exp(-fine * fine) * _sigmoid((r - 0.15) / 0.05)
    vessels *= np.exp(-r / 0.55) * _sigmoid((r - 0.04) / 0.02)
    vessels = a.markings * vessels + 0.12 * np.exp(-((dxh / 0.07) ** 2 + (dyh / 0.11) ** 2))
    for side in (0, 1):
        lung = _sigmoid(margins[side] / eps)
        clear = lung * (1.0 - scene.opacity[side])
        ptx = scene.no_markings[side]
        att -= (a.air * clear) * air_var * (1.0 + 0.6 * ptx)
        att += clear * (1.0 - ptx) * vessels

    # heart, mediastinum (with the aortic knob), trachea, spine
    heart = _sigmoid(heart_m / eps)
    att += 0.12 * heart
    med_x = x - a.mid_shift
    xh, yh, hw, hh = _heart_geometry(a)
    medi = _sigmoid((a.x_med - np.abs(med_x)) / eps) * _sigmoid((yh - y) / 0.05)
    att += 0.1 * medi
    knob = _sigmoid((0.07 - np.hypot(med_x - a.x_med * 0.75, y + 0.4)) / (2 * eps))
    att += 0.12 * knob
    trachea = _band(med_x, 0.032) * _sigmoid((-0.3 - y) / 0.04) * body
    att -= 0.12 * trachea
    spine_x = x - 0.3 * a.mid_shift
    vert = 0.75 + 0.25 * np.cos(2 * np.pi * (y - a.rib_y0) / a.rib_d)
    att += 0.1 * _band(spine_x, 0.075) * vert * body

    # ribs: posterior arches (one phase field draws all ten on both sides), fainter anterior ribs,
    # clavicles
    xs = np.abs(x)
    x_lat = np.where(x > 0, np.float32(a.x_lat[1]), np.float32(a.x_lat[0]))
    thorax = _sigmoid((x_lat + 0.05 - xs) / eps) * _sigmoid((xs - 0.04) / eps)
    arch = xs - 0.3
    arch = arch * arch * np.where(arch > 0, np.float32(1.8), np.float32(1.0))
    phase = (y - a.rib_y0 - a.rib_k * arch) * (1.0 / a.rib_d)
    k = np.round(phase)
    dist = (phase - k) * (a.rib_d / (0.24 * a.rib_d))  # in rib half-thicknesses
    edge = (np.abs(dist) - 1.0) * (0.24 / 0.05)
    d2 = dist * dist
    rib = 0.6 * np.exp(-d2 * d2) + 0.6 * np.exp(-edge * edge)
    att += (0.07 * rib) * ((k > -0.5) & (k < 9.5)) * thorax
    phase_a = (y + 0.45 * xs - a.rib_y0 - 0.1) * (1.0 / (a.rib_d * 1.1))
    ka = np.round(phase_a)
    dist_a = (phase_a - ka) * (1.1 / 0.3)
    front = _sigmoid((xs - 0.18) / 0.05) * _sigmoid((x_lat - 0.05 - xs) / 0.05)
    d2 = dist_a * dist_a
    att += 0.05 * np.exp(-d2 * d2) * ((ka > 0.5) & (ka < 6.5)) * front
    t = xs - 0.06
    clav = _band(y - (a.clav_y - 0.16 * t + 0.12 * t * t), 0.028)
    att += 0.22 * clav * _sigmoid((0.68 - xs) / 0.03) * _sigmoid((xs - 0.05) / eps)

    # soft tissue extras: breast shadows, gastric air bubble under the left hemidiaphragm
    if a.breasts > 0:
        for side_sign in (-1.0, 1.0):
            bx, by = side_sign * 0.48, a.dome_top[0] + 0.05
            e = ((x - bx) / 0.36) ** 2 + ((y - by) / 0.3) ** 2
            att += a.breasts * _sigmoid((1.0 - e) / 0.08) * _sigmoid((y - by + 0.15) / 0.1)
    if a.gastric > 0:
        gx, gy = 0.38 + a.mid_shift, a.dome_top[1] + 0.13
        e = ((x - gx) / 0.1) ** 2 + ((y - gy) / 0.06) ** 2
        att -= a.gastric * _sigmoid((1.0 - e) / 0.15) * body
    att += scene.extra

    # exposure: window, gamma, heel effect, quantum noise, then automatic brightness/contrast
    lo, hi = np.percentile(att, [0.5, 99.7])
    img = np.clip((att - lo) / (hi - lo + 1e-9), 0.0, 1.0)
    img = img ** rng.uniform(0.6, 1.05)
    img = img + rng.uniform(-0.06, 0.06) * v + rng.uniform(-0.03, 0.03) * u
    # white noise averages out when an image is made smaller: scale it with the pixel size
    noise = rng.uniform(0.01, 0.035) * min(1.0, size / 256)
    img = img + noise * rng.standard_normal((size, size), dtype=np.float32)
    target_mean, target_std = rng.uniform(0.40, 0.58), rng.uniform(0.17, 0.24)
    img = (img - img.mean()) / (img.std() + 1e-9) * target_std + target_mean
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an 8-bit grayscale image (no timestamps, so bytes are reproducible)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def render_phantoms(n: int, size: int, seed: int = 0, multi_label_fraction: float = 0.1,
                    ) -> tuple[np.ndarray, list[ImageSpec]]:
    """All images of a data set in memory (uint8 ``[n, size, size]``) with their specs.

    For tests and benchmarks that need phantom pixels without writing a folder; the arrays are
    exactly what :func:`make_phantom_dataset` writes.
    """
    _check_options(n, size, seed, multi_label_fraction)
    specs = plan_dataset(n, seed, multi_label_fraction)
    images = np.stack([render_image(spec, size, seed) for spec in specs])
    return images, specs


# ------------------------------------------------------------------------------- the data set
@dataclass
class PhantomResult:
    """What :func:`make_phantom_dataset` wrote."""

    out: Path
    csv_path: Path
    n: int
    size: int
    seed: int
    counts: dict[str, int]  # ``Finding Labels`` value -> images, most frequent first
    workers: int
    seconds: float

    @property
    def n_multi_label(self) -> int:
        return sum(c for k, c in self.counts.items() if "|" in k)

    def summary(self) -> str:
        lines = [f"wrote {self.n} phantom images ({self.size}x{self.size}, seed {self.seed}) "
                 f"to {self.out} in {self.seconds:.1f} s ({self.workers} worker(s))"]
        for name, count in self.counts.items():
            if "|" not in name:
                lines.append(f"  {name:<14} {count:6d}")
        lines.append(f"  {'multi-label':<14} {self.n_multi_label:6d}")
        lines.append(f"labels: {self.csv_path}")
        lines.append(f"next:   cxraug prepare {self.out} --csv {self.csv_path} --top-k 6 "
                     "--size 128 --out cache.h5")
        return "\n".join(lines)


def _check_options(n: int, size: int, seed: int, multi_label_fraction: float) -> None:
    if not isinstance(n, int | np.integer) or not 1 <= n <= _MAX_N:
        raise CxrError(f"--n {n}: the number of images must be between 1 and {_MAX_N:,}")
    if not isinstance(size, int | np.integer) or not _MIN_SIZE <= size <= _MAX_SIZE:
        raise CxrError(f"--size {size}: choose a side between {_MIN_SIZE} and {_MAX_SIZE} pixels")
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise CxrError(f"--seed {seed}: the seed must be a non-negative integer")
    if not 0.0 <= float(multi_label_fraction) < 1.0:
        raise CxrError(f"--multi-label-fraction {multi_label_fraction}: "
                       "choose a share in [0, 1), e.g. 0.1")


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse to clobber anything that is not an empty folder or an earlier phantom set."""
    if out.exists() and not out.is_dir():
        raise CxrError(f"--out {out}: exists and is not a folder; choose a folder path")
    if out.is_dir() and any(out.iterdir()):
        readme = out / README_NAME
        ours = readme.is_file() and README_MARKER in readme.read_text(errors="replace")[:200]
        if not overwrite:
            raise CxrError(f"--out {out}: folder is not empty; choose a new folder"
                           + (" or pass --overwrite" if ours else ""))
        if not ours:
            raise CxrError(f"--out {out}: not empty and not a cxraug phantom data set; "
                           "refusing to replace it, choose a new folder")


def _readme(n: int, size: int, seed: int, mlf: float, counts: dict[str, int]) -> str:
    rows = "\n".join(f"  {k:<28} {v}" for k, v in counts.items())
    return f"""{README_MARKER}

SYNTHETIC DATA - NOT REAL PATIENTS, NOT FOR CLINICAL OR RESEARCH CONCLUSIONS.

Procedural chest radiograph phantoms drawn by cxraug (cxraug.data.phantom) in the layout of the
NIH ChestX-ray14 download, so every cxraug command can be tried without the real data:

  images/PPPPPPPP_FFF.png   8-bit grayscale, {size}x{size}; patient id and follow-up number
  {CSV_NAME}       NIH's exact CSV layout (header quirk included)

Regenerate byte for byte (same cxraug, numpy and Pillow versions) with:
  cxraug demo-data --out DIR --n {n} --size {size} --seed {seed} --multi-label-fraction {mlf}

Each finding has a drawn sign whose place, size and density vary:
  Effusion      fluid at a lung base with a meniscus, blunting the costophrenic angle
  Atelectasis   a dense plate or wedge with volume loss (raised hemidiaphragm, shifted mediastinum)
  Infiltration  patchy, ill-defined opacities
  Mass          a large round opacity (radius 12-18% of the lung's width)
  Nodule        a small dense round opacity (radius 4.5-7% of the lung's width)
  Pneumothorax  a dark apical/lateral rim without vessel markings, bounded by a pleural line
  Cardiomegaly  an enlarged heart (cardiothoracic ratio 0.56-0.66 instead of 0.38-0.47)
Brightness and contrast are normalized to random targets per image, so global intensity carries
no label information. Patients have 1-4 follow-ups that share anatomy.

Images per Finding Labels value:
{rows}
"""


def _render_job(job: tuple[ImageSpec, int, int, str]) -> int:
    """Worker: draw one image and write it; returns its byte count."""
    spec, size, seed, folder = job
    data = encode_png(render_image(spec, size, seed))
    with open(os.path.join(folder, spec.name), "wb") as handle:
        handle.write(data)
    return len(data)


def _auto_workers(n: int, size: int) -> int:
    cores = os.cpu_count() or 1
    est_s = n * (0.002 + 0.022 * (size / 256) ** 2)  # rough single-core cost per image
    if cores == 1 or est_s < 2.0:
        return 1  # starting processes would cost more than it saves
    return max(1, min(cores, n // 16))


def make_phantom_dataset(
    out: str | os.PathLike,
    n: int = 2000,
    size: int = 256,
    seed: int = 0,
    multi_label_fraction: float = 0.1,
    overwrite: bool = False,
    progress: bool = True,
    workers: int | None = None,
) -> PhantomResult:
    """Write ``n`` phantom radiographs and their NIH CSV into ``out``.

    Everything is written into a hidden temporary folder beside ``out`` and renamed into place at
    the end, so a killed run never leaves a folder that looks complete. ``workers`` (default: all
    cores for large jobs) changes only the speed, never a byte of the output.
    """
    start = time.perf_counter()
    _check_options(n, size, seed, multi_label_fraction)
    out = Path(out)
    _prepare_out(out, overwrite)
    specs = plan_dataset(n, seed, multi_label_fraction)
    if workers is None:
        workers = _auto_workers(n, size)
    if workers < 1:
        raise CxrError(f"workers={workers}: use 1 or more processes")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        (tmp / "images").mkdir()
        jobs = [(spec, size, seed, str(tmp / "images")) for spec in specs]
        bar = _progress(total=n, enabled=progress)
        if workers == 1:
            for job in jobs:
                _render_job(job)
                bar.update(1)
        else:
            method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() \
                else "spawn"  # never fork: the caller may hold threads (TensorFlow, BLAS)
            ctx = multiprocessing.get_context(method)
            with ctx.Pool(workers, initializer=exit_with_parent) as pool:
                chunk = max(1, min(16, n // (8 * workers)))
                for _ in pool.imap(_render_job, jobs, chunksize=chunk):
                    bar.update(1)
        bar.close()

        rows = pd.DataFrame({
            IMAGE_INDEX: [sp.name for sp in specs],
            FINDING_LABELS: [sp.finding_labels for sp in specs],
            FOLLOW_UP: [sp.follow_up for sp in specs],
            PATIENT_ID: [sp.patient_id for sp in specs],
            PATIENT_AGE: [sp.age for sp in specs],
            PATIENT_GENDER: [sp.gender for sp in specs],
            VIEW_POSITION: [sp.view for sp in specs],
            WIDTH: size,
            HEIGHT: size,
            SPACING_X: round(NIH_SPACING_MM * 1024 / size, 6),
            SPACING_Y: round(NIH_SPACING_MM * 1024 / size, 6),
        })
        counts = {str(k): int(c) for k, c in rows[FINDING_LABELS].value_counts().items()}
        counts = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        (tmp / README_NAME).write_text(_readme(n, size, seed, multi_label_fraction, counts))
        write_nih_csv(rows, tmp / CSV_NAME)  # the CSV last: its presence marks a complete set
        _swap_into_place(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return PhantomResult(out=out, csv_path=out / CSV_NAME, n=n, size=size, seed=seed,
                         counts=counts, workers=workers, seconds=time.perf_counter() - start)


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished folder to ``out``; an old set is moved aside first, then deleted."""
    old = None
    if out.is_dir():
        if any(out.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / out.name)
        else:
            out.rmdir()
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _progress(total: int, enabled: bool) -> Any:  # tqdm or a no-op stand-in
    if enabled:
        from ..progress import progress_bar

        return progress_bar(total=total, desc="phantoms", unit="img", file=sys.stderr,
                    dynamic_ncols=True)

    class _Off:
        def update(self, _n: int) -> None:
            pass

        def close(self) -> None:
            pass

    return _Off()
