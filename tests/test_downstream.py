"""downstream's ways of mixing synthetic images in: each arm trains on exactly what it claims,
the verdict's interval covers a known difference, and on phantoms a perfect generator helps while
noise does not."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxraug.errors import CxrError
from cxraug.evaluation import downstream as D
from cxraug.evaluation.mixing import ClassifierRecipe, Pool, batch_counts, fit_mix

CLASSES = ["No Finding", "Effusion", "Mass", "Nodule"]


def _split(n: int, rng: np.random.Generator, patients_from: int = 0, size: int = 8) -> D.Split:
    labels = np.zeros((n, len(CLASSES)), np.uint8)
    labels[np.arange(n), rng.integers(0, len(CLASSES), n)] = 1
    return D.Split(rng.integers(0, 256, (n, size, size), dtype=np.uint8), labels,
                   patients_from + np.arange(n) // 2)


def test_strategy_names_parse_and_bad_ones_are_one_line_errors() -> None:
    arms = D.parse_strategies(["share-0.25,rare", "weight-0.3", "rare"])
    assert [a.name for a in arms] == ["real", "share-0.25", "rare", "weight-0.3"]
    assert arms[1].kind == "share" and arms[1].value == 0.25 and arms[1].synthetic
    assert "0.25 of every batch" in arms[1].description
    assert not D.parse_strategy("ceiling").synthetic
    for bad, why in [("share-1.5", "between 0 and 1"), ("weight-0", r"in \(0, 1\]"),
                     ("mixup", "unknown; choose from real, ceiling"), ("share-S", "unknown")]:
        with pytest.raises(CxrError, match=why):
            D.parse_strategy(bad)


def test_hold_back_keeps_every_patient_on_one_side() -> None:
    train = _split(90, np.random.default_rng(0))
    base, extra = D.hold_back(train, 1 / 3)
    assert len(base) + len(extra) == 90
    assert not set(base.patients) & set(extra.patients)
    assert len(np.unique(extra.patients)) == 15  # a third of 45 patients


def test_each_strategy_builds_the_pools_it_claims() -> None:
    rng = np.random.default_rng(1)
    base, extra = _split(40, rng), _split(20, rng, patients_from=100)
    syn = _split(120, rng, patients_from=1000)
    pools = {s.name: D.arm_pools(s, base, extra, syn.images, syn.labels, CLASSES, seed=0,
                                 judged=np.arange(0, 120, 3))
             for s in D.parse_strategies(list(D.DEFAULT_STRATEGIES))}
    assert [(p.name, len(p)) for p in pools["real"]] == [("real", 40)]
    assert pools["real"][0].images is base.images
    assert [(p.name, len(p), p.synthetic) for p in pools["ceiling"]] == [
        ("real", 40, False), ("extra real", 20, False)]
    assert [(len(p), p.share, p.weight) for p in pools["all"]] == [(40, None, 1.0),
                                                                    (120, None, 1.0)]
    assert [(len(p), p.share) for p in pools["share-0.25"]] == [(40, 0.75), (120, 0.25)]
    assert [(len(p), p.share) for p in pools["share-0.5"]] == [(40, 0.5), (120, 0.5)]
    assert [(len(p), p.weight) for p in pools["weight-0.3"]] == [(40, 1.0), (120, 0.3)]
    assert [(len(p), p.share) for p in pools["judge"]] == [(40, 1 - D.JUDGE_SHARE),
                                                           (40, D.JUDGE_SHARE)]
    np.testing.assert_array_equal(pools["judge"][1].images, syn.images[::3])
    assert [p.name for p in pools["pretrain"]] == ["real"]  # fine-tuning on real only
    # no arm's pools hold anything but the base, the extra real and the synthetic images
    allowed = {img.tobytes() for img in np.concatenate([base.images, extra.images, syn.images])}
    for arm in pools.values():
        for pool in arm:
            assert {img.tobytes() for img in pool.images} <= allowed
            assert pool.synthetic == (pool.name == "synthetic")


def test_rare_top_up_fills_rare_classes_to_the_most_common_pathology() -> None:
    base = np.zeros((30, 4), np.uint8)
    base[:15, 0] = 1   # No Finding 15 (not a pathology: not the target)
    base[15:25, 1] = 1  # Effusion 10: the target
    base[25:28, 2] = 1  # Mass 3
    base[28:30, 3] = 1  # Nodule 2
    syn = np.zeros((80, 4), np.uint8)
    syn[np.arange(80), np.arange(80) % 4] = 1
    pick = D.rare_top_up(base, syn, CLASSES, np.random.default_rng(0))
    counts = base.sum(axis=0) + syn[pick].sum(axis=0)
    assert counts.tolist() == [15, 10, 10, 10]
    assert len(set(pick.tolist())) == len(pick) == 15


def test_batch_counts_follow_the_shares() -> None:
    pools = [Pool("a", np.zeros((10, 8, 8)), np.zeros((10, 2))),
             Pool("b", np.zeros((30, 8, 8)), np.zeros((30, 2)))]
    assert batch_counts(pools, 32) == [8, 24]  # natural: by size
    pools[0].share, pools[1].share = 0.75, 0.25
    assert batch_counts(pools, 32) == [24, 8]
    pools[1].share = None
    with pytest.raises(CxrError, match="every pool a share"):
        batch_counts(pools, 32)


def test_fit_mix_trains_on_exactly_the_images_of_its_pools() -> None:
    rng = np.random.default_rng(2)
    real, syn = _split(24, rng), _split(60, rng, patients_from=500)
    recipe = ClassifierRecipe(steps=6, batch_size=8, warmup_steps=0)
    fit = fit_mix([Pool("real", real.images, real.labels, share=0.75),
                   Pool("synthetic", syn.images, syn.labels, share=0.25, weight=0.5,
                        synthetic=True)], recipe, seed=0, progress=False)
    assert fit.seen == {"real": 36, "synthetic": 12}  # 6 steps x (6 + 2)
    assert fit.distinct == {"real": 24, "synthetic": 12}  # real cycled through once and more
    assert len(fit.pos_weight) == len(CLASSES) and min(fit.pos_weight) >= 1.0
    natural = fit_mix([Pool("real", real.images, real.labels),
                       Pool("synthetic", syn.images, syn.labels)], recipe, seed=0,
                      progress=False)
    assert sum(natural.seen.values()) == 48 and natural.seen["synthetic"] > natural.seen["real"]


def test_verdict_interval_covers_a_known_difference() -> None:
    """Binormal scores with known per-class AUROCs (0.70 and 0.78): the 95% interval over
    patients covers the true +0.08 in most simulated test sets and excludes 0 in most."""
    from scipy.stats import norm

    def scores(y: np.ndarray, auc: float, rng: np.random.Generator) -> np.ndarray:
        return y * np.sqrt(2) * norm.ppf(auc) + rng.normal(size=y.shape)

    covered = excluded = 0
    reps = 25
    for rep in range(reps):
        rng = np.random.default_rng(rep)
        y = (rng.random((400, 3)) < 0.3).astype(np.uint8)
        patients = np.arange(400) // 2
        result = D.verdict(y, scores(y, 0.70, rng), scores(y, 0.78, rng), patients,
                           resamples=200, seed=rep)
        covered += result["low"] <= 0.08 <= result["high"]
        excluded += result["low"] > 0
        assert len(result["class_difference"]) == 3
    assert covered >= 0.8 * reps
    assert excluded >= 0.6 * reps


# ------------------------------------------------------------------------------ on phantoms
def _subset_cache(phantom: Path, frame: pd.DataFrame, out: Path, test: float) -> Path:
    from cxraug.data.cache import prepare

    csv = out.with_suffix(".csv")
    frame.to_csv(csv, index=False)
    prepare(data_root=phantom, csv=csv, out=out, size=32, classes=CLASSES, multi_label="drop",
            val_fraction=0.0, test_fraction=test, seed=0, workers=1, progress=False)
    return out


def _synthetic_csv(phantom: Path, frame: pd.DataFrame, folder: Path, noise: bool) -> Path:
    """Rows with ``Synthetic == 1``: real phantom images of other patients (a perfect generator),
    or uniform noise with random labels."""
    from PIL import Image

    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(5)
    rows = []
    for i, (name, labels) in enumerate(zip(frame["Image Index"], frame["Finding Labels"],
                                           strict=True)):
        new = f"syn_{i:05d}.png"
        if noise:
            Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(
                folder / "images" / new)
            labels = CLASSES[int(rng.integers(0, len(CLASSES)))]
        else:
            Image.open(phantom / "images" / name).save(folder / "images" / new)
        rows.append({"Image Index": new, "Finding Labels": labels, "Patient ID": 900000 + i,
                     "Path": f"images/{new}", "Synthetic": 1})
    pd.DataFrame(rows).to_csv(folder / "mixed.csv", index=False)
    return folder / "mixed.csv"


@pytest.fixture(scope="module")
def phantom_sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One phantom data set cut by patient: a few training patients, many test patients, and
    the rest as a perfect generator's output; plus a noise "generator" of the same size."""
    from cxraug.data.phantom import make_phantom_dataset

    root = tmp_path_factory.mktemp("ds_phantom")
    make_phantom_dataset(out=root / "p", n=900, size=32, seed=7, multi_label_fraction=0.0,
                         progress=False, workers=1)
    frame = pd.read_csv(root / "p" / "Data_Entry_2017.csv", index_col=False)
    frame = frame[frame["Finding Labels"].isin(CLASSES)]
    patients = np.unique(frame["Patient ID"])
    rng = np.random.default_rng(0)
    rng.shuffle(patients)
    part = {"train": patients[:40], "test": patients[40:190], "syn": patients[190:]}
    rows = {k: frame[frame["Patient ID"].isin(v)] for k, v in part.items()}
    return {
        "train": _subset_cache(root / "p", rows["train"], root / "train.h5", test=0.0),
        "test": _subset_cache(root / "p", rows["test"], root / "test.h5", test=0.0),
        "perfect": _synthetic_csv(root / "p", rows["syn"], root / "perfect", noise=False),
        "noise": _synthetic_csv(root / "p", rows["syn"], root / "noise", noise=True),
    }


