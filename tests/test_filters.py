"""augment's filters: the privacy filter against generators that copy or do not copy training
images, the label filter against a generator that ignores its label, and determinism of the
filtered output across batch sizes, shards and kill -9 + resume.

The generators here are ONNX graphs built with onnx.helper that draw from an image bank:
``image = bank[label, |z_0| * 1000 mod M]`` (or ``bank[0, ...]`` whatever the label: label-blind),
so a test decides exactly what a generator returns (training images, other patients' images).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import REPO, cli, files, run, start_and_stop
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh

from cxraug.cli import main
from cxraug.copy_reference import TrainReference, thumbnails_u8
from cxraug.data.cache import CacheReader
from cxraug.data.reference import build_reference
from cxraug.errors import CxrError
from cxraug.synthesis.augment import latents
from cxraug.synthesis.filters import SlotRecord
from cxraug.synthesis.png import png_record


def bank_generator(path: Path, bank: np.ndarray, class_names: list[str], fingerprint: str,
                   label_blind: bool = False, latent: int = 8) -> Path:
    """An ONNX generator (cxraug interface) whose image for (z, label) is
    ``bank[label, floor(|z_0| * 1000) mod M]``; ``bank`` uint8 ``[C, M, H, W]``."""
    c, m, h, w = bank.shape
    unit = (bank.astype(np.float32) / 127.5 - 1.0)[..., None]
    inits = [nh.from_array(unit, "BANK"), nh.from_array(np.array(0, np.int64), "zero_i"),
             nh.from_array(np.array(1000.0, np.float32), "scale"),
             nh.from_array(np.array(m, np.int64), "m"),
             nh.from_array(np.array([1], np.int64), "axis1")]
    nodes = [oh.make_node("Gather", ["z", "zero_i"], ["z0"], axis=1),
             oh.make_node("Abs", ["z0"], ["a"]), oh.make_node("Mul", ["a", "scale"], ["s"]),
             oh.make_node("Floor", ["s"], ["f"]),
             oh.make_node("Cast", ["f"], ["fi"], to=TensorProto.INT64),
             oh.make_node("Mod", ["fi", "m"], ["idx"]),
             oh.make_node("Mul", ["label", "zero_i"] if label_blind else ["label", "one_i"],
                          ["lab"]),
             oh.make_node("Unsqueeze", ["lab", "axis1"], ["lab2"]),
             oh.make_node("Unsqueeze", ["idx", "axis1"], ["idx2"]),
             oh.make_node("Concat", ["lab2", "idx2"], ["where"], axis=1),
             oh.make_node("GatherND", ["BANK", "where"], ["image"])]
    inits.append(nh.from_array(np.array(1, np.int64), "one_i"))
    graph = oh.make_graph(
        nodes, "bank", [oh.make_tensor_value_info("z", TensorProto.FLOAT, ["N", latent]),
                        oh.make_tensor_value_info("label", TensorProto.INT64, ["N"])],
        [oh.make_tensor_value_info("image", TensorProto.FLOAT, ["N", h, w, 1])], inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 8
    oh.set_model_props(model, {
        "cxraug_version": "0.1.0", "class_names": json.dumps(class_names),
        "latent_dim": str(latent), "image_size": str(h), "label_mode": "index",
        "recipe": 'name = "bank"\n', "recipe_name": "bank", "arch": "bank",
        "data_fingerprint": fingerprint, "epoch": "1", "step": "1", "view": "PA",
        "exported_at": "2026-01-01T00:00:00+00:00"})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def banks(phantom_cache: Path) -> dict:
    """Per class: 12 training images and 12 held-out images (val + test, other patients),
    cycled where a class has fewer."""
    with CacheReader(phantom_cache) as cache:
        names = list(cache.class_names)
        labels = np.asarray(cache.labels)
        split = np.asarray(cache.split)
        fingerprint = str(cache.fingerprint)

        def bank(splits: tuple[str, ...]) -> np.ndarray:
            out = []
            for c in range(len(names)):
                idx = np.flatnonzero((labels == c) & np.isin(split, splits))
                assert len(idx), (names[c], splits)
                out.append(cache.read(np.resize(idx, 12)))
            return np.stack(out)

        return {"names": names, "fingerprint": fingerprint, "train": bank(("train",)),
                "heldout": bank(("val", "test"))}


@pytest.fixture(scope="module")
def reference(phantom_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_reference(phantom_cache, tmp_path_factory.mktemp("ref") / "ref.trainref.h5")


def _pngs(out: Path) -> list[Path]:
    return sorted((out / "images").glob("*.png"))


# ------------------------------------------------------------------------------ pieces
def test_replacement_latents_and_png_records(tmp_path: Path) -> None:
    first = latents(3, 1, [5, 6], 8)
    assert np.array_equal(first, latents(3, 1, [5, 6], 8, tries=[0, 0]))  # try 0: unfiltered
    again = latents(3, 1, [5, 6], 8, tries=[1, 2])
    assert not np.allclose(again[0], first[0]) and not np.allclose(again[1], first[1])
    assert np.array_equal(again[1], latents(3, 1, [6], 8, tries=[2])[0])
    from cxraug.synthesis.png import encode_png

    path = tmp_path / "a.png"
    path.write_bytes(encode_png(np.arange(64, dtype=np.uint8).reshape(8, 8),
                                text=SlotRecord(3, 2, 0).text()))
    assert png_record(path) == SlotRecord(3, 2, 0)
    from PIL import Image

    with Image.open(path) as im:  # still a plain PNG any reader opens
        assert im.text["cxraug-filter"] == "tries=3 privacy=2 label=0"
        assert np.array_equal(np.asarray(im), np.arange(64).reshape(8, 8))
    path.write_bytes(encode_png(np.zeros((8, 8), np.uint8)))
    assert png_record(path) is None


def test_reference_finds_copies_and_rejects_other_patients(reference: Path, banks: dict) -> None:
    with TrainReference(reference) as ref:
        train = banks["train"].reshape(-1, *banks["train"].shape[2:])
        held = banks["heldout"].reshape(-1, *banks["heldout"].shape[2:])
        assert ref.check(train).copy.all()
        assert np.all(ref.nearest(train) == 0)
        # other patients: only those below the 5th percentile of held-out distances
        assert ref.check(held).copy.mean() < 0.2
        brighter = np.clip(train.astype(np.int16) * 0.8 + 30, 0, 255).astype(np.uint8)
        assert ref.check(brighter).copy.all()  # brightness and contrast do not hide a copy
    loose = TrainReference(reference, percentile=50)
    assert loose.threshold > TrainReference(reference).threshold
    assert thumbnails_u8(train[:2]).shape == (2, 1024)


# ------------------------------------------------------------------------------ privacy
def test_a_generator_of_training_images_keeps_none_and_stops(
        banks: dict, reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = bank_generator(tmp_path / "copies.onnx", banks["train"], banks["names"],
                           banks["fingerprint"])
    out = tmp_path / "aug"
    with pytest.raises(CxrError, match="reproduces its training images"):
        run(model, out, per_class=40, privacy_reference=reference, max_tries=3)
    assert _pngs(out) == []
    assert (out / "Data_Entry_2017.csv").read_text().count("\n") == 1  # header only
    rc = main(["augment", "--model", str(model), "--out", str(out), "--per-class", "40",
               "--privacy-reference", str(reference), "--resume", "--max-tries", "3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: ") and "--no-privacy-filter" in err[-1]
    # with the filter off, the copies are written (a user's explicit choice)
    unfiltered = run(model, tmp_path / "off", per_class=3, privacy_filter=False)
    assert sum(unfiltered.counts.values()) == 3 * len(banks["names"])


def test_other_patients_images_pass_and_the_manifest_counts_every_try(
        banks: dict, reference: Path, tmp_path: Path) -> None:
    model = bank_generator(tmp_path / "held.onnx", banks["heldout"], banks["names"],
                           banks["fingerprint"])
    # the reference beside the model is found without being named
    (tmp_path / "held.trainref.h5").write_bytes(reference.read_bytes())
    out = tmp_path / "aug"
    result = run(model, out, per_class=30)
    assert any(n.startswith("privacy filter on") for n in result.notes)
    pngs = _pngs(out)
    assert len(pngs) == 30 * len(banks["names"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["filters"]["privacy"]["percentile"] == 5.0
    tried = dropped = 0
    for row in manifest["classes"]:
        f = row["filter"]
        assert f["kept"] == row["on_disk"] == 30 and f["unfilled"] == 0
        assert f["tried"] == f["kept"] + f["dropped_privacy"] + f["dropped_label"]
        tried, dropped = tried + f["tried"], dropped + f["dropped_privacy"]
    assert dropped / tried < 0.2  # other patients are mostly kept
    records = [png_record(p) for p in pngs]
    assert sum(r.tries for r in records) == tried  # type: ignore[union-attr]
    from PIL import Image

    with TrainReference(reference) as ref:
        kept = np.stack([np.asarray(Image.open(p)) for p in pngs])
        assert not ref.check(kept).copy.any()
    # a reference of other data is refused
    with pytest.raises(CxrError, match="other data"):
        run(bank_generator(tmp_path / "x.onnx", banks["heldout"], banks["names"], "beef"),
            tmp_path / "x", per_class=2, privacy_reference=reference)


def test_no_reference_means_no_filter_and_says_so(banks: dict, tmp_path: Path,
                                                  phantom_cache: Path) -> None:
    model = bank_generator(tmp_path / "g.onnx", banks["heldout"], banks["names"], "other")
    result = run(model, tmp_path / "a", per_class=2)
    assert any(n.startswith("privacy filter off: no training reference") for n in result.notes)
    assert png_record(_pngs(tmp_path / "a")[0]) is None
    # --data of the cache the model was trained on builds the reference on the fly
    model = bank_generator(tmp_path / "h.onnx", banks["heldout"], banks["names"],
                           banks["fingerprint"])
    with CacheReader(phantom_cache) as cache:
        train = np.asarray(cache.labels)[np.asarray(cache.indices("train"))]
    counts = np.bincount(train, minlength=len(banks["names"]))
    target = int(np.median(counts))  # classes with as many real images get nothing to make
    result = run(model, tmp_path / "b", target_per_class=target, data=phantom_cache)
    assert any(n.startswith("privacy filter on") for n in result.notes)
    made = {t["name"]: t["generate"] for t in result.targets}
    assert 0 in made.values() and any(made.values())
    assert result.counts == made
    assert not list(tmp_path.glob("b/*.h5"))  # the reference never lands in the data set


# ------------------------------------------------------------------------------ label filter
def test_a_label_blind_generator_filtered_by_a_judge_keeps_few_and_warns(
        banks: dict, classifier_dir: Path, tmp_path: Path) -> None:
    """The phantom judge is weak for some classes (val AUROC ~0.75, a few validation images
    each), so the threshold passes half the real validation images of a class (0.5) here."""
    kw = {"per_class": 20, "judge": classifier_dir, "max_tries": 4, "privacy_filter": False,
          "judge_real_share": 0.5}
    aware = run(bank_generator(tmp_path / "aware.onnx", banks["heldout"], banks["names"],
                               banks["fingerprint"]), tmp_path / "aware", **kw)
    blind = run(bank_generator(tmp_path / "blind.onnx", banks["heldout"], banks["names"],
                               banks["fingerprint"], label_blind=True), tmp_path / "blind", **kw)
    kept_aware, kept_blind = sum(aware.counts.values()), sum(blind.counts.values())
    assert kept_aware >= 0.8 * 20 * len(banks["names"])
    assert kept_blind <= 0.5 * kept_aware
    warned = [n for n in blind.notes if n.startswith("warning:") and "judge does not" in n]
    assert len(warned) >= len(banks["names"]) // 2
    manifest = json.loads((tmp_path / "blind" / "manifest.json").read_text())
    thresholds = manifest["filters"]["label"]["classes"]
    assert set(thresholds) == set(banks["names"])
    assert all(v["threshold"] is not None and v["n_real"] > 0 for v in thresholds.values())
    assert "unfilled" in blind.summary()


# ------------------------------------------------------------------------------ determinism
def test_filtered_output_is_the_same_across_batches_shards_and_kill_9(
        banks: dict, reference: Path, classifier_dir: Path, tmp_path: Path) -> None:
    """A generator whose draws are a third training copies (replaced by the privacy filter)."""
    mixed = banks["heldout"].copy()
    mixed[:, ::3] = banks["train"][:, ::3]
    model = bank_generator(tmp_path / "mixed.onnx", mixed, banks["names"], banks["fingerprint"])
    classes = banks["names"][:3]
    kw = {"per_class": 150, "classes": classes, "seed": 4, "privacy_reference": reference,
          "judge": classifier_dir}
    ref = tmp_path / "ref"
    result = run(model, ref, batch_size=64, **kw)
    ref_files = files(ref)
    records = [png_record(p) for p in _pngs(ref)]
    assert sum(r.privacy for r in records) > 30  # replacements happened   # type: ignore
    assert files(run(model, tmp_path / "b5", batch_size=5, workers=3, **kw).out) == ref_files
    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    run(model, s1, shard="1/2", batch_size=16, **kw)
    run(model, s2, shard="2/2", batch_size=7, **kw)
    import shutil

    shutil.copytree(s2, s1, dirs_exist_ok=True)
    merged = run(model, s1, resume=True, **kw)
    assert merged.generated == 0 and files(s1) == ref_files
    assert merged.targets == result.targets  # the counts come back from the PNGs' records
    # kill -9 in the middle, then --resume
    out = tmp_path / "killed"
    args = ["augment", "--model", str(model), "--out", str(out), "--per-class", "150",
            "--classes", ",".join(classes), "--seed", "4", "--privacy-reference",
            str(reference), "--judge", str(classifier_dir), "--batch-size", "8",
            "--device", "cpu"]
    rc = start_and_stop(args, out / "images", 100, signal.SIGKILL)
    assert rc == -signal.SIGKILL
    assert 0 < len(os.listdir(out / "images")) < 450
    rerun = subprocess.run(cli(*args, "--resume"), cwd=REPO, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert files(out) == ref_files


@pytest.mark.parametrize("extra, message", [
    (["--max-tries", "0"], "--max-tries 0"),
    (["--judge-real-share", "1.5", "--judge", "{judge}"], "--judge-real-share 1.5"),
    (["--judge", "{tmp}/no-such-judge"], "no-such-judge"),
    (["--privacy-percentile", "120", "--privacy-reference", "{ref}"], "--privacy-percentile 120"),
    (["--privacy-reference", "{tmp}/none.h5"], "none.h5"),
    (["--privacy-reference", "{ref}", "--no-privacy-filter"], "not both"),
])
def test_filter_options_fail_in_one_line(extra: list[str], message: str, banks: dict,
                                         reference: Path, classifier_dir: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    model = bank_generator(tmp_path / "g.onnx", banks["heldout"], banks["names"],
                           banks["fingerprint"])
    args = [a.format(judge=classifier_dir, tmp=tmp_path, ref=reference) for a in extra]
    rc = main(["augment", "--model", str(model), "--out", str(tmp_path / "o"), "--per-class",
               "2", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: ") and message in err[-1], err
    assert not (tmp_path / "o" / "images").exists()
