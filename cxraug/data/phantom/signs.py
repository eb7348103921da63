"""The findings' signs, registered by finding name: what each finding looks like on a phantom.

A sign is one :class:`Sign` in :data:`SIGNS`: how it changes the anatomy before anything is drawn
(``reshape``: an enlarged heart, a collapsed lung's volume loss), how it changes the lungs while
they are drawn (``draw``: fluid, opacities, a pneumothorax rim), and the line the data set's
README gives it. Adding a finding's sign is one function and one :func:`register_sign` (and the
finding's weight in :data:`.plan.CLASS_WEIGHTS`, so that the plan gives it images).

Random numbers: every sign draws from the image's one stream, so the order of the draws fixes
every image's bytes. ``reshape`` runs for the image's findings in ``reshape_rank`` order (then
registration order), ``draw`` in the order of the image's labels (alphabetical); both orders, and
each sign's own draws, are those of the if/elif chain this registry replaced, so the images are
the same bytes as before.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from .anatomy import Anatomy, lung_margin
from .shapes import band, sigmoid, smooth_field


@dataclass
class Scene:
    """Fields a finding can change before the image is composed."""

    opacity: list[np.ndarray]  # per side, fraction of lung air replaced by fluid or tissue
    no_markings: list[np.ndarray]  # per side, where vessel markings vanish (pneumothorax)
    extra: np.ndarray  # added attenuation (pleural line, dense nodules)

    @classmethod
    def empty(cls, like: np.ndarray) -> Scene:
        """A scene without findings, the shape and type of the pixel grid ``like``."""
        zeros = np.zeros_like(like)
        return cls([zeros.copy(), zeros.copy()], [zeros.copy(), zeros.copy()], zeros.copy())


@dataclass(frozen=True)
class Canvas:
    """What a sign draws on: the pixel grid in anatomical coordinates and the lungs' distances."""

    x: np.ndarray
    y: np.ndarray
    anatomy: Anatomy  # after every sign's ``reshape``
    margins: list[np.ndarray]  # per side, signed distance into the lung
    walls: list[np.ndarray]  # per side, distance to the apical/lateral pleura
    eps: float  # edge softness: about a pixel
    size: int

    @property
    def lung_w(self) -> list[float]:
        """Per side, the lung's width (medial to lateral border)."""
        a = self.anatomy
        return [a.x_lat[k] - a.x_med for k in (0, 1)]


#: What the anatomy pass leaves for the drawing (e.g. which lung collapsed), by key.
Notes = dict[str, int]
ReshapeAnatomy = Callable[[Anatomy, np.random.Generator, Notes], Anatomy]
DrawSign = Callable[[Canvas, Scene, np.random.Generator, Notes], None]


@dataclass(frozen=True)
class Sign:
    """One finding's sign: an anatomy change, a drawing, or both."""

    finding: str  # NIH's finding name, as in ``Finding Labels``
    description: str  # the data set README's line for it
    draw: DrawSign | None = None
    reshape: ReshapeAnatomy | None = None
    #: Order of the anatomy pass (lower first, then registration order): it fixes the order of the
    #: random draws, so changing it changes images.
    reshape_rank: int = 0
    _order: int = field(default=0, compare=False, repr=False)


#: Every registered sign by finding name, in registration order (the README's order).
SIGNS: dict[str, Sign] = {}


def register_sign(sign: Sign) -> Sign:
    """Add ``sign`` to :data:`SIGNS`; a finding has one sign only."""
    if sign.finding in SIGNS:
        raise ValueError(f"a sign for {sign.finding!r} is already registered")
    if sign.draw is None and sign.reshape is None:
        raise ValueError(f"the sign for {sign.finding!r} neither draws nor reshapes anything")
    SIGNS[sign.finding] = replace(sign, _order=len(SIGNS))
    return SIGNS[sign.finding]