@pytest.mark.slow
def test_recommended_mix_helps_with_a_perfect_generator_and_not_with_noise(
        phantom_sets: dict[str, Path], tmp_path: Path) -> None:
    recipe = ClassifierRecipe(steps=150)
    verdicts = {}
    for kind in ("perfect", "noise"):
        res = D.downstream(phantom_sets["train"], phantom_sets[kind], out=tmp_path / kind,
                           seeds=1, strategies=["real", D.RECOMMENDED],
                           test_data=[phantom_sets["test"]], recipe=recipe, progress=False)
        result = json.loads((tmp_path / kind / "downstream.json").read_text())
        assert result["n_test"] > 200 and result["n_extra_real"] == 0
        verdicts[kind] = result["arms"][D.RECOMMENDED]["verdict"]
        # the synthetic images reached the recommended arm's batches, in its share
        runs = [r for r in result["runs"] if r["strategy"] == D.RECOMMENDED]
        seen = {**runs[0]["images_seen"], **(runs[0]["pretrain_images_seen"] or {})}
        assert sum(v for k, v in seen.items() if k.startswith("synthetic")) > 0
        assert "synthetic" not in [
            r for r in result["runs"] if r["strategy"] == "real"][0]["images_seen"]
        assert D.RECOMMENDED in res.summary()
    assert verdicts["perfect"]["text"].startswith("helped"), verdicts
    assert verdicts["noise"]["text"].startswith(("hurt", "cannot tell")), verdicts
    assert verdicts["noise"]["difference"] < verdicts["perfect"]["difference"]


def test_test_data_of_training_patients_is_refused(phantom_sets: dict[str, Path]) -> None:
    with pytest.raises(CxrError, match="are training patients"):
        D.downstream(phantom_sets["train"], phantom_sets["perfect"], seeds=1,
                     test_data=[phantom_sets["train"]], progress=False)
