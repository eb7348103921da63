"""The realism probes (cxraug/probes): each gives "like real" for two halves of the same real
images and flags what a person would see (washed out, blurred, noisy, a faint fixed pattern); the
checkpoint rule prefers a sharp, right-contrast generator over a blurry one that the standardized
pixel test alone prefers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxraug.probes.battery import SPECS, realism_gap, run_probes, summarize, warnings, worst
from cxraug.probes.cnn import _col2im, _im2col, cnn_two_sample_test
from cxraug.probes.stats import radial_spectra, spectral_bands

LINEAR = tuple(k for k in SPECS if k != "cnn_c2st")


@pytest.fixture(scope="module")
def real64(nih_sample: Path) -> np.ndarray:
    """240 real NIH chest X-rays at 64x64, as `prepare` makes them (the sample's first)."""
    from cxraug.data.images import load_gray

    paths = sorted((nih_sample / "images").glob("*.png"))[:240]
    return np.stack([load_gray(p, 64) for p in paths])


@pytest.fixture(scope="module")
def phantoms() -> np.ndarray:
    from cxraug.data.phantom import render_phantoms

    return render_phantoms(240, 64, seed=3)[0]


def _halves(images: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(len(images))
    return images[order[::2]], images[order[1::2]]


def _blur(images: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """A Gaussian blur (separable, reflect-padded) of uint8 images."""
    r = int(3 * sigma)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    x = np.pad(images.astype(np.float64), ((0, 0), (r, r), (r, r)), mode="reflect")
    x = sum(k[i] * x[:, i:i + images.shape[1], :] for i in range(2 * r + 1))
    x = sum(k[i] * x[:, :, i:i + images.shape[2]] for i in range(2 * r + 1))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _halve_contrast(images: np.ndarray) -> np.ndarray:
    x = images.astype(np.float64)
    mean = x.mean(axis=(1, 2), keepdims=True)
    return np.clip(np.rint(mean + 0.5 * (x - mean)), 0, 255).astype(np.uint8)


def _noisy(images: np.ndarray, sd: float = 12.0) -> np.ndarray:
    noise = np.random.default_rng(5).normal(0, sd, images.shape)
    return np.clip(np.rint(images + noise), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("source", ["real64", "phantoms"])
def test_two_halves_of_the_same_images_look_alike_to_every_linear_probe(
        source: str, request: pytest.FixtureRequest) -> None:
    """Ratios near 1 within the sampling noise of 120 images a side (two random halves of 240
    real images differ by up to ~10% in fine detail: the report shows real vs real beside every
    number for this reason), accuracies near chance."""
    a, b = _halves(request.getfixturevalue(source))
    probes = run_probes(a, b, names=LINEAR)
    for name, p in probes.items():
        if p.kind == "ratio":
            assert 0.85 < p.value < 1.18, (name, p.value)
        elif p.kind == "accuracy":
            assert p.value < 0.64, (name, p.value)
            assert p.low < 0.5 + 0.02 < p.high + 0.1, (name, p.low, p.high)
        else:
            assert abs(p.value) < 0.4, (name, p.value)


def test_washed_out_blurred_and_noisy_real_images_are_flagged(real64: np.ndarray) -> None:
    a, b = _halves(real64)
    ref = summarize(b)
    washed = run_probes(_halve_contrast(a), ref, a, names=LINEAR)
    assert washed["contrast"].value == pytest.approx(0.5, abs=0.05)
    assert not washed["contrast"].passed and washed["histogram_c2st"].value > 0.8
    assert any(w.startswith("washed out") for w in warnings(washed))
    # standardized features cannot see contrast: the sharpness and layout probes stay quiet
    assert washed["hf_energy"].value == pytest.approx(washed["hf_energy"].real, abs=0.05)
    assert washed["pixel_c2st"].value < 0.65
    assert not any(w.startswith(("blurry", "over-sharpened")) for w in warnings(washed))

    blurred = run_probes(_blur(a), ref, a, names=LINEAR)
    assert blurred["hf_energy"].value < 0.6 and not blurred["hf_energy"].passed
    assert blurred["spectrum_c2st"].value > 0.8
    assert any(w.startswith("blurry") for w in warnings(blurred))
    assert blurred["pixel_c2st"].value < 0.65  # the old test alone would have passed it

    noisy = run_probes(_noisy(a), ref, a, names=LINEAR)
    assert noisy["hf_energy"].value > 1.3
    assert any(w.startswith("over-sharpened or noisy") for w in warnings(noisy))
    for probes in (washed, blurred, noisy):
        assert realism_gap(probes) > 1.0


@pytest.mark.slow
def test_the_cnn_sees_a_faint_fixed_pattern_that_the_pixel_test_misses(
        real64: np.ndarray) -> None:
    a, b = _halves(real64)
    yy, xx = np.mgrid[:64, :64]
    pattern = ((yy + xx) % 2 * 2 - 1) * 3.0  # a +-3 grey-level checkerboard in every image
    marked = np.clip(np.rint(a + pattern), 0, 255).astype(np.uint8)
    probes = run_probes(marked, b, a, names=("pixel_c2st", "cnn_c2st"))
    assert probes["pixel_c2st"].value < 0.62 and probes["pixel_c2st"].passed
    assert probes["cnn_c2st"].value > 0.62 and probes["cnn_c2st"].value > probes[
        "cnn_c2st"].real + 0.08
    assert probes["cnn_c2st"].real < 0.62  # two halves of real images: chance
    washed = cnn_two_sample_test(_halve_contrast(a), b)
    assert washed.accuracy > 0.85 and washed.low > 0.75


def test_the_rule_prefers_sharp_right_contrast_over_what_the_pixel_test_prefers(
        real64: np.ndarray) -> None:
    """Two "checkpoints": one blurred and a little washed out (layout intact, so the
    standardized pixel test likes it), one sharp with the right contrast whose layout is off by
    a shift of a few pixels (the pixel test likes it less). The rule picks the sharp one."""
    a, b = _halves(real64)
    blurry = _halve_contrast(_blur(a, 1.2)) // 2 + _blur(a, 1.2) // 2
    shifted = np.roll(a, 3, axis=1)
    probes_blurry = run_probes(blurry, b, names=LINEAR)
    probes_sharp = run_probes(shifted, b, names=LINEAR)
    assert probes_blurry["pixel_c2st"].value < probes_sharp["pixel_c2st"].value
    assert realism_gap(probes_sharp) < realism_gap(probes_blurry)
    assert worst(probes_blurry) in ("hf_energy", "spectrum_c2st", "contrast")


def test_the_tracker_keeps_the_checkpoint_the_rule_prefers(real64: np.ndarray) -> None:
    """RealismTracker.is_best: the lowest realism gap wins, guarded by near-copies and
    diversity; the pixel test's column alone does not decide."""
    from cxraug.training.tracking import RealismTracker

    tracker = RealismTracker.__new__(RealismTracker)
    tracker.best = None
    blurry = {"realism_gap": 3.0, "c2st_val": 0.55, "near_copy": 0.0, "diversity": 1.0}
    sharp = {"realism_gap": 0.8, "c2st_val": 0.62, "near_copy": 0.0, "diversity": 1.0}
    copying = {"realism_gap": 0.1, "c2st_val": 0.5, "near_copy": 0.08, "diversity": 1.0}
    assert tracker.is_best(blurry) and tracker.is_best(sharp)
    assert not tracker.is_best(blurry) and not tracker.is_best(copying)
    assert tracker.best == 0.8


def test_spectral_bands_split_the_power_by_octave() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 64, 64)).astype(np.uint8)
    spectra = radial_spectra(images)
    assert spectra.shape == (8, 32)
    bands = spectral_bands(spectra)
    assert list(bands) == ["1-4", "5-8", "9-16", "17-32"]
    total = sum(bands.values())
    np.testing.assert_allclose(total, 1.0, rtol=1e-9)
    # white noise: power grows with the ring's circumference, so the top octave holds most
    assert float(bands["17-32"].mean()) > 0.5


def test_cnn_gradient_matches_finite_differences() -> None:
    """The hand-written backward pass of the numpy CNN (im2col/col2im adjoint, LeakyReLU, mean
    pooling) is the derivative of its forward pass."""
    from cxraug.probes.cnn import TinyCnn

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (3, 16, 16, 1)).astype(np.float64)
    cols, shape = _im2col(x)
    y = rng.standard_normal(cols.shape)
    back = _col2im(y, shape)
    assert np.sum(cols * y) == pytest.approx(np.sum(x * back), rel=1e-10)  # adjoint pair

    net = TinyCnn(16, rng)
    net.params = [p.astype(np.float64) for p in net.params]
    logit, cache = net.forward(x)
    grads = net.backward(np.ones_like(logit), cache)
    for k in (0, 2, len(net.params) - 2):
        i = tuple(rng.integers(0, s) for s in net.params[k].shape)
        old = net.params[k][i]
        net.params[k][i] = old + 1e-6
        up = net.forward(x)[0].sum()
        net.params[k][i] = old - 1e-6
        down = net.forward(x)[0].sum()
        net.params[k][i] = old
        assert grads[k][i] == pytest.approx((up - down) / 2e-6, rel=1e-4, abs=1e-8)


def test_the_cnn_trains_with_one_blas_thread_whatever_the_caller_set(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Threaded OpenBLAS made the CNN probe 7x slower on 2 busy cores, and its sums depend on the
    thread count: the probe limits BLAS to one thread for its own work, and the caller's setting
    is back afterwards."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from cxraug.probes import cnn

    seen: list[int] = []
    train = cnn.train_cnn

    def recording(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.extend(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")
        return train(*args, **kwargs)

    monkeypatch.setattr(cnn, "train_cnn", recording)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (10, 16, 16), dtype=np.uint8)
    b = rng.integers(0, 128, (10, 16, 16), dtype=np.uint8)
    with threadpool_limits(limits=2, user_api="blas"):
        before = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
        result = cnn_two_sample_test(a, b, folds=2, epochs=2)
        after = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    assert seen and set(seen) == {1}
    assert after == before
    assert 0.0 <= result.accuracy <= 1.0 and result.n_per_side == 10


def test_one_blas_thread_also_limits_a_blas_loaded_after_its_first_use() -> None:
    """CI (stop 26): scipy's own OpenBLAS, loaded after the first limit, kept 2 threads inside the
    CNN probe. A fresh process: limit once, load scipy's BLAS, limit again: every BLAS is at 1."""
    import ast
    import subprocess
    import sys

    pytest.importorskip("scipy", reason="scipy (brought by jax) is the second BLAS this needs")
    script = (
        "from threadpoolctl import threadpool_info\n"
        "from cxraug.blas import one_blas_thread\n"
        "with one_blas_thread(): pass\n"
        "import scipy.linalg\n"
        "with one_blas_thread():\n"
        "    print(sorted({(i['filepath'], i['num_threads']) for i in threadpool_info()\n"
        "                  if i['user_api'] == 'blas'}))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=True)
    seen = ast.literal_eval(done.stdout)  # a printed list of (path, threads)
    assert len({path for path, _ in seen}) >= 2, "scipy brought no second BLAS: nothing checked"
    assert {threads for _, threads in seen} == {1}, seen
