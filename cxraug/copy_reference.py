"""The training-image reference behind augment's privacy filter, written to a file: which
synthetic images are near-copies of a training image. NO TensorFlow; shared by export (writes one
beside the model), augment (filters with it), evaluate (its near-copy count) and anything else that
asks "does this image copy a patient?".

The rule and its parameters are :mod:`cxraug.near_copy`'s (the one rule training's checkpoint
choice and evaluate's report apply too): 32x32 thumbnails rounded to 8 bits and standardized per
image; a near-copy is closer to the nearest *training* thumbnail than the ``percentile``-th
percentile (default 5) of the same distance for held-out real images of *other patients* (the
cache's val and test splits), or at distance 0.

File ``MODEL.trainref.h5`` (format ``cxraug-train-reference-1``): dataset ``thumbs`` uint8
``[N, 1024]`` (the training thumbnails, chunked by row blocks) and attributes ``threshold``,
``percentile``, ``n_heldout``, ``heldout_distances`` (JSON, sorted), ``data_fingerprint``,
``source`` and ``cxraug_version``. Size: 1 KiB per training image (362 KiB for the NIH sample, about
85 MiB for NIH's 86,524 training images). It holds coarse copies of the training images: keep it
where the training data may be, and never ship it with a synthetic data set.

Memory stays flat in N: up to ``IN_MEMORY_ROWS`` thumbnails are held in memory, a larger
reference is read from the file in blocks for every query batch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .blas import one_blas_thread
from .errors import CxrError
from .near_copy import (
    PERCENTILE,
    THUMB,
    CopyCheck,
    CopySearch,
    box_average,
    is_copy,
    row_scale,
    standardize,
    threshold,
    thumbnails_u8,
)

#: What this module gives its callers from :mod:`cxraug.near_copy` (the same objects).
__all__ = ["FORMAT", "SUFFIX", "THUMB", "DEFAULT_PERCENTILE", "CopyCheck", "TrainReference",
           "box_average", "reference_path", "standardize", "thumbnails_u8",
           "write_reference"]

FORMAT = "cxraug-train-reference-1"
SUFFIX = ".trainref.h5"
#: The rule's percentile (:data:`cxraug.near_copy.PERCENTILE`), augment's --privacy-percentile.
DEFAULT_PERCENTILE = PERCENTILE
#: References up to this many thumbnails are kept in memory (uint8, 1 KiB each: 16 MiB).
IN_MEMORY_ROWS = 16384
#: Rows read from the file per block when the reference is streamed.
BLOCK_ROWS = 8192


def reference_path(model: str | os.PathLike) -> Path:
    """Where the reference of ``MODEL.onnx`` lives: ``MODEL.trainref.h5`` beside it."""
    model = Path(model)
    return model.with_name(model.stem + SUFFIX)


class TrainReference:
    """An opened reference: ``check(images_u8)`` says which images are near-copies."""

    def __init__(self, path: str | os.PathLike, percentile: float | None = None) -> None:
        """``percentile``: another rule than the one the file was written with (its held-out
        distances are stored, so the threshold is re-measured, not guessed)."""
        import h5py

        self.path = Path(path)
        if not self.path.is_file():
            raise CxrError(f"training reference {self.path} not found; make it with "
                           "`cxraug export-onnx` (beside the model) or give --data CACHE")
        try:
            self._file = h5py.File(self.path, "r")
            attrs = self._file.attrs
            if attrs.get("format") != FORMAT:
                raise OSError("not a reference")
            self._thumbs = self._file["thumbs"]
            self.threshold = float(attrs["threshold"])
            self.percentile = float(attrs["percentile"])
            self.n_heldout = int(attrs["n_heldout"])
            self.data_fingerprint = str(attrs.get("data_fingerprint", ""))
            self.source = str(attrs.get("source", ""))
            held = np.asarray(json.loads(str(attrs["heldout_distances"])), dtype=np.float64)
        except (OSError, KeyError, ValueError) as exc:
            raise CxrError(f"{self.path}: not a cxraug training reference ({exc}); rebuild it "
                           "with `cxraug export-onnx` or pass --data CACHE") from None
        if percentile is not None and percentile != self.percentile:
            if not 0 < percentile < 100:
                raise CxrError(f"--privacy-percentile {percentile}: give a percentile between 0 "
                               "and 100")
            self.percentile = float(percentile)
            self.threshold = threshold(held, percentile)
        self.n = int(self._thumbs.shape[0])
        self._memory = self._thumbs[:] if self.n <= IN_MEMORY_ROWS else None
        # per-row scale (4 bytes a row), so a block is searched in its raw uint8 form
        self._scale = np.empty(self.n, np.float32)
        for r0, block in self._blocks():
            self._scale[r0:r0 + len(block)] = row_scale(block)

    def _blocks(self) -> Any:
        """(first row, uint8 rows) of the reference, from memory or read from the file."""
        for r0 in range(0, self.n, BLOCK_ROWS):
            yield r0, (self._memory[r0:r0 + BLOCK_ROWS] if self._memory is not None
                       else self._thumbs[r0:r0 + BLOCK_ROWS])

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> TrainReference:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        """What the manifest records about the rule."""
        return {"threshold": round(self.threshold, 6), "percentile": self.percentile,
                "n_train": self.n, "n_heldout": self.n_heldout, "space": f"{THUMB}x{THUMB} "
                "thumbnails, standardized per image", "data_fingerprint": self.data_fingerprint}

    def search(self, images_u8: np.ndarray) -> CopySearch:
        """The rule's search (:class:`cxraug.near_copy.CopySearch`) of these images over the
        reference, block by block."""
        search = CopySearch(thumbnails_u8(images_u8))
        for r0, block in self._blocks():
            search.update(block, offset=r0, scale=self._scale[r0:r0 + len(block)])
        return search

    def nearest(self, images_u8: np.ndarray) -> np.ndarray:
        """Distance of each image's standardized thumbnail to the nearest standardized training
        thumbnail (float64; exactly 0 for an exact copy)."""
        return self.search(images_u8).distance

    def check(self, images_u8: np.ndarray) -> CopyCheck:
        """The rule's verdict on each image, its distance and the row of its nearest training
        thumbnail (the order of the cache's train split the reference was built from)."""
        if self.n > IN_MEMORY_ROWS:  # the search dominates: every core helps more than it costs
            with one_blas_thread(threads=os.cpu_count() or 1):
                search = self.search(images_u8)
        else:
            with one_blas_thread():
                search = self.search(images_u8)
        return CopyCheck(distance=search.distance, copy=is_copy(search.distance, self.threshold),
                         index=search.index)


def write_reference(out: str | os.PathLike, train: Callable[[int, int], np.ndarray], n_train: int,
                    heldout: Callable[[int, int], np.ndarray], n_heldout: int, *,
                    percentile: float = DEFAULT_PERCENTILE, data_fingerprint: str, source: str,
                    progress: bool = False) -> Path:
    """Write a reference file: the thumbnails of ``n_train`` training images and the threshold
    measured on ``n_heldout`` held-out images of other patients. ``train(start, stop)`` and
    ``heldout(start, stop)`` give those rows as uint8 ``[stop - start, H, W]``; they are read in
    blocks, so memory is flat in the number of images. (A cache's reference:
    :func:`cxraug.data.reference.build_reference`.)"""
    import h5py

    from .io_utils import atomic_path
    from .progress import progress_bar

    out = Path(out)
    search = CopySearch(np.concatenate([thumbnails_u8(heldout(s, min(s + 2048, n_heldout)))
                                        for s in range(0, n_heldout, 2048)]))
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        rows = min(n_train, 1024)
        ds = f.create_dataset("thumbs", shape=(n_train, THUMB * THUMB), dtype=np.uint8,
                              chunks=(rows, THUMB * THUMB))
        for s in progress_bar(range(0, n_train, 2048), desc="training reference",
                              unit="block", disable=not progress, leave=False):
            block = thumbnails_u8(train(s, min(s + 2048, n_train)))
            ds[s:s + len(block)] = block
            search.update(block, offset=s)
        held_d = np.sort(search.distance)
        f.attrs.update({
            "format": FORMAT, "threshold": threshold(held_d, percentile),
            "percentile": float(percentile),
            "n_heldout": n_heldout, "heldout_distances": json.dumps(
                [round(float(d), 5) for d in held_d]),
            "data_fingerprint": str(data_fingerprint), "source": str(source),
            "cxraug_version": __version__})
    return out
