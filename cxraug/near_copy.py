"""The near-copy rule: when a synthetic image copies a training image. The one definition that
training's checkpoint choice (:mod:`cxraug.training.tracking`), evaluate's report
(:mod:`cxraug.evaluation.report`) and augment's privacy filter (:mod:`cxraug.copy_reference`,
:mod:`cxraug.synthesis.filters`) apply; numpy only, below the stages.

* **Space**: every image (uint8 ``[N, H, W]``) is box-averaged to a ``THUMB`` x ``THUMB``
  thumbnail, rounded to 8 bits (both sides the same way, so an exact copy is at distance exactly
  0) and standardized per image in float32 (zero mean, unit variance: brightness and contrast do
  not count, the layout of the chest does).
* **Distance**: Euclidean, from an image's standardized thumbnail to the nearest standardized
  *training* thumbnail (candidates in float32, the best few re-measured exactly in float64).
* **Threshold**: the ``PERCENTILE``-th percentile (``method="lower"``: an observed distance) of
  the same distance for held-out real images of *other patients* (a cache's val and test splits).
* **Verdict**: a near-copy when the distance is below the threshold, or exactly 0: closer to a
  training image than 95% of new patients are. So about ``EXPECTED_SHARE`` (5%) of new patients'
  own images count as near-copies by construction.

:class:`CopySearch` is the one search (a reference streamed in blocks of uint8 thumbnails);
:class:`NearCopyReference` is the rule calibrated in memory (training's tracker, tests);
:class:`cxraug.copy_reference.TrainReference` is the same rule read from a file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Side of the thumbnails (also the pixel two-sample test's, :mod:`cxraug.probes.stats`).
THUMB = 32
#: The threshold: this percentile of held-out real images' distances to the training set.
PERCENTILE = 5.0
#: The share of new patients' own images the rule counts as near-copies, by construction.
EXPECTED_SHARE = PERCENTILE / 100.0
#: Candidates of each reference block re-measured exactly in float64.
REFINE = 4
#: Bytes a block of the search may take (the float32 products and the float64 re-measurement).
BLOCK_BYTES = 64 * 1024 * 1024


def box_average(images: np.ndarray, size: int = THUMB, dtype: type = np.float32) -> np.ndarray:
    """``[N, H, W]`` (or ``[N, H, W, 1]``) -> ``[N, size, size]`` box averages in ``dtype`` (a
    reshape-mean when the side divides, Pillow's BOX filter otherwise). The thumbnails of the
    near-copy rule here and of the realism measures (:mod:`cxraug.probes.stats`)."""
    x = np.asarray(images)
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 3:
        raise ValueError(f"expected [N, H, W] images, got shape {x.shape}")
    n, h, w = x.shape
    if h % size == 0 and w % size == 0:
        return x.astype(dtype).reshape(n, size, h // size, size, w // size).mean(axis=(2, 4))
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(im.astype(np.float32), mode="F")
                                .resize((size, size), Image.Resampling.BOX)) for im in x]
                    ).astype(dtype)


def thumbnails_u8(images: np.ndarray, size: int = THUMB) -> np.ndarray:
    """uint8 ``[N, H, W]`` -> uint8 ``[N, size*size]``: box-averaged, rounded. Both sides of the
    comparison are rounded the same way, so an exact copy is at distance exactly 0."""
    avg = box_average(images, size)
    return np.clip(np.rint(avg), 0, 255).astype(np.uint8).reshape(len(avg), -1)


def standardize(thumbs: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per row (float32): brightness and contrast do not count."""
    x = np.asarray(thumbs, dtype=np.float32)
    x = x - x.mean(axis=1, keepdims=True)
    return x / np.maximum(x.std(axis=1, keepdims=True), 1e-6)


def row_scale(thumbs_u8: np.ndarray) -> np.ndarray:
    """Each uint8 thumbnail's standard deviation (float32, floored like :func:`standardize`)."""
    return np.maximum(np.asarray(thumbs_u8).astype(np.float32).std(axis=1), 1e-6)


def threshold(heldout_distances: np.ndarray, percentile: float = PERCENTILE) -> float:
    """The near-copy threshold from held-out real images' distances to the training set: an
    observed distance ("lower"), so no held-out patient below it counts as a copy by accident
    of interpolation (with fewer than 100 held-out images, the smallest one)."""
    d = np.asarray(heldout_distances, dtype=np.float64)
    if len(d) == 0:
        raise ValueError("the near-copy threshold needs at least one held-out distance")
    return float(np.percentile(d, percentile, method="lower"))


def is_copy(distance: np.ndarray, threshold: float) -> np.ndarray:
    """The verdict: below the threshold, or exactly 0 (an exact copy, whatever the threshold)."""
    d = np.asarray(distance)
    return (d < threshold) | (d == 0)


@dataclass
class CopyCheck:
    """Each query's distance to its nearest training thumbnail and the verdict."""

    distance: np.ndarray  # float64 [N]
    copy: np.ndarray  # bool [N]
    index: np.ndarray | None = None  # int64 [N]: row of the nearest training thumbnail


class CopySearch:
    """Running nearest standardized training thumbnail of each query thumbnail, over a
    reference fed in blocks of uint8 thumbnails (``update``), so the reference may be read from
    a file block by block. Candidates come from ``q . r_std = (q . r) / scale_r`` (a standardized
    query sums to 0, so the reference's mean drops out and its raw rows are used as they are); the
    best ``REFINE`` of each block are re-measured exactly in float64, so an exact copy is at
    distance exactly 0 and no query depends on the others in its batch."""

    def __init__(self, query_thumbs_u8: np.ndarray, refine: int = REFINE) -> None:
        self.q = standardize(query_thumbs_u8)
        self.refine = refine
        self._qn = (self.q * self.q).sum(axis=1)
        self.distance = np.full(len(self.q), np.inf)
        self.index = np.full(len(self.q), -1, dtype=np.int64)

    def update(self, thumbs_u8: np.ndarray, offset: int = 0,
               scale: np.ndarray | None = None) -> None:
        """One block of reference rows (uint8 ``[M, THUMB*THUMB]``), rows ``offset..``; ``scale``:
        their :func:`row_scale` when the caller keeps it."""
        block = np.asarray(thumbs_u8)
        if len(block) == 0 or len(self.q) == 0:
            return
        dim = self.q.shape[1]
        if block.shape[1] != dim:
            raise ValueError(f"thumbnail size mismatch: {block.shape[1]} vs {dim}")
        scale = row_scale(block) if scale is None else scale
        ref = block.astype(np.float32)
        k = min(self.refine, len(block))
        rows = max(1, min(BLOCK_BYTES // (4 * len(block)), BLOCK_BYTES // (8 * k * dim)))
        for q0 in range(0, len(self.q), rows):
            q = self.q[q0:q0 + rows]
            d2 = self._qn[q0:q0 + len(q), None] + float(dim) - 2.0 * (q @ ref.T) / scale[None, :]
            cand = np.argpartition(d2, k - 1, axis=1)[:, :k]
            exact_ref = standardize(block[cand.ravel()]).astype(np.float64).reshape(len(q), k, dim)
            exact = np.sqrt(((q.astype(np.float64)[:, None, :] - exact_ref) ** 2).sum(-1))
            best = exact.argmin(axis=1)
            best_d = exact[np.arange(len(q)), best]
            sl = slice(q0, q0 + len(q))
            better = best_d < self.distance[sl]
            self.distance[sl] = np.where(better, best_d, self.distance[sl])
            self.index[sl] = np.where(better, cand[np.arange(len(q)), best] + offset,
                                      self.index[sl])


class NearCopyReference:
    """The rule calibrated in memory: training thumbnails and the held-out threshold."""

    def __init__(self, train_thumbs_u8: np.ndarray, heldout_distances: np.ndarray,
                 percentile: float = PERCENTILE) -> None:
        self.thumbs = np.asarray(train_thumbs_u8, dtype=np.uint8)
        if len(self.thumbs) == 0:
            raise ValueError("a near-copy reference needs at least one training image")
        self.scale = row_scale(self.thumbs)
        self.heldout_distances = np.sort(np.asarray(heldout_distances, dtype=np.float64))
        self.percentile = float(percentile)
        self.threshold = threshold(self.heldout_distances, self.percentile)

    @classmethod
    def fit(cls, train_images: np.ndarray, heldout_images: np.ndarray,
            percentile: float = PERCENTILE) -> NearCopyReference:
        """From uint8 training images and held-out images of other patients."""
        return cls.from_thumbnails(thumbnails_u8(train_images), thumbnails_u8(heldout_images),
                                   percentile)

    @classmethod
    def from_thumbnails(cls, train_thumbs_u8: np.ndarray, heldout_thumbs_u8: np.ndarray,
                        percentile: float = PERCENTILE) -> NearCopyReference:
        """From :func:`thumbnails_u8` of both sets (a caller that reads them in blocks)."""
        search = CopySearch(heldout_thumbs_u8)
        search.update(train_thumbs_u8)
        return cls(train_thumbs_u8, search.distance, percentile)

    def check(self, images: np.ndarray) -> CopyCheck:
        """Which of these uint8 images are near-copies of a training image."""
        search = CopySearch(thumbnails_u8(images))
        search.update(self.thumbs, scale=self.scale)
        return CopyCheck(distance=search.distance, copy=is_copy(search.distance, self.threshold),
                         index=search.index)
