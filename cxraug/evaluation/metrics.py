"""Image-set metrics on plain numpy arrays: FID, KID, precision/recall, MS-SSIM, AUROC, k-NN.

NO TensorFlow and no scipy: every formula is written out here so that it can be read, tested
against an independent implementation, and run anywhere numpy runs. Feature arrays are
``[N, D]``; image arrays are ``[N, H, W]`` (any real dtype; ``data_range`` says what "white" is).

Formulas (x: features of set A, y: features of set B):

* FID (Frechet distance between Gaussians fitted to A and B):
  ``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2))``. ``S_a S_b`` is not symmetric,
  but it is similar to the symmetric positive semi-definite ``R S_b R`` with ``R = S_a^(1/2)``,
  so ``tr((S_a S_b)^(1/2))`` is the sum of the square roots of the eigenvalues of ``R S_b R``; both
  square roots come from ``numpy.linalg.eigh`` (numpy has no ``sqrtm``). FID is biased upwards at
  small N, so always report N beside it.
* KID: the squared maximum mean discrepancy with the cubic polynomial kernel
  ``k(x, y) = (x.y / d + 1)^3``, unbiased estimator
  ``sum_{i!=j} k(x_i, x_j) / (m(m-1)) + sum_{i!=j} k(y_i, y_j) / (m(m-1)) - 2 sum_{i,j} k(x_i, y_j)
  / m^2``, averaged over random subsets (default 100 subsets of up to 1000 from each set); the
  mean and the standard deviation over subsets are reported. Unbiased: about 0 for two samples of
  the same distribution, and it can be slightly negative.
* Precision / recall on k-NN manifolds (Kynkaanniemi et al. 2019, k = 3): each real sample gets
  the radius of its k-th nearest real neighbour; precision is the share of synthetic samples inside
  at least one real ball (fidelity), recall the share of real samples inside at least one
  synthetic ball, with synthetic radii (coverage).
* SSIM / MS-SSIM (Wang et al. 2003): gaussian window 11x11, sigma 1.5, valid filtering,
  ``K1 = 0.01, K2 = 0.03``; MS-SSIM = ``prod_{j<M} cs_j^{w_j} * ssim_M^{w_M}`` with the standard
  weights ``(0.0448, 0.2856, 0.3001, 0.2363, 0.1333)`` and 2x2 average pooling between scales.
  Small images: the standard 5 scales need a side of at least ``11 * 2^4 = 176`` pixels, so the
  number of scales M is the largest (at most 5) for which the coarsest scale is still at least
  11 pixels, and the first M weights are renormalized to sum to 1 (32x32: 2 scales; 64x64: 3;
  128x128: 4; 176 and up: 5). Images smaller than 11 pixels use one scale with the window shrunk to
  the largest odd size that fits (sigma scaled with it). Negative ``cs``/``ssim`` values are clipped
  to 0 before the fractional powers, as common implementations do.
* AUROC: the Mann-Whitney statistic from ranks, tied scores getting their average rank:
  ``(sum of positive ranks - P(P+1)/2) / (P N)``; NaN when one of the two groups is empty.
* Nearest neighbours: Euclidean, by chunked matrix products ``|q|^2 + |r|^2 - 2 q.r`` in float32
  (memory stays bounded whatever N), then the few best candidates of each query re-measured exactly
  in float64, so an exact copy has distance exactly 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..neighbors import BLOCK_BYTES, NearestNeighbors, nearest_neighbors
from ..neighbors import flat32 as _flat32

__all__ = ["NearestNeighbors", "nearest_neighbors"]

MS_SSIM_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03

#: Bytes one block of a distance matrix may take (float32); keeps k-NN memory bounded.
_BLOCK_BYTES = BLOCK_BYTES


def _as_2d(features: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(features, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a [N, D] array, got shape {arr.shape}")
    return arr


# ------------------------------------------------------------------------------------------ FID
def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (N-1)-normalized covariance of ``[N, D]`` features."""
    x = _as_2d(features, "features")
    if len(x) < 2:
        raise ValueError("FID needs at least 2 samples per set")
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (tiny negative eigenvalues -> 0)."""
    sym = (matrix + matrix.T) / 2
    vals, vecs = np.linalg.eigh(sym)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (see the module docstring)."""
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)
    return max(value, 0.0)


