"""Class-by-latent sample grids, as in the paper's Figures 7 and 9.

Rows are classes (labelled with the class name), columns are fixed latent vectors: reading down a
column shows what the *label alone* changes for one z. The training loop and ``cxraug sample`` draw
grids with the same function, so a grid from a checkpoint looks like the ones written in training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..contract import inputs_for
from ..errors import CxrError
from ..grid import labelled_grid, to_uint8
from ..io_utils import atomic_path

GRID_PAD = 2  # pixels between tiles (cxraug.grid.labelled_grid's default)
MIN_TILE = 64  # small images are upscaled (nearest) to at least this side so a grid is legible


def tile_size(image_size: int) -> int:
    """Side of one grid tile: the image, upscaled by an integer factor to at least MIN_TILE."""
    return image_size * max(1, -(-MIN_TILE // image_size))


def grid_latents(latent_dim: int, columns: int, seed: int) -> np.ndarray:
    """The fixed z of a grid's columns: float32 ``[columns, latent_dim]`` from ``seed``."""
    return np.random.default_rng([int(seed), 0x6121D]).standard_normal(
        (columns, latent_dim)).astype(np.float32)


def grid_rows(class_names: list[str], label_mode: str) -> tuple[list[str], np.ndarray | None]:
    """Row names and the label of each row (index, one-hot, or None for an unconditional model)."""
    if label_mode == "none":
        return ["unconditional"], None
    if label_mode == "multi-hot":
        return list(class_names), np.eye(len(class_names), dtype=np.float32)
    return list(class_names), np.arange(len(class_names), dtype=np.int32)


def generate_grid(
    generator: Any, z: np.ndarray, class_names: list[str], label_mode: str
) -> tuple[np.ndarray, list[str]]:
    """Images ``[rows, columns, H, W]`` in [-1, 1]: every row's label with every column's z."""
    names, row_labels = grid_rows(class_names, label_mode)
    rows, columns = len(names), len(z)
    z_all = np.tile(z, (rows, 1))
    if row_labels is None:
        out = generator(z_all, training=False)
    else:
        labels = np.repeat(row_labels, columns, axis=0)
        out = generator(inputs_for(label_mode, z_all, labels), training=False)
    images = np.asarray(out, dtype=np.float32)
    return images.reshape(rows, columns, images.shape[1], images.shape[2]), names


def draw_grid(images: np.ndarray, row_names: list[str]) -> Image.Image:
    """An 8-bit gray PIL image: a column of row names, then ``rows`` x ``columns`` tiles.

    Drawn by :func:`cxraug.grid.labelled_grid`, the project's one grid style (demo and report
    use it too).
    """
    return labelled_grid(to_uint8(images), row_labels=row_names, pad=GRID_PAD, min_tile=MIN_TILE)


def save_png(image: Image.Image, out: Path) -> Path:
    """Write atomically so a crash never leaves a half-written PNG."""
    with atomic_path(out, suffix=".png") as tmp:
        image.save(tmp, format="PNG")
    return out


def sample_grid(
    run: str | Path,
    out: str | Path,
    checkpoint: str | None = None,
    columns: int = 8,
    seed: int = 0,
) -> Path:
    """Draw a class-by-latent grid from a run's checkpoint (``cxraug sample``)."""
    from .run import load_generator

    if columns < 1:
        raise CxrError(f"--columns must be at least 1, got {columns}")
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise CxrError(f"--out {out} must end in .png")
    loaded = load_generator(run, checkpoint)
    z = grid_latents(loaded.recipe.model.latent_dim, columns, seed)
    images, names = generate_grid(loaded.model, z, loaded.class_names, loaded.label_mode)
    return save_png(draw_grid(images, names), out)
