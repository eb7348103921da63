"""The one near-copy rule (cxraug.near_copy): its pieces, and the same images fed to the three
places that decide "is this a copy of a training image?" (evaluate's report, training's
checkpoint tracker, augment's privacy filter) get the same verdicts and distances."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxraug import near_copy as NC
from cxraug.data.cache import CacheReader


# ------------------------------------------------------------------------------ the pieces
def test_one_set_of_parameters() -> None:
    """Every caller takes the rule's parameters from cxraug.near_copy (no second copy)."""
    from cxraug import copy_reference
    from cxraug.evaluation import realism, report
    from cxraug.probes import stats
    from cxraug.training import tracking

    assert NC.THUMB == 32 and NC.PERCENTILE == 5.0 and NC.EXPECTED_SHARE == 0.05
    assert copy_reference.THUMB is NC.THUMB and stats.THUMB is NC.THUMB
    assert realism.THUMB is NC.THUMB
    assert copy_reference.DEFAULT_PERCENTILE is NC.PERCENTILE
    assert copy_reference.CopyCheck is NC.CopyCheck
    assert copy_reference.thumbnails_u8 is NC.thumbnails_u8
    assert stats.box_average is NC.box_average
    assert tracking.MAX_NEAR_COPY == NC.EXPECTED_SHARE
    assert report.NEAR_COPY_WARNING == 2 * NC.EXPECTED_SHARE
    for module in (copy_reference, report, tracking):
        assert not hasattr(module, "NEAR_COPY_PERCENTILE")


def test_threshold_is_an_observed_distance_and_zero_is_always_a_copy() -> None:
    d = np.arange(1.0, 201.0)  # 200 held-out distances
    assert NC.threshold(d) == 10.0  # the 5th percentile, "lower": an observed value
    assert NC.threshold(d[:50]) == 3.0
    assert NC.threshold(d[:10]) == 1.0  # fewer than 20: the smallest one
    assert NC.threshold(d, 50) == 100.0
    with pytest.raises(ValueError):
        NC.threshold(np.array([]))
    assert NC.is_copy(np.array([0.0, 9.99, 10.0, 11.0]), 10.0).tolist() == [True, True, False,
                                                                              False]
    assert NC.is_copy(np.array([0.0, 0.5]), 0.0).tolist() == [True, False]


def test_search_is_exact_and_the_same_in_blocks() -> None:
    """CopySearch finds the true nearest standardized thumbnail (brute force in float64), an
    exact copy at distance exactly 0, whatever the block size of the reference."""
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, (300, NC.THUMB * NC.THUMB), dtype=np.uint8)
    query = np.concatenate([ref[[5, 77, 299]],
                            rng.integers(0, 256, (20, NC.THUMB * NC.THUMB), dtype=np.uint8)])
    whole = NC.CopySearch(query)
    whole.update(ref)
    brute = np.sqrt(((NC.standardize(query).astype(np.float64)[:, None]
                      - NC.standardize(ref).astype(np.float64)[None]) ** 2).sum(-1))
    np.testing.assert_allclose(whole.distance, brute.min(1), rtol=0, atol=1e-9)
    assert whole.index.tolist() == brute.argmin(1).tolist()
    assert whole.distance[:3].tolist() == [0.0, 0.0, 0.0]
    assert whole.index[:3].tolist() == [5, 77, 299]
    blocks = NC.CopySearch(query)
    for r0 in range(0, len(ref), 64):
        blocks.update(ref[r0:r0 + 64], offset=r0)
    assert np.array_equal(blocks.distance, whole.distance)
    assert np.array_equal(blocks.index, whole.index)


def test_thumbnails_ignore_brightness_and_contrast() -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 200, (4, 64, 64)).astype(np.uint8)
    thumbs = NC.thumbnails_u8(images)
    assert thumbs.shape == (4, 1024) and thumbs.dtype == np.uint8
    brighter = (images.astype(np.int16) + 40).astype(np.uint8)
    flatter = np.rint(images * 0.5 + 60).astype(np.uint8)
    others = rng.integers(0, 256, (30, 64, 64)).astype(np.uint8)
    ref = NC.NearCopyReference.fit(images, others)
    for changed in (brighter, flatter):
        check = ref.check(changed)
        assert check.copy.all() and check.index.tolist() == [0, 1, 2, 3]
        assert check.distance.max() < 0.1 * ref.threshold
    assert NC.box_average(rng.random((2, 50, 50))).shape == (2, 32, 32)  # Pillow's BOX path


# ---------------------------------------------------------------- the same rule, three places
@pytest.fixture(scope="module")
def cache_images(phantom_cache: Path) -> dict[str, np.ndarray]:
    with CacheReader(phantom_cache) as reader:
        return {s: np.asarray(reader.read(np.sort(np.asarray(reader.indices(s)))))
                for s in ("train", "val", "test")}


