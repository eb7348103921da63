"""Each metric against its reference formula, computed independently here (by hand or naively)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from cxraug.evaluation import metrics as m


# ------------------------------------------------------------------------------------- FID
def test_fid_matches_closed_form_for_diagonal_covariances() -> None:
    # For diagonal covariances, tr((S1 S2)^1/2) = sum sqrt(s1_i s2_i), so
    # FID = |mu1 - mu2|^2 + sum (sqrt(s1_i) - sqrt(s2_i))^2.
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([0.5, 1.0, 1.0])
    s1, s2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum()
    got = m.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
    assert got == pytest.approx(expected, rel=1e-10)
    assert expected == pytest.approx(0.25 + 9 + 4 + 1, rel=1e-12)  # the hand computation


def test_fid_full_covariance_matches_rotated_diagonal_case() -> None:
    # FID is invariant under a common rotation of both Gaussians: rotate the diagonal case.
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    d1, d2 = np.array([1.0, 2.0, 3.0, 4.0]), np.array([4.0, 1.0, 2.0, 0.5])
    mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
    expected = m.frechet_distance(mu1, np.diag(d1), mu2, np.diag(d2))
    got = m.frechet_distance(q @ mu1, q @ np.diag(d1) @ q.T, q @ mu2, q @ np.diag(d2) @ q.T)
    assert got == pytest.approx(expected, rel=1e-8)


def test_fid_of_samples_uses_sample_mean_and_unbiased_covariance() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(50, 3)), rng.normal(1.0, 2.0, size=(60, 3))
    assert m.fid(a, a) == pytest.approx(0.0, abs=1e-8)
    # independent: 1-D FID = (mu1 - mu2)^2 + (sd1 - sd2)^2 with ddof=1
    x, y = a[:, :1], b[:, :1]
    expected = (x.mean() - y.mean()) ** 2 + (x.std(ddof=1) - y.std(ddof=1)) ** 2
    assert m.fid(x, y) == pytest.approx(expected, rel=1e-10)


# ------------------------------------------------------------------------------------- KID
def _naive_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]

    def k(u: np.ndarray, v: np.ndarray) -> float:
        return (float(np.dot(u, v)) / d + 1.0) ** 3

    m_, n_ = len(x), len(y)
    sxx = sum(k(x[i], x[j]) for i in range(m_) for j in range(m_) if i != j) / (m_ * (m_ - 1))
    syy = sum(k(y[i], y[j]) for i in range(n_) for j in range(n_) if i != j) / (n_ * (n_ - 1))
    sxy = sum(k(x[i], y[j]) for i in range(m_) for j in range(n_)) / (m_ * n_)
    return sxx + syy - 2 * sxy


def test_kid_matches_naive_double_loop() -> None:
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(9, 4)), rng.normal(0.5, 1.0, size=(7, 4))
    assert m.mmd2_unbiased(x, y) == pytest.approx(_naive_mmd2(x, y), rel=1e-10)
    # equal full-size sets: one subset, zero spread
    x2 = rng.normal(size=(7, 4))
    mean, std = m.kid(x2, y, subset_size=1000)
    assert mean == pytest.approx(_naive_mmd2(x2, y), rel=1e-10)
    assert std == 0.0


def test_kid_subsets_average_the_naive_estimator() -> None:
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(20, 3)), rng.normal(size=(15, 3))
    mean, std = m.kid(x, y, n_subsets=5, subset_size=6, seed=7)
    # replay the same subset draws independently
    r = np.random.default_rng(7)
    vals = []
    for _ in range(5):
        xs = x[r.choice(20, 6, replace=False)]
        ys = y[r.choice(15, 6, replace=False)]
        vals.append(_naive_mmd2(xs, ys))
    assert mean == pytest.approx(np.mean(vals), rel=1e-10)
    assert std == pytest.approx(np.std(vals), rel=1e-8)


def test_kid_is_near_zero_for_one_distribution_and_large_for_another() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    c = rng.normal(1.0, 1.0, size=(400, 8))
    same, _ = m.kid(a, b, n_subsets=20, subset_size=200)
    diff, _ = m.kid(a, c, n_subsets=20, subset_size=200)
    assert abs(same) < 0.05
    assert diff > 20 * max(abs(same), 1e-3)


# ------------------------------------------------------------------------ precision / recall
def test_precision_recall_hand_computed_2d() -> None:
    # real points on a line, k = 1: radii are each point's distance to its nearest real neighbour
    real = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [10.0, 0.0]])
    # radii (k=1): 1, 1, 1, 8
    fake = np.array([[0.5, 0.0], [2.0, 0.9], [5.0, 0.0], [30.0, 0.0]])
    # fake (0.5,0): inside ball of (0,0) r=1 -> yes; (2,0.9) within 1 of (2,0) -> yes;
    # (5,0): distance 5 to (10,0) r=8 -> yes; (30,0): no  => precision 3/4
    # fake radii (k=1): (0.5,0): nearest (2,0.9) at sqrt(2.25+0.81)=1.749; (2,0.9): 1.749;
    # (5,0): nearest (2,0.9) at sqrt(9+0.81)=3.132; (30,0): 25
    # real (0,0): distance 0.5 to fake0 (r 1.749) -> yes; (1,0) -> yes; (2,0): 0.9 to fake1 -> yes;
    # (10,0): 5 to fake2 (r 3.132) no, 20 to fake3 (r 25) -> yes  => recall 4/4
    p, r = m.precision_recall(real, fake, k=1)
    assert p == pytest.approx(0.75)
    assert r == pytest.approx(1.0)
    # shrink the far fake's ball: drop it, then (10,0) is covered by nobody
    p2, r2 = m.precision_recall(real, fake[:3], k=1)
    assert p2 == pytest.approx(1.0)
    assert r2 == pytest.approx(0.75)


def test_kth_radii_match_brute_force() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(30, 5))
    brute = np.array([np.sort([np.linalg.norm(x[i] - x[j]) for j in range(30) if j != i])[2]
                      for i in range(30)])
    np.testing.assert_allclose(m.kth_neighbor_radii(x, k=3), brute, rtol=1e-4)


# --------------------------------------------------------------------------- nearest neighbour
def test_nearest_neighbors_match_brute_force_and_copies_are_exact_zero() -> None:
    rng = np.random.default_rng(6)
    ref = rng.integers(0, 256, size=(50, 16, 16)).astype(np.uint8)
    query = np.concatenate([ref[[3, 17]], rng.integers(0, 256, size=(5, 16, 16)).astype(np.uint8)])
    idx, dist = m.nearest_neighbors(query, ref)
    q, r = query.reshape(7, -1).astype(float), ref.reshape(50, -1).astype(float)
    brute = np.sqrt(((q[:, None] - r[None]) ** 2).sum(-1))
    np.testing.assert_array_equal(idx, brute.argmin(1))
    np.testing.assert_allclose(dist, brute.min(1), rtol=1e-12)
    assert dist[0] == 0.0 and dist[1] == 0.0


def test_nearest_neighbors_streamed_in_blocks_equals_one_pass() -> None:
    rng = np.random.default_rng(7)
    ref, query = rng.normal(size=(100, 12)), rng.normal(size=(20, 12))
    nn = m.NearestNeighbors(query)
    for start in range(0, 100, 33):
        nn.update(ref[start:start + 33], offset=start)
    idx, dist = m.nearest_neighbors(query, ref)
    np.testing.assert_array_equal(nn.index, idx)
    np.testing.assert_allclose(nn.distance, dist)


# ------------------------------------------------------------------------------------- SSIM
def _direct_ssim(x: np.ndarray, y: np.ndarray, data_range: float = 255.0) -> float:
    """Gaussian-weighted SSIM, each 11x11 window computed directly (no separable filtering)."""
    g1 = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    g = np.outer(g1, g1)
    g /= g.sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    vals = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            px, py = x[i:i + 11, j:j + 11], y[i:i + 11, j:j + 11]
            mx, my = (g * px).sum(), (g * py).sum()
            vx = (g * (px - mx) ** 2).sum()
            vy = (g * (py - my) ** 2).sum()
            cov = (g * (px - mx) * (py - my)).sum()
            vals.append(((2 * mx * my + c1) * (2 * cov + c2))
                        / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def test_ssim_matches_direct_windowed_formula() -> None:
    rng = np.random.default_rng(8)
    x = rng.integers(0, 256, size=(20, 24)).astype(float)
    y = np.clip(x + rng.normal(0, 40, size=x.shape), 0, 255)
    assert m.ssim(x, y)[0] == pytest.approx(_direct_ssim(x, y), rel=1e-9)


def _smooth_image(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 128 + 60 * np.sin(6 * xx + rng.uniform(0, 3)) * np.cos(4 * yy) + 20 * xx
    return np.clip(img, 0, 255)


def test_ms_ssim_identical_is_one_and_noise_is_far_below() -> None:
    rng = np.random.default_rng(9)
    img = _smooth_image(rng, 64)
    noise = rng.integers(0, 256, size=(64, 64)).astype(float)
    assert m.ms_ssim(img, img)[0] == pytest.approx(1.0, abs=1e-12)
    assert m.ms_ssim(img, noise)[0] < 0.2
    slightly = np.clip(img + rng.normal(0, 5, img.shape), 0, 255)
    assert m.ms_ssim(img, noise)[0] < m.ms_ssim(img, slightly)[0] < 1.0


def test_ms_ssim_scales_adapt_to_size_and_combine_by_formula() -> None:
    assert [m.ms_ssim_scales(s) for s in (8, 16, 32, 64, 128, 176, 256)] == [1, 1, 2, 3, 4, 5, 5]
    rng = np.random.default_rng(10)
    x = _smooth_image(rng, 32)
    y = np.clip(x + rng.normal(0, 20, x.shape), 0, 255)
    # 32x32 -> 2 scales: cs at full size ^ w1' * ssim at 16x16 ^ w2', weights renormalized
    w = np.array(m.MS_SSIM_WEIGHTS[:2]) / sum(m.MS_SSIM_WEIGHTS[:2])
    _, cs1 = m._ssim_terms(x[None], y[None], 255.0, 11)
    half = lambda a: a.reshape(16, 2, 16, 2).mean(axis=(1, 3))  # noqa: E731
    s2 = _direct_ssim(half(x), half(y))
    expected = max(cs1[0], 0) ** w[0] * max(s2, 0) ** w[1]
    assert m.ms_ssim(x, y)[0] == pytest.approx(expected, rel=1e-9)


def test_mean_pairwise_ms_ssim_all_pairs_and_diversity_order() -> None:
    rng = np.random.default_rng(11)
    imgs = np.stack([_smooth_image(rng, 32) for _ in range(5)])
    mean, n = m.mean_pairwise_ms_ssim(imgs)
    expected = np.mean([m.ms_ssim(imgs[i], imgs[j])[0]
                        for i, j in itertools.combinations(range(5), 2)])
    assert n == 10 and mean == pytest.approx(expected, rel=1e-12)
    same = np.repeat(imgs[:1], 5, axis=0)
    assert m.mean_pairwise_ms_ssim(same)[0] == pytest.approx(1.0)
    noise = rng.integers(0, 256, size=(5, 32, 32)).astype(float)
    assert m.mean_pairwise_ms_ssim(noise)[0] < mean


# ------------------------------------------------------------------------------------ AUROC
def test_auroc_matches_brute_force_pair_count_with_ties() -> None:
    rng = np.random.default_rng(12)
    y = rng.integers(0, 2, size=40)
    s = rng.integers(0, 5, size=40).astype(float)  # many ties
    pos, neg = s[y == 1], s[y == 0]
    brute = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    assert m.auroc(y, s) == pytest.approx(brute / (len(pos) * len(neg)), rel=1e-12)
    assert m.auroc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert m.auroc([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9]) == 0.0
    assert m.auroc([1, 0], [0.5, 0.5]) == 0.5
    assert math.isnan(m.auroc([1, 1], [0.2, 0.3]))


def test_compare_sets_reports_none_when_too_small() -> None:
    rng = np.random.default_rng(13)
    res = m.compare_sets(rng.normal(size=(3, 4)), rng.normal(size=(10, 4)), k=3)
    assert res.fid is not None and res.kid_mean is not None
    assert res.precision is None and res.recall is None
    assert res.n_a == 3 and res.n_b == 10
