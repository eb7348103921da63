"""Labelled image grids (rows = classes) drawn with Pillow; no TensorFlow.

Used for training sample grids, the demo's contact sheet and the evaluation report, so that one
z across all labels (a column) shows the label's effect as in the paper's Figures 7 and 9.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Map generator outputs in [-1, 1] to 8-bit gray: ``(x + 1) * 127.5``, rounded, clipped.

    The one conversion used by augment (the saved PNG bytes), evaluate and every grid, so all of
    them see the same pixels. A trailing channel axis of size 1 is dropped.
    """
    arr = np.asarray(images, dtype=np.float32)
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return np.clip(np.rint((arr + 1.0) * 127.5), 0, 255).astype(np.uint8)


def labelled_grid(
    tiles: np.ndarray,
    row_labels: Sequence[str] | None = None,
    column_labels: Sequence[str] | None = None,
    pad: int = 2,
    min_tile: int = 64,
) -> Image.Image:
    """Arrange uint8 tiles ``[rows, cols, H, W]`` into one grayscale image with text labels.

    Tiles smaller than ``min_tile`` are upscaled (nearest) so that small recipes stay legible.
    """
    tiles = np.asarray(tiles)
    if tiles.ndim != 4:
        raise ValueError(f"tiles must be [rows, cols, H, W], got shape {tiles.shape}")
    rows, cols, height, width = tiles.shape
    scale = max(1, -(-min_tile // max(height, width)))
    th, tw = height * scale, width * scale
    font = ImageFont.load_default()
    label_w = 0
    if row_labels:
        label_w = 8 + max(int(font.getlength(str(t))) for t in row_labels)
    label_h = 14 if column_labels else 0
    canvas = Image.new(
        "L", (label_w + cols * (tw + pad) + pad, label_h + rows * (th + pad) + pad), color=255
    )
    draw = ImageDraw.Draw(canvas)
    for r in range(rows):
        y = label_h + pad + r * (th + pad)
        if row_labels:
            draw.text((4, y + th // 2 - 6), str(row_labels[r]), fill=0, font=font)
        for c in range(cols):
            tile = Image.fromarray(tiles[r, c].astype(np.uint8), mode="L")
            if scale > 1:
                tile = tile.resize((tw, th), Image.Resampling.NEAREST)
            canvas.paste(tile, (label_w + pad + c * (tw + pad), y))
    if column_labels:
        for c, text in enumerate(column_labels):
            draw.text((label_w + pad + c * (tw + pad) + 2, 1), str(text), fill=0, font=font)
    return canvas
