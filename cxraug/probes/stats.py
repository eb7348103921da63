"""Two-sample statistics below the stages (numpy only): a linear classifier two-sample test on
any per-image features, Wilson's interval, and the per-image features the realism probes use
(intensity histograms, radially averaged power spectra).

The linear test (C2ST, Lopez-Paz & Oquab 2017): L2-regularized logistic regression (``C = 1``,
scikit-learn's default objective) on the features, ``folds``-fold cross-validated on equal numbers
of the two sets; 0.5 = indistinguishable, 1.0 = always told apart.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ..blas import one_blas_thread

# the thumbnails' side (THUMB) and box filter are the near-copy rule's: one definition
from ..near_copy import THUMB, box_average


def thumbnails(images: np.ndarray, size: int = THUMB) -> np.ndarray:
    """``[N, H, W]`` (or ``[N, H, W, 1]``) images of any range -> ``[N, size*size]`` float64,
    box-averaged to ``size`` and standardized per image: the space of the pixel two-sample test
    and of diversity. Near-copies are decided in :mod:`cxraug.near_copy`'s space (the same
    thumbnails rounded to 8 bits, float32), never on these."""
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
    objective of scikit-learn's ``LogisticRegression(C=c)``. Returns ``(w, b)``.

    With fewer images than features (the pixel test: ~200 images of 32x32 = 1024 features) each
    Newton step is solved in the images' space (:func:`_newton_step_dual`): the same step, with
    a system of N equations instead of D: 14x faster for a fold of 122 images a side
    (benchmarks/logistic.py)."""
    n, d = x.shape
    xb = np.hstack([x, np.ones((n, 1))])
    reg = np.full(d + 1, 1.0 / c)
    reg[-1] = 0.0
    beta = np.zeros(d + 1)
    gram = x @ x.T if n < d else None
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(xb @ beta)))
        grad = xb.T @ (p - y) + reg * beta
        if gram is None:
            hess = (xb.T * (p * (1.0 - p))) @ xb
            hess[np.diag_indices_from(hess)] += reg + 1e-10
            step = np.linalg.solve(hess, grad)
        else:
            step = _newton_step_dual(x, gram, p * (1.0 - p), 1.0 / c + 1e-10, grad)
        beta -= step
        if float(np.abs(step).max()) < tol:
            break
    return beta[:-1], float(beta[-1])


def _newton_step_dual(x: np.ndarray, gram: np.ndarray, curvature: np.ndarray, lam: float,
                      grad: np.ndarray) -> np.ndarray:
    """The primal Newton step ``H^-1 grad`` for ``H = [X 1]^T W [X 1] + diag(lam, .., lam, 1e-10)``
    (``W = diag(curvature)``), computed with N x N systems only.

    The weights' block ``A = X^T W X + lam I`` is inverted by Woodbury in its stable form,
    ``A^-1 v = (v - X^T S M^-1 S X v) / lam`` with ``S = W^1/2`` and ``M = lam I + S X X^T S``
    (``gram = X X^T``, computed once per fit); the unpenalized intercept is eliminated by its
    Schur complement."""
    root = np.sqrt(curvature)
    m = gram * root[:, None] * root[None, :]
    m[np.diag_indices_from(m)] += lam

    def a_inv(v: np.ndarray) -> np.ndarray:
        return (v - x.T @ (root * np.linalg.solve(m, root * (x @ v)))) / lam

    g_w, g_b = grad[:-1], grad[-1]
    coupling = x.T @ curvature  # H's off-diagonal column: X^T W 1
    a_inv_g, a_inv_c = a_inv(g_w), a_inv(coupling)
    schur = curvature.sum() + 1e-10 - coupling @ a_inv_c
    step_b = (g_b - coupling @ a_inv_g) / schur
    return np.append(a_inv_g - a_inv_c * step_b, step_b)


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

    Runs with one BLAS thread: its N x N solves are small, and threaded OpenBLAS made the test 7x
    slower on 2 busy cores (benchmarks/logistic.py), as it did the CNN probe.
    """
    with one_blas_thread():
        return _two_sample_test(a, b, folds, seed, c, max_per_side)


def _two_sample_test(a: np.ndarray, b: np.ndarray, folds: int, seed: int, c: float,
                     max_per_side: int) -> TwoSample:
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


def feature_two_sample(a: np.ndarray, b: np.ndarray, folds: int = 5, seed: int = 0,
                       max_per_side: int = 1000) -> TwoSample:
    """:func:`two_sample_test` on per-image features of any scale: each column is standardized
    over both sets together first (no labels are used, so nothing leaks between folds)."""
    x = np.vstack([a, b]).astype(np.float64)
    mean, std = x.mean(0), x.std(0)
    std[std < 1e-12] = 1.0
    return two_sample_test((a - mean) / std, (b - mean) / std, folds=folds, seed=seed,
                           max_per_side=max_per_side)


# ------------------------------------------------------------------------ per-image features
#: Bins of the intensity histograms (over 0..255).
HISTOGRAM_BINS = 32


def as_gray(images: np.ndarray) -> np.ndarray:
    """``[N, H, W]`` or ``[N, H, W, 1]`` in 0..255 -> float64 ``[N, H, W]``."""
    x = np.asarray(images)
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 3:
        raise ValueError(f"expected [N, H, W] images, got shape {x.shape}")
    return x.astype(np.float64)


def intensity_histograms(images: np.ndarray, bins: int = HISTOGRAM_BINS) -> np.ndarray:
    """``[N, bins]``: each image's share of pixels per grey-level bin (0..255)."""
    x = as_gray(images)
    idx = np.clip((x * (bins / 256.0)).astype(np.int64), 0, bins - 1).reshape(len(x), -1)
    counts = np.zeros((len(x), bins))
    np.add.at(counts, (np.repeat(np.arange(len(x)), idx.shape[1]), idx.ravel()), 1.0)
    return counts / idx.shape[1]


def radial_spectra(images: np.ndarray) -> np.ndarray:
    """``[N, S/2]``: the power of each per-image standardized, Hann-windowed image summed over
    rings of integer radius 1..S/2 of the 2-D spectrum (radius in cycles per image; S/2 is
    Nyquist). Standardized, so contrast does not count: only how the image's detail is spread
    over scales, which is what blur and noise change."""
    x = as_gray(images)
    n, h, w = x.shape
    x = x - x.mean(axis=(1, 2), keepdims=True)
    x = x / np.maximum(x.std(axis=(1, 2), keepdims=True), 1e-8)
    x = x * np.outer(np.hanning(h), np.hanning(w))
    power = np.abs(np.fft.fft2(x)) ** 2
    fy = np.fft.fftfreq(h) * h
    fx = np.fft.fftfreq(w) * w
    radius = np.rint(np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)).astype(np.int64)
    rings = min(h, w) // 2
    out = np.zeros((n, rings))
    for r in range(1, rings + 1):
        out[:, r - 1] = power[:, radius == r].sum(axis=1)
    return out


def spectral_bands(spectra: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image share of the power in octave bands of :func:`radial_spectra`, keyed by their
    rings in cycles per image ("17-32" at 64x64: the top octave, the upper half of spatial
    frequencies)."""
    rings = spectra.shape[1]
    total = np.maximum(spectra.sum(axis=1), 1e-300)
    bands, hi = {}, rings
    while hi > rings // 8 and hi >= 2:
        lo = hi // 2
        bands[f"{lo + 1}-{hi}"] = spectra[:, lo:hi].sum(axis=1) / total
        hi = lo
    bands[f"1-{hi}"] = spectra[:, :hi].sum(axis=1) / total
    return dict(reversed(list(bands.items())))