def _signs_of(labels: tuple[str, ...]) -> list[Sign]:
    unknown = [label for label in labels if label not in SIGNS]
    if unknown:
        raise ValueError(f"no phantom sign is registered for {', '.join(unknown)} "
                         f"(registered: {', '.join(SIGNS)})")
    return [SIGNS[label] for label in labels]


def reshape_anatomy(labels: tuple[str, ...], a: Anatomy, rng: np.random.Generator,
                    ) -> tuple[Anatomy, Notes]:
    """The anatomy pass: each finding that changes the anatomy itself, in rank order."""
    notes: Notes = {}
    once = list(dict.fromkeys(_signs_of(labels)))  # a finding changes the anatomy once
    for sign in sorted(once, key=lambda s: (s.reshape_rank, s._order)):
        if sign.reshape is not None:
            a = sign.reshape(a, rng, notes)
    return a, notes


def draw_signs(labels: tuple[str, ...], canvas: Canvas, rng: np.random.Generator,
               notes: Notes) -> Scene:
    """Draw each finding's sign into a scene, in label order; place, size and density vary."""
    scene = Scene.empty(canvas.x)
    for sign in _signs_of(labels):
        if sign.draw is not None:
            sign.draw(canvas, scene, rng, notes)
    return scene


# ---------------------------------------------------------------------------- shared shapes
def point_in_lung(rng: np.random.Generator, a: Anatomy, side: int, clearance: float,
                  y_range: tuple[float, float] = (0.1, 0.9)) -> tuple[float, float]:
    """A random point at least ``clearance`` inside one lung (rejection sampling, vectorized)."""
    s = -1.0 if side == 0 else 1.0
    x_med = a.x_med + s * a.mid_shift
    xs = rng.uniform(x_med, a.x_lat[side], size=64)
    y0, y1 = a.apex[side], a.dome_top[side] + a.dome_h[side]
    ys = rng.uniform(y0 + y_range[0] * (y1 - y0), y0 + y_range[1] * (y1 - y0), size=64)
    margin, _ = lung_margin(s * xs, ys, a, side)
    ok = np.flatnonzero(margin > clearance)
    j = int(ok[0]) if ok.size else int(np.argmax(margin))
    return float(s * xs[j]), float(ys[j])


def round_opacity(x: np.ndarray, y: np.ndarray, cx: float, cy: float, r: float,
                  rng: np.random.Generator, edge: float, lobulation: float) -> np.ndarray:
    """A sphere's projected thickness (0..1), lobulated, with a soft edge of width ``edge``."""
    dx, dy = x - cx, y - cy
    d = np.sqrt(dx * dx + dy * dy)
    theta = np.arctan2(dy, dx)
    ph = rng.uniform(0, 2 * np.pi, size=2)
    wobble = 0.6 * np.sin(3 * theta + ph[0]) + 0.4 * np.sin(5 * theta + ph[1])
    rr = r * (1.0 + lobulation * wobble)
    inside = np.clip(1.0 - (d / rr) ** 2, 0.0, 1.0)
    thickness: np.ndarray = np.sqrt(inside) * 0.7 + 0.3 * sigmoid((rr - d) / edge)
    return thickness


def _round_lesion(c: Canvas, scene: Scene, rng: np.random.Generator, side: int, radius: float,
                  density: float, lobulation: float, edge: float) -> np.ndarray:
    """A round opacity in one lung (mass or nodule); returns its thickness for denser cores."""
    cx, cy = point_in_lung(rng, c.anatomy, side, radius + 0.02)
    blob = round_opacity(c.x, c.y, cx, cy, radius, rng, edge, lobulation)
    scene.opacity[side] = np.maximum(scene.opacity[side], blob * density)
    return blob


