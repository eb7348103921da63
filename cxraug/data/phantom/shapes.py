"""Drawing primitives in normalized coordinates (x right, y down, both in [-1, 1]).

Every random field is drawn on a fixed coarse grid and interpolated to the pixel grid, so a
phantom's content does not depend on its size (``--size 64`` and ``--size 256`` show the same
patients). Everything is vectorized over the pixel grid.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


def sigmoid(z: np.ndarray) -> np.ndarray:
    """A logistic-like step (smoothstep over ``|z| < 3``): no transcendental, so it is cheap."""
    t = z * (1.0 / 6.0) + 0.5
    np.minimum(np.maximum(t, 0.0, out=t), 1.0, out=t)
    return t * t * (3.0 - 2.0 * t)


def band(dist: np.ndarray, half: float) -> np.ndarray:
    """Flat-topped band profile: 1 inside ``|dist| < half``, smooth shoulders."""
    q = dist / half
    return np.exp(-(q * q) ** 2)


@lru_cache(maxsize=16)
def interp_matrix(size: int, grid: int) -> np.ndarray:
    """Gaussian interpolation weights from a ``grid`` of control points to ``size`` pixels."""
    px = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    centers = np.linspace(-1.15, 1.15, grid)
    width = (centers[1] - centers[0]) * 0.75
    w = np.exp(-0.5 * ((px[:, None] - centers[None, :]) / width) ** 2)
    rows: np.ndarray = w / w.sum(axis=1, keepdims=True)  # each pixel's weights sum to 1
    return rows.astype(np.float32)


def smooth_field(rng: np.random.Generator, size: int, grid: int) -> np.ndarray:
    """A smooth random field with zero mean and unit variance (coarse noise, upsampled)."""
    coarse = rng.standard_normal((grid, grid), dtype=np.float32)
    m = interp_matrix(size, grid)
    f = m @ coarse @ m.T
    standardized: np.ndarray = (f - f.mean()) / (f.std() + 1e-9)
    return standardized


@lru_cache(maxsize=8)
def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalized coordinates of the pixel centres (cached: every image of a size shares them)."""
    c = ((np.arange(size) + 0.5) / size * 2.0 - 1.0).astype(np.float32)
    return np.meshgrid(c, c)  # u (x, right), v (y, down); float32 halves the drawing time
