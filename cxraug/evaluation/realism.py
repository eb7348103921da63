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
* **Near-copies**: a synthetic image whose distance to its nearest *training* thumbnail is below
  the ``percentile``-th percentile of held-out real patients' distances to their nearest training
  thumbnail (default 5: closer to a training image than 95% of new patients are).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ..copy_reference import box_average
from ..neighbors import nearest_neighbors

THUMB = 32
#: Repeats of the two-sample test on fresh synthetic images (evaluate reports their mean).
TWO_SAMPLE_REPEATS = 5
#: Below this many images a side the two-sample test is reported as "too few images".
MIN_TWO_SAMPLE = 20


def thumbnails(images: np.ndarray, size: int = THUMB) -> np.ndarray:
    """``[N, H, W]`` (or ``[N, H, W, 1]``) images of any range -> ``[N, size*size]`` float64,
    box-averaged to ``size`` and standardized per image."""
    x = box_average(np.asarray(images, dtype=np.float64), size, dtype=np.float64)
    n = len(x)
    flat = x.reshape(n, -1)
    flat = flat - flat.mean(axis=1, keepdims=True)
    return flat / np.maximum(flat.std(axis=1, keepdims=True), 1e-8)


# ------------------------------------------------------------------------ logistic regression
def fit_logistic(x: np.ndarray, y: np.ndarray, c: float = 1.0, iterations: int = 50,
                 tol: float = 1e-8) -> tuple[np.ndarray, float]:
    """L2-regularized logistic regression by Newton's method: minimizes
    ``sum log(1 + exp(-s_i (w.x_i + b))) + |w|^2 / (2c)`` (the intercept is not penalized), the
    objective of scikit-learn's ``LogisticRegression(C=c)``. Returns ``(w, b)``."""
    n, d = x.shape
    xb = np.hstack([x, np.ones((n, 1))])
    reg = np.full(d + 1, 1.0 / c)
    reg[-1] = 0.0
    beta = np.zeros(d + 1)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(xb @ beta)))
        grad = xb.T @ (p - y) + reg * beta
        hess = (xb.T * (p * (1.0 - p))) @ xb
        hess[np.diag_indices_from(hess)] += reg + 1e-10
        step = np.linalg.solve(hess, grad)
        beta -= step
        if float(np.abs(step).max()) < tol:
            break
    return beta[:-1], float(beta[-1])


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass
class TwoSample:
    """Cross-validated accuracy of a classifier telling set A from set B (0.5 = same), with its
    95% interval; ``repeats`` > 1 when it is the mean over several synthetic draws."""

    accuracy: float
    low: float
    high: float
    n_per_side: int
    repeats: int = 1

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def mean_two_sample(tests: list[TwoSample]) -> TwoSample:
    """The mean accuracy of repeated tests, with Wilson's interval at their common size (the
    repeats share the real side, so they are not independent and the interval is not narrowed)."""
    acc = float(np.mean([t.accuracy for t in tests]))
    n = min(t.n_per_side for t in tests)
    low, high = wilson_interval(round(acc * 2 * n), 2 * n)
    return TwoSample(accuracy=acc, low=low, high=high, n_per_side=n, repeats=len(tests))


def two_sample_test(a: np.ndarray, b: np.ndarray, folds: int = 5, seed: int = 0,
                    c: float = 1.0, max_per_side: int = 1000) -> TwoSample:
    """Classifier two-sample test between thumbnail sets ``a`` and ``b`` ([N, D] each).

    The larger set is subsampled to the smaller one's size (a fixed ``seed``), so that 0.5 is
    chance, and both to at most ``max_per_side`` (the cost grows with N); folds are stratified.
    """
    rng = np.random.default_rng(seed)
    n = min(len(a), len(b), max_per_side)
    if n < folds:
        raise ValueError(f"two-sample test needs at least {folds} images a side, got {n}")
    a = a[rng.permutation(len(a))[:n]]
    b = b[rng.permutation(len(b))[:n]]
    x = np.vstack([a, b])
    y = np.concatenate([np.zeros(n), np.ones(n)])
    fold_of = np.concatenate([rng.permutation(n) % folds, rng.permutation(n) % folds])
    correct = 0
    for k in range(folds):
        test = fold_of == k
        w, bias = fit_logistic(x[~test], y[~test], c=c)
        predicted = (x[test] @ w + bias) > 0
        correct += int(np.sum(predicted == (y[test] > 0.5)))
    low, high = wilson_interval(correct, 2 * n)
    return TwoSample(accuracy=correct / (2 * n), low=low, high=high, n_per_side=n)


# --------------------------------------------------------------------- diversity and copies
def mean_pairwise_distance(x: np.ndarray, max_pairs: int = 20000, seed: int = 0) -> float:
    """Mean Euclidean distance between distinct rows of ``x`` (a random subset of pairs when
    there are more than ``max_pairs``)."""
    n = len(x)
    if n < 2:
        return math.nan
    if n * (n - 1) // 2 <= max_pairs:
        i, j = np.triu_indices(n, k=1)
    else:
        rng = np.random.default_rng(seed)
        i = rng.integers(0, n, max_pairs)
        j = (i + rng.integers(1, n, max_pairs)) % n
    return float(np.mean(np.linalg.norm(x[i] - x[j], axis=1)))


def diversity_ratio(synthetic: np.ndarray, real: np.ndarray, seed: int = 0) -> float:
    """Mean pairwise distance of synthetic thumbnails over that of real ones (1 = as varied)."""
    return mean_pairwise_distance(synthetic, seed=seed) / mean_pairwise_distance(real, seed=seed)


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
                percentile: float = 5.0) -> tuple[NearCopies, np.ndarray]:
    """Near-copy count of ``synthetic`` thumbnails against the ``train`` thumbnails, with the
    threshold from the ``heldout`` thumbnails' own nearest-training distances. Also returns every
    synthetic image's nearest-training distance."""
    _, syn_d = nearest_neighbors(synthetic, train)
    _, ref_d = nearest_neighbors(heldout, train)
    threshold = float(np.percentile(ref_d, percentile))
    close = (syn_d < threshold) | (syn_d == 0)
    result = NearCopies(count=int(close.sum()), fraction=float(close.mean()),
                        threshold=threshold, percentile=percentile,
                        median_ratio=float(np.median(syn_d) / max(np.median(ref_d), 1e-12)),
                        n_reference=len(ref_d))
    return result, syn_d
