"""Realism on small real data without a pretrained network: a classifier two-sample test,
pixel diversity and near-copies, all on per-image standardized thumbnails (numpy only).

Why these and not only FID: with tens of held-out real images per class, FID/KID in a small CNN's
features are noise (KID comes out negative), while a simple classifier asked to tell synthetic
from real images answers a plain question at any N: *can they be told apart?*

* **Thumbnails**: every image is averaged down to ``THUMB`` x ``THUMB`` pixels (box filter) and
  standardized per image (zero mean, unit variance), so brightness and contrast, which differ
  between scanners and which augmentation changes freely, do not count; the global layout of the
  chest (where lungs, heart, diaphragm and borders are) does.
* **Two-sample test** (C2ST, Lopez-Paz & Oquab 2017): L2-regularized logistic regression
  (``C = 1``, like scikit-learn's default) on the thumbnails, ``folds``-fold cross-validated on
  equal numbers of synthetic and real images. 0.5 = indistinguishable, 1.0 = always told apart.
  The interval is Wilson's 95% interval over the held-out predictions.
* **Diversity ratio**: the mean pairwise Euclidean distance between synthetic thumbnails divided by
  the same between real ones. 1 = as varied as real patients; well below 1 = collapse.
* **Near-copies**: the one near-copy rule (:mod:`cxraug.near_copy`, also augment's privacy
  filter's and training's): a synthetic image whose distance to its nearest *training* thumbnail
  is below the ``percentile``-th percentile of held-out real patients' distances to their nearest
  training thumbnail (default 5: closer to a training image than 95% of new patients are).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..near_copy import PERCENTILE, NearCopyReference
from ..probes.stats import (
    THUMB,
    TwoSample,
    diversity_ratio,
    fit_logistic,
    mean_pairwise_distance,
    mean_two_sample,
    thumbnails,
    two_sample_test,
    wilson_interval,
)

#: What this module gives its callers from below the stages (:mod:`cxraug.probes.stats`).
__all__ = ["THUMB", "TwoSample", "fit_logistic", "mean_two_sample", "thumbnails",
           "two_sample_test", "wilson_interval", "mean_pairwise_distance", "diversity_ratio",
           "NearCopies", "near_copies", "TWO_SAMPLE_REPEATS", "MIN_TWO_SAMPLE"]

#: Repeats of the two-sample test on fresh synthetic images (evaluate reports their mean).
TWO_SAMPLE_REPEATS = 5
#: Below this many images a side the two-sample test is reported as "too few images".
MIN_TWO_SAMPLE = 20


# --------------------------------------------------------------------- diversity and copies
@dataclass
class NearCopies:
    """Synthetic images closer to a training image than ``percentile``% of new patients are."""

    count: int
    fraction: float
    threshold: float
    percentile: float
    median_ratio: float  # median synthetic NN distance / median held-out NN distance
    n_reference: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def near_copies(synthetic: np.ndarray, train: np.ndarray, heldout: np.ndarray,
                percentile: float = PERCENTILE) -> tuple[NearCopies, np.ndarray]:
    """Near-copy count of the ``synthetic`` images against the ``train`` images by the one rule
    (:class:`cxraug.near_copy.NearCopyReference`), its threshold from the ``heldout`` images'
    own nearest-training distances (uint8 ``[N, H, W]`` images, all three). Also returns every
    synthetic image's nearest-training distance (in the rule's thumbnail space)."""
    reference = NearCopyReference.fit(train, heldout, percentile)
    check = reference.check(synthetic)
    syn_d, ref_d, close = check.distance, reference.heldout_distances, check.copy
    result = NearCopies(count=int(close.sum()), fraction=float(close.mean()),
                        threshold=reference.threshold, percentile=percentile,
                        median_ratio=float(np.median(syn_d) / max(np.median(ref_d), 1e-12)),
                        n_reference=len(ref_d))
    return result, syn_d