def fid(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FID between two feature sets (biased at small N: report N beside it)."""
    return frechet_distance(*gaussian_stats(features_a), *gaussian_stats(features_b))


# ------------------------------------------------------------------------------------------ KID
def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``k(x, y) = (x.y / d + 1)^3`` for all pairs of rows."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased squared MMD with the cubic polynomial kernel (equal or unequal set sizes)."""
    m, n = len(x), len(y)
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    term_x = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    term_y = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(term_x + term_y - 2.0 * kxy.mean())


def kid(features_a: np.ndarray, features_b: np.ndarray, n_subsets: int = 100,
        subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID: mean and standard deviation of the unbiased squared MMD over random subsets.

    Each subset draws ``min(subset_size, len(a), len(b))`` rows of each set without replacement.
    When that size is the whole of both sets every subset is identical, so one is computed.
    """
    x, y = _as_2d(features_a, "features_a"), _as_2d(features_b, "features_b")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature sizes differ: {x.shape[1]} vs {y.shape[1]}")
    size = min(subset_size, len(x), len(y))
    if size < 2:
        raise ValueError("KID needs at least 2 samples per set")
    if size == len(x) == len(y):
        value = mmd2_unbiased(x, y)
        return value, 0.0
    rng = np.random.default_rng(seed)
    values = np.empty(n_subsets)
    for i in range(n_subsets):
        xs = x[rng.choice(len(x), size, replace=False)]
        ys = y[rng.choice(len(y), size, replace=False)]
        values[i] = mmd2_unbiased(xs, ys)
    return float(values.mean()), float(values.std())


# ------------------------------------------------------------------------- nearest neighbours
def _chunk_rows(n_other: int, dim: int) -> int:
    """Rows per block so that a block of the distance matrix (and its inputs) stays bounded."""
    per_row = 4 * (n_other + dim)
    return max(1, min(4096, _BLOCK_BYTES // max(per_row, 1)))


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """All squared Euclidean distances between rows of ``a`` and ``b`` (float32, clipped at 0)."""
    a, b = _flat32(a), _flat32(b)
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d, 0.0, out=d)


def kth_neighbor_radii(features: np.ndarray, k: int = 3) -> np.ndarray:
    """Distance from each row to its k-th nearest other row of the same set."""
    x = _flat32(features)
    if len(x) <= k:
        raise ValueError(f"k-NN radii need more than k={k} samples, got {len(x)}")
    rows = _chunk_rows(len(x), x.shape[1])
    out = np.empty(len(x))
    for r0 in range(0, len(x), rows):
        d = squared_distances(x[r0:r0 + rows], x)
        # column 0 of the sorted row is the sample itself (distance 0)
        out[r0:r0 + rows] = np.sqrt(np.partition(d, k, axis=1)[:, k])
    return out


def _share_inside_balls(points: np.ndarray, centers: np.ndarray, radii: np.ndarray) -> float:
    p = _flat32(points)
    rows = _chunk_rows(len(centers), p.shape[1])
    inside = np.zeros(len(p), dtype=bool)
    r2 = (radii.astype(np.float64) ** 2)[None, :]
    for r0 in range(0, len(p), rows):
        d = squared_distances(p[r0:r0 + rows], centers)
        inside[r0:r0 + rows] = (d <= r2).any(axis=1)
    return float(inside.mean())


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision (fidelity) and recall (coverage), Kynkaanniemi et al. 2019."""
    real, fake = _flat32(real), _flat32(fake)
    precision = _share_inside_balls(fake, real, kth_neighbor_radii(real, k))
    recall = _share_inside_balls(real, fake, kth_neighbor_radii(fake, k))
    return precision, recall


# --------------------------------------------------------------------------------------- SSIM
def _gaussian_window(size: int, sigma: float) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _filter_valid(images: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of ``[N, H, W]`` with a 1-D window along both axes."""
    view = np.lib.stride_tricks.sliding_window_view(images, len(window), axis=2)
    out = view @ window
    view = np.lib.stride_tricks.sliding_window_view(out, len(window), axis=1)
    return view @ window


def _ssim_terms(x: np.ndarray, y: np.ndarray, data_range: float,
                win: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-image mean SSIM and mean contrast-structure term at one scale."""
    window = _gaussian_window(win, SSIM_SIGMA * win / SSIM_WINDOW)
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    mu_x, mu_y = _filter_valid(x, window), _filter_valid(y, window)
    sxx = _filter_valid(x * x, window) - mu_x**2
    syy = _filter_valid(y * y, window) - mu_y**2
    sxy = _filter_valid(x * y, window) - mu_x * mu_y
    cs_map = (2 * sxy + c2) / (sxx + syy + c2)
    lum_map = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    return (lum_map * cs_map).mean(axis=(1, 2)), cs_map.mean(axis=(1, 2))


def _as_images(images: np.ndarray) -> np.ndarray:
    arr = np.asarray(images, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"expected images [N, H, W], got shape {arr.shape}")
    return arr


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> np.ndarray:
    """Single-scale SSIM of image pairs ``[N, H, W]`` (gaussian 11x11, sigma 1.5) -> ``[N]``."""
    x, y = _as_images(a), _as_images(b)
    win = min(SSIM_WINDOW, _odd_at_most(min(x.shape[1:])))
    return _ssim_terms(x, y, data_range, win)[0]


def _odd_at_most(n: int) -> int:
    return n if n % 2 else n - 1


def ms_ssim_scales(side: int) -> int:
    """Number of MS-SSIM scales used for images whose shorter side is ``side`` pixels."""
    scales = 1
    while scales < len(MS_SSIM_WEIGHTS) and side // 2**scales >= SSIM_WINDOW:
        scales += 1
    return scales


def ms_ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> np.ndarray:
    """Multi-scale SSIM of image pairs ``[N, H, W]`` -> ``[N]`` (scales adapted to size)."""
    x, y = _as_images(a), _as_images(b)
    if x.shape != y.shape:
        raise ValueError(f"image shapes differ: {x.shape} vs {y.shape}")
    scales = ms_ssim_scales(min(x.shape[1:]))
    weights = np.asarray(MS_SSIM_WEIGHTS[:scales])
    weights = weights / weights.sum()
    result = np.ones(len(x))
    for j in range(scales):
        win = min(SSIM_WINDOW, _odd_at_most(min(x.shape[1:])))
        full, cs = _ssim_terms(x, y, data_range, win)
        if j == scales - 1:
            result *= np.clip(full, 0.0, None) ** weights[j]
        else:
            result *= np.clip(cs, 0.0, None) ** weights[j]
            h, w = (x.shape[1] // 2) * 2, (x.shape[2] // 2) * 2
            x = x[:, :h, :w].reshape(len(x), h // 2, 2, w // 2, 2).mean(axis=(2, 4))
            y = y[:, :h, :w].reshape(len(y), h // 2, 2, w // 2, 2).mean(axis=(2, 4))
    return result


def mean_pairwise_ms_ssim(images: np.ndarray, max_pairs: int = 500, data_range: float = 255.0,
                          seed: int = 0, batch: int = 64) -> tuple[float, int]:
    """Mean MS-SSIM over distinct pairs within a set (diversity: lower = more diverse).

    All pairs when there are at most ``max_pairs`` of them, else ``max_pairs`` random distinct
    pairs. Returns the mean and the number of pairs (NaN and 0 for fewer than 2 images).
    """
    x = _as_images(images)
    n = len(x)
    if n < 2:
        return float("nan"), 0
    total = n * (n - 1) // 2
    if total <= max_pairs:
        i, j = np.triu_indices(n, k=1)
    else:
        rng = np.random.default_rng(seed)
        i = rng.integers(0, n, size=max_pairs * 2)
        j = rng.integers(0, n, size=max_pairs * 2)
        keep = i != j
        i, j = i[keep][:max_pairs], j[keep][:max_pairs]
    values = np.concatenate([ms_ssim(x[i[s:s + batch]], x[j[s:s + batch]], data_range)
                             for s in range(0, len(i), batch)])
    return float(values.mean()), int(len(i))


# -------------------------------------------------------------------------------------- AUROC
def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the average of their ranks."""
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    _, inverse, counts = np.unique(sorted_vals, return_inverse=True, return_counts=True)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    avg = starts + (counts + 1) / 2.0
    ranks = np.empty(len(values))
    ranks[order] = avg[inverse]
    return ranks


def auroc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve by the rank (Mann-Whitney) formula; ties count one half."""
    y = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape} vs {s.shape}")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


@dataclass
class SetComparison:
    """FID, KID and precision/recall between one set and a reference set, with the Ns."""

    n_a: int
    n_b: int
    fid: float | None
    kid_mean: float | None
    kid_std: float | None
    precision: float | None
    recall: float | None
    note: str | None = None

    def to_dict(self) -> dict[str, float | int | str | None]:
        return dict(self.__dict__)


def compare_sets(features: np.ndarray, reference: np.ndarray, k: int = 3, seed: int = 0,
                 kid_subsets: int = 100, kid_subset_size: int = 1000,
                 min_reference: int = 0) -> SetComparison:
    """All set-level metrics of ``features`` against ``reference``; ``None`` where N is too small.

    Precision is measured with ``reference`` as the real manifold and ``features`` as the fake one.
    With fewer than ``min_reference`` reference rows nothing is computed: the numbers would be
    noise, and ``note`` says so.
    """
    n_a, n_b = len(features), len(reference)
    f = k_mean = k_std = p = r = None
    if n_b < min_reference:
        return SetComparison(n_a, n_b, f, k_mean, k_std, p, r,
                             note=f"too few held-out images (n={n_b})")
    if n_a >= 2 and n_b >= 2:
        f = fid(features, reference)
        k_mean, k_std = kid(features, reference, kid_subsets, kid_subset_size, seed)
    if n_a > k and n_b > k:
        p, r = precision_recall(reference, features, k)
    return SetComparison(n_a, n_b, f, k_mean, k_std, p, r)