@pytest.fixture(scope="module")
def queries(cache_images: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Exact copies of training images, brightened and contrast-changed copies, other patients'
    images (val and test) and images that are clearly no chest X-ray at all."""
    rng = np.random.default_rng(7)
    train = cache_images["train"]
    size = train.shape[1]
    yy, xx = np.mgrid[0:size, 0:size]
    different = np.stack([rng.integers(0, 256, (size, size)),  # noise
                          (xx * 255 // (size - 1)),  # a horizontal ramp
                          np.where((xx // 4 + yy // 4) % 2 == 0, 30, 220)]).astype(np.uint8)
    return {"copies": train[:12],
            "altered": np.clip(train[12:20].astype(np.float64) * 0.7 + 40, 0, 255
                               ).astype(np.uint8),
            "heldout": np.concatenate([cache_images["val"], cache_images["test"]]),
            "different": different}


def _three_paths(cache: Path, images: np.ndarray, tmp: Path,
                 monkeypatch: pytest.MonkeyPatch) -> dict[str, NC.CopyCheck]:
    """Each place's own code path: evaluate's near-copy check, the training tracker (its
    constructor reads the cache itself), augment's filters with the reference export writes."""
    from cxraug.copy_reference import TrainReference
    from cxraug.data.reference import build_reference
    from cxraug.evaluation.report import near_copy_check
    from cxraug.synthesis.filters import PRIVACY, Filters
    from cxraug.training import tracking

    report = near_copy_check(cache, images)
    # the realism probes (a CNN among them) are not part of the near-copy rule: skipped here
    monkeypatch.setattr(tracking, "run_probes", lambda *a, **k: {})
    with CacheReader(cache) as reader:
        pool = np.asarray(reader.labels)[np.asarray(reader.indices("train"))].astype(np.int32)
    tracker = tracking.RealismTracker(cache, pool, latent_dim=8, n=16, seed=0)
    with TrainReference(build_reference(cache, tmp / "model.trainref.h5")) as ref:
        filters = Filters(privacy=ref)
        verdicts = filters.verdicts(images, [(0,)] * len(images))
        privacy = ref.check(images)
        assert np.array_equal(verdicts == PRIVACY, privacy.copy)
        assert report["threshold"] == ref.threshold == tracker.copies.threshold
        assert report["percentile"] == ref.percentile == tracker.copies.percentile
    return {"report": NC.CopyCheck(report["distance"], report["copy"]),
            "tracker": tracker.near_copies(images), "privacy filter": privacy}


def test_report_tracker_and_privacy_filter_agree(
        phantom_cache: Path, cache_images: dict[str, np.ndarray],
        queries: dict[str, np.ndarray], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The same images, the same verdicts and distances in all three places; copies (exact or
    brightened) are flagged, clearly different images are not, and other patients only at
    about the share the rule allows."""
    assert len(cache_images["train"]) <= 5000  # the tracker compares with every training image
    names = list(queries)
    images = np.concatenate([queries[k] for k in names])
    part = np.repeat(np.arange(len(names)), [len(queries[k]) for k in names])
    checks = _three_paths(phantom_cache, images, tmp_path, monkeypatch)
    first = checks["report"]
    for name, check in checks.items():
        assert np.array_equal(check.copy, first.copy), name
        np.testing.assert_allclose(check.distance, first.distance, rtol=0, atol=1e-9,
                                   err_msg=name)
        assert check.copy[part == names.index("copies")].all(), name
        assert np.all(check.distance[part == names.index("copies")] == 0), name
        assert check.copy[part == names.index("altered")].all(), name
        assert not check.copy[part == names.index("different")].any(), name
        # other patients are the calibration set: at most 5% of them fall below the threshold
        assert check.copy[part == names.index("heldout")].mean() <= NC.EXPECTED_SHARE, name


def test_in_memory_reference_is_the_file_reference(
        phantom_cache: Path, cache_images: dict[str, np.ndarray],
        queries: dict[str, np.ndarray], tmp_path: Path) -> None:
    """NearCopyReference.fit on the cache's images is what build_reference writes to a file."""
    from cxraug.copy_reference import TrainReference
    from cxraug.data.reference import build_reference
    from cxraug.evaluation.realism import near_copies

    held = queries["heldout"]
    memory = NC.NearCopyReference.fit(cache_images["train"], held)
    images = np.concatenate(list(queries.values()))
    with TrainReference(build_reference(phantom_cache, tmp_path / "r.trainref.h5")) as ref:
        assert memory.threshold == ref.threshold
        a, b = memory.check(images), ref.check(images)
        assert np.array_equal(a.copy, b.copy) and np.array_equal(a.index, b.index)
        np.testing.assert_allclose(a.distance, b.distance, rtol=0, atol=1e-9)
        looser = TrainReference(tmp_path / "r.trainref.h5", percentile=50)
        assert looser.threshold == pytest.approx(
            NC.NearCopyReference.fit(cache_images["train"], held, 50).threshold, abs=1e-4)
        looser.close()
    result, dist = near_copies(images, cache_images["train"], held)
    assert result.threshold == memory.threshold and result.percentile == NC.PERCENTILE
    assert result.count == int(a.copy.sum()) and np.array_equal(dist, a.distance)