# ---------------------------------------------------------------------------------- the signs
def _effusion(c: Canvas, scene: Scene, rng: np.random.Generator, notes: Notes) -> None:
    a, x, y, eps = c.anatomy, c.x, c.y, c.eps
    sides = (0, 1) if rng.random() < 0.15 else (int(rng.integers(0, 2)),)
    for side in sides:
        s = -1.0 if side == 0 else 1.0
        x_med = a.x_med + s * a.mid_shift
        cp_y = a.dome_top[side] + a.dome_h[side]
        height = rng.uniform(0.14, 0.36)
        t = np.clip((s * x - x_med) / (a.x_lat[side] - x_med), 0.0, 1.2)
        # meniscus: the fluid climbs the lateral wall and hides the dome
        level = cp_y - 0.5 * a.dome_h[side] - height * (0.35 + 0.65 * t * t)
        fluid = sigmoid((y - level) / max(eps, 0.012))
        scene.opacity[side] = np.maximum(scene.opacity[side], fluid * rng.uniform(0.85, 1.0))


register_sign(Sign(
    "Effusion", "fluid at a lung base with a meniscus, blunting the costophrenic angle",
    draw=_effusion))


def _atelectatic_volume_loss(a: Anatomy, rng: np.random.Generator, notes: Notes) -> Anatomy:
    """The collapsed side loses volume: raised hemidiaphragm, mediastinum pulled towards it."""
    side = int(rng.integers(0, 2))
    s = -1.0 if side == 0 else 1.0
    dome = list(a.dome_top)
    dome[side] -= rng.uniform(0.04, 0.09)  # elevated hemidiaphragm
    x_lat = list(a.x_lat)
    x_lat[side] -= rng.uniform(0.01, 0.04)
    a = replace(a, dome_top=(dome[0], dome[1]), x_lat=(x_lat[0], x_lat[1]),
                mid_shift=a.mid_shift + s * rng.uniform(0.015, 0.04))
    notes["atelectasis_side"] = side
    return a


def _atelectasis(c: Canvas, scene: Scene, rng: np.random.Generator, notes: Notes) -> None:
    a, x, y = c.anatomy, c.x, c.y
    # the side was chosen by the volume loss; this draw is unused but kept, because removing it
    # would shift every later random number of the image (and change its bytes)
    unused_side = int(rng.integers(0, 2))
    side = notes.get("atelectasis_side", unused_side)
    s = -1.0 if side == 0 else 1.0
    if rng.random() < 0.5:  # plate-like (discoid) atelectasis in the lower zone
        for _ in range(int(rng.integers(1, 3))):
            cy = a.dome_top[side] - rng.uniform(0.04, 0.22)
            cx = s * (a.x_med + rng.uniform(0.35, 0.6) * c.lung_w[side])
            ang = rng.uniform(-0.25, 0.25)
            half_len = rng.uniform(0.12, 0.22)
            half_th = rng.uniform(0.018, 0.032)
            cos, sin = math.cos(ang), math.sin(ang)
            along = cos * (x - cx) + sin * (y - cy)
            across = -sin * (x - cx) + cos * (y - cy)
            plate = band(across, half_th) * band(along, half_len)
            scene.opacity[side] = np.maximum(scene.opacity[side], plate * rng.uniform(0.8, 1.0))
    else:  # lobar collapse: a dense wedge fanning out from the hilum
        hx, hy = s * 0.22 + a.mid_shift, -0.1
        centre = rng.choice([-1.25, -0.55, 1.35]) + rng.uniform(-0.2, 0.2)
        half_ang = rng.uniform(0.25, 0.42)
        ang_map = np.arctan2(y - hy, s * (x - hx))
        r = np.hypot(x - hx, y - hy)
        dang = np.angle(np.exp(1j * (ang_map - centre)))
        wedge = sigmoid((half_ang - np.abs(dang)) / 0.06) * sigmoid((r - 0.03) / 0.03)
        scene.opacity[side] = np.maximum(scene.opacity[side], wedge * rng.uniform(0.75, 0.95))


register_sign(Sign(
    "Atelectasis",
    "a dense plate or wedge with volume loss (raised hemidiaphragm, shifted mediastinum)",
    draw=_atelectasis, reshape=_atelectatic_volume_loss))


