"""Realism without a pretrained network: thumbnails, the classifier two-sample test, diversity,
near-copies (cxraug.evaluation.realism), and the downstream verdict."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from cxraug.evaluation import realism as R


def _cache_images(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as handle:
        return handle["images"][()]


def test_thumbnails_are_box_averaged_and_standardized() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 64, 64)).astype(np.uint8)
    t = R.thumbnails(images)
    assert t.shape == (5, 32 * 32)
    assert np.allclose(t.mean(1), 0) and np.allclose(t.std(1), 1)
    block = images[0].astype(np.float64).reshape(32, 2, 32, 2).mean((1, 3)).ravel()
    assert np.allclose(t[0], (block - block.mean()) / block.std())
    # brightness and contrast do not count
    assert np.allclose(R.thumbnails(images.astype(np.float64) * 0.5 + 20), t)
    # sizes that do not divide: resized, same result shape
    assert R.thumbnails(rng.random((3, 50, 50))).shape == (3, 1024)


def test_logistic_regression_matches_its_objective_optimum() -> None:
    """Newton's solution has zero gradient of the penalized log-loss."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(80, 6))
    y = (x[:, 0] + 0.5 * rng.normal(size=80) > 0).astype(float)
    w, b = R.fit_logistic(x, y, c=0.7)
    p = 1 / (1 + np.exp(-(x @ w + b)))
    assert np.abs(x.T @ (p - y) + w / 0.7).max() < 1e-6
    assert abs(np.sum(p - y)) < 1e-6  # the intercept is not penalized


def test_logistic_regression_with_fewer_images_than_features_reaches_the_same_optimum() -> None:
    """Below N = D each Newton step is solved in the images' space: the step is the explicit
    Hessian's, and the fit has zero gradient of the penalized log-loss."""
    from cxraug.probes.stats import _newton_step_dual

    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 120))
    y = (np.arange(40) % 2).astype(float)
    x[y == 1] += 0.1
    beta = rng.normal(scale=0.05, size=121)
    xb = np.hstack([x, np.ones((40, 1))])
    p = 1 / (1 + np.exp(-(xb @ beta)))
    reg = np.append(np.full(120, 1 / 0.7), 0.0)
    grad = xb.T @ (p - y) + reg * beta
    hess = (xb.T * (p * (1 - p))) @ xb + np.diag(reg + 1e-10)
    step = _newton_step_dual(x, x @ x.T, p * (1 - p), 1 / 0.7 + 1e-10, grad)
    assert np.allclose(step, np.linalg.solve(hess, grad), rtol=1e-9, atol=1e-12)
    w, b = R.fit_logistic(x, y, c=0.7)
    p = 1 / (1 + np.exp(-(x @ w + b)))
    assert np.abs(x.T @ (p - y) + w / 0.7).max() < 1e-6
    assert abs(np.sum(p - y)) < 1e-6


def test_two_sample_is_chance_for_the_same_images_and_one_for_constants(
        phantom_cache: Path) -> None:
    images = R.thumbnails(_cache_images(phantom_cache))
    order = np.random.default_rng(0).permutation(len(images))
    half = len(images) // 2
    same = R.two_sample_test(images[order[:half]], images[order[half:]])
    assert 0.35 <= same.accuracy <= 0.65 and same.low < 0.5 < same.high
    constant = np.repeat(_cache_images(phantom_cache)[:1], half, axis=0).astype(np.float64)
    constant += np.random.default_rng(1).normal(0, 2, constant.shape)  # not exactly identical
    apart = R.two_sample_test(R.thumbnails(constant), images[order[:half]])
    assert apart.accuracy >= 0.98 and apart.n_per_side == half


@pytest.mark.slow
def test_two_sample_on_real_nih_images(nih_sample: Path, tmp_path: Path) -> None:
    """Real chest X-rays: two halves of the sample ~0.5; against one image repeated ~1.0."""
    from cxraug.data.cache import prepare

    cache = tmp_path / "nih64.h5"
    prepare(data_root=nih_sample, csv=nih_sample / "Data_Entry_2017.csv", out=cache, size=64,
            top_k=14, multi_label="keep", workers=1)
    images = R.thumbnails(_cache_images(cache))
    order = np.random.default_rng(0).permutation(len(images))
    half = len(images) // 2
    same = R.two_sample_test(images[order[:half]], images[order[half:]])
    assert 0.4 <= same.accuracy <= 0.62
    repeated = np.repeat(images[:1], half, axis=0) + np.random.default_rng(2).normal(
        0, 0.05, (half, images.shape[1]))
    assert R.two_sample_test(repeated, images[order[:half]]).accuracy >= 0.98
    assert R.diversity_ratio(repeated, images) < 0.2
    assert 0.9 < R.diversity_ratio(images[order[:half]], images[order[half:]]) < 1.1


def test_mean_two_sample_keeps_the_interval_of_one_test() -> None:
    tests = [R.TwoSample(0.6, 0.5, 0.7, 50), R.TwoSample(0.8, 0.7, 0.9, 50)]
    mean = R.mean_two_sample(tests)
    assert mean.accuracy == pytest.approx(0.7) and mean.repeats == 2
    assert (mean.low, mean.high) == pytest.approx(R.wilson_interval(70, 100))


def test_near_copies_flag_training_images_but_not_new_patients() -> None:
    rng = np.random.default_rng(3)

    def images(n: int) -> np.ndarray:
        return rng.integers(0, 256, (n, 32, 32)).astype(np.uint8)

    train, heldout = images(200), images(100)
    copies = np.clip(train[:10] + rng.integers(-2, 3, (10, 32, 32)), 0, 255).astype(np.uint8)
    synthetic = np.concatenate([copies, images(90)])
    result, dist = R.near_copies(synthetic, train, heldout)
    assert result.count >= 10 and np.all(dist[:10] < result.threshold)
    assert result.fraction <= 0.2 and result.percentile == 5.0
    fresh, _ = R.near_copies(images(100), train, heldout)
    assert fresh.fraction <= 0.15  # about the 5% of new patients below the 5th percentile


def test_downstream_verdict_follows_the_interval() -> None:
    from cxraug.evaluation.downstream import verdict

    rng = np.random.default_rng(4)
    y = (rng.random((120, 3)) < 0.4).astype(np.uint8)
    patients = np.arange(120) // 2  # two images per patient
    noise = rng.random((120, 3))
    helped = verdict(y, noise, y * 0.8 + 0.2 * rng.random((120, 3)), patients, resamples=200)
    assert helped["low"] > 0 and helped["text"].startswith("helped")
    assert helped["n_patients"] == 60
    hurt = verdict(y, y * 0.8 + 0.2 * rng.random((120, 3)), noise, patients, resamples=200)
    assert hurt["high"] < 0 and hurt["text"].startswith("hurt")
    same = verdict(y, noise, noise + 1e-3 * rng.random((120, 3)), patients, resamples=200)
    assert same["low"] <= 0 <= same["high"] and same["text"].startswith("cannot tell")
