"""One phantom image from its spec: anatomy, the findings' signs, then the exposure.

Each image's pose, signs and exposure come from an RNG seeded by ``(seed, image index)``, so an
image depends only on ``(spec, size, seed)``: never on which process draws it, nor on the others.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from .anatomy import (
    breast_density,
    follow_up_pose,
    heart_geometry,
    heart_margin,
    lung_margin,
    patient_anatomy,
)
from .plan import IMAGE_STREAM, ImageSpec, check_options, plan_dataset
from .shapes import band, pixel_grid, sigmoid, smooth_field
from .signs import Canvas, draw_signs, reshape_anatomy


def render_image(spec: ImageSpec, size: int, seed: int = 0) -> np.ndarray:
    """Draw one phantom as uint8 ``[size, size]``; depends only on ``(spec, size, seed)``."""
    rng = np.random.default_rng([seed, IMAGE_STREAM, spec.index])
    a = patient_anatomy(seed, spec.patient_id)
    if spec.gender == "F":
        a = replace(a, breasts=breast_density(seed, spec.patient_id))
    a = follow_up_pose(a, rng)
    a, notes = reshape_anatomy(spec.labels, a, rng)

    u, v = pixel_grid(size)
    c, s = math.cos(a.rotation), math.sin(a.rotation)
    du, dv = (u - a.shift[0]) / a.scale, (v - a.shift[1]) / a.scale
    x, y = c * du + s * dv, -s * du + c * dv  # anatomical coordinates
    eps = max(1.2 * 2.0 / size, 0.006)  # edge softness: about a pixel, never sharper

    # body: neck, rounded shoulders, torso thicker in the middle
    sh = sigmoid((y - a.shoulder_y) / 0.06)
    half = a.neck_w + (a.body_w + 0.25 - a.neck_w) * sh
    body = sigmoid((half - np.abs(x)) / (2 * eps))
    thick = np.sqrt(np.clip(1.0 - (x / (a.body_w + 0.3)) ** 2, 0.0, 1.0))
    att = body * (0.45 + 0.55 * thick)

    heart_m = heart_margin(x, y, a)
    margins, walls = [], []
    for side in (0, 1):
        margin, wall = lung_margin(x, y, a, side, heart_m)
        margins.append(margin)
        walls.append(wall)
    scene = draw_signs(spec.labels, Canvas(x, y, a, margins, walls, eps, size), rng, notes)

    # lungs: air with slow density variation and vessel markings fanning out from each hilum;
    # both lungs in one pass (each pixel uses the hilum of its own side)
    air_var = 0.9 + 0.1 * smooth_field(rng, size, 6)
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
    vessels = np.exp(-coarse * coarse) + fine_w * np.exp(-fine * fine) * sigmoid((r - 0.15) / 0.05)
    vessels *= np.exp(-r / 0.55) * sigmoid((r - 0.04) / 0.02)
    vessels = a.markings * vessels + 0.12 * np.exp(-((dxh / 0.07) ** 2 + (dyh / 0.11) ** 2))
    for side in (0, 1):
        lung = sigmoid(margins[side] / eps)
        clear = lung * (1.0 - scene.opacity[side])
        ptx = scene.no_markings[side]
        att -= (a.air * clear) * air_var * (1.0 + 0.6 * ptx)
        att += clear * (1.0 - ptx) * vessels

    # heart, mediastinum (with the aortic knob), trachea, spine
    heart = sigmoid(heart_m / eps)
    att += 0.12 * heart
    med_x = x - a.mid_shift
    xh, yh, hw, hh = heart_geometry(a)
    medi = sigmoid((a.x_med - np.abs(med_x)) / eps) * sigmoid((yh - y) / 0.05)
    att += 0.1 * medi
    knob = sigmoid((0.07 - np.hypot(med_x - a.x_med * 0.75, y + 0.4)) / (2 * eps))
    att += 0.12 * knob
    trachea = band(med_x, 0.032) * sigmoid((-0.3 - y) / 0.04) * body
    att -= 0.12 * trachea
    spine_x = x - 0.3 * a.mid_shift
    vert = 0.75 + 0.25 * np.cos(2 * np.pi * (y - a.rib_y0) / a.rib_d)
    att += 0.1 * band(spine_x, 0.075) * vert * body

    # ribs: posterior arches (one phase field draws all ten on both sides), fainter anterior ribs,
    # clavicles
    xs = np.abs(x)
    x_lat = np.where(x > 0, np.float32(a.x_lat[1]), np.float32(a.x_lat[0]))
    thorax = sigmoid((x_lat + 0.05 - xs) / eps) * sigmoid((xs - 0.04) / eps)
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
    front = sigmoid((xs - 0.18) / 0.05) * sigmoid((x_lat - 0.05 - xs) / 0.05)
    d2 = dist_a * dist_a
    att += 0.05 * np.exp(-d2 * d2) * ((ka > 0.5) & (ka < 6.5)) * front
    t = xs - 0.06
    clav = band(y - (a.clav_y - 0.16 * t + 0.12 * t * t), 0.028)
    att += 0.22 * clav * sigmoid((0.68 - xs) / 0.03) * sigmoid((xs - 0.05) / eps)

    # soft tissue extras: breast shadows, gastric air bubble under the left hemidiaphragm
    if a.breasts > 0:
        for side_sign in (-1.0, 1.0):
            bx, by = side_sign * 0.48, a.dome_top[0] + 0.05
            e = ((x - bx) / 0.36) ** 2 + ((y - by) / 0.3) ** 2
            att += a.breasts * sigmoid((1.0 - e) / 0.08) * sigmoid((y - by + 0.15) / 0.1)
    if a.gastric > 0:
        gx, gy = 0.38 + a.mid_shift, a.dome_top[1] + 0.13
        e = ((x - gx) / 0.1) ** 2 + ((y - gy) / 0.06) ** 2
        att -= a.gastric * sigmoid((1.0 - e) / 0.15) * body
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
    pixels: np.ndarray = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    return pixels


def render_phantoms(n: int, size: int, seed: int = 0, multi_label_fraction: float = 0.1,
                    ) -> tuple[np.ndarray, list[ImageSpec]]:
    """All images of a data set in memory (uint8 ``[n, size, size]``) with their specs.

    For tests and benchmarks that need phantom pixels without writing a folder; the arrays are
    exactly what :func:`.dataset.make_phantom_dataset` writes.
    """
    check_options(n, size, seed, multi_label_fraction)
    specs = plan_dataset(n, seed, multi_label_fraction)
    images = np.stack([render_image(spec, size, seed) for spec in specs])
    return images, specs