def _infiltration(c: Canvas, scene: Scene, rng: np.random.Generator, notes: Notes) -> None:
    x, y = c.x, c.y
    patches = smooth_field(rng, c.size, 14)
    fine = smooth_field(rng, c.size, 28)
    thr = rng.uniform(0.0, 0.5)
    patchy = sigmoid((patches + 0.5 * fine - thr) / 0.25)
    sides = (0, 1) if rng.random() < 0.4 else (int(rng.integers(0, 2)),)
    for side in sides:
        cx, cy = point_in_lung(rng, c.anatomy, side, 0.05)
        env = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * rng.uniform(0.22, 0.34) ** 2))
        scene.opacity[side] = np.maximum(
            scene.opacity[side], patchy * env * rng.uniform(0.7, 0.95))


register_sign(Sign("Infiltration", "patchy, ill-defined opacities", draw=_infiltration))


def _mass(c: Canvas, scene: Scene, rng: np.random.Generator, notes: Notes) -> None:
    side = int(rng.integers(0, 2))
    radius = rng.uniform(0.12, 0.18) * c.lung_w[side]
    density, lobulation = rng.uniform(0.8, 1.0), rng.uniform(0.03, 0.12)
    _round_lesion(c, scene, rng, side, radius, density, lobulation, edge=max(c.eps, 0.012))


register_sign(Sign("Mass", "a large round opacity (radius 12-18% of the lung's width)",
                   draw=_mass))


def _nodule(c: Canvas, scene: Scene, rng: np.random.Generator, notes: Notes) -> None:
    side = int(rng.integers(0, 2))
    radius = rng.uniform(0.045, 0.07) * c.lung_w[side]
    density = rng.uniform(0.85, 1.0)
    blob = _round_lesion(c, scene, rng, side, radius, density, lobulation=0.02,
                         edge=max(c.eps * 0.7, 0.005))
    # small nodules are often calcified: denser than soft tissue
    scene.extra += blob * rng.uniform(0.15, 0.35) * c.anatomy.air


register_sign(Sign("Nodule", "a small dense round opacity (radius 4.5-7% of the lung's width)",
                   draw=_nodule))


def _pneumothorax(c: Canvas, scene: Scene, rng: np.random.Generator, notes: Notes) -> None:
    a, y, eps = c.anatomy, c.y, c.eps
    side = int(rng.integers(0, 2))
    cp_y = a.dome_top[side] + a.dome_h[side]
    depth = rng.uniform(0.1, 0.2)
    frac = np.clip((y - a.apex[side]) / (cp_y - a.apex[side]), 0.0, 1.0)
    rim = depth * (1.0 - frac) ** rng.uniform(0.6, 1.2)  # air rises: widest at the apex
    wall = c.walls[side]
    inside = sigmoid(c.margins[side] / eps)
    ptx = inside * sigmoid((rim - wall) / eps)
    scene.no_markings[side] = np.maximum(scene.no_markings[side], ptx)
    line_w = max(eps * 0.8, 0.006)
    line = np.exp(-(((wall - rim) / line_w) ** 2)) * inside * sigmoid((rim - 0.01) / eps)
    scene.extra += line * rng.uniform(0.25, 0.4) * a.air


register_sign(Sign(
    "Pneumothorax", "a dark apical/lateral rim without vessel markings, bounded by a pleural line",
    draw=_pneumothorax))


def _enlarged_heart(a: Anatomy, rng: np.random.Generator, notes: Notes) -> Anatomy:
    return replace(a, ctr=rng.uniform(0.56, 0.66), heart_h=a.heart_h * rng.uniform(1.03, 1.1))


register_sign(Sign(
    "Cardiomegaly", "an enlarged heart (cardiothoracic ratio 0.56-0.66 instead of 0.38-0.47)",
    reshape=_enlarged_heart, reshape_rank=-1))  # the heart grows before a lung collapses
