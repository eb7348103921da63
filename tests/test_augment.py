"""cxraug augment: counts, NIH CSV layout, determinism, shards, resume, errors, no TensorFlow."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import PAPER7, REPO, files, make_generator, run, start_and_stop
from helpers import cli as _cli
from PIL import Image

from cxraug.cli import main
from cxraug.data.labels import read_nih_csv
from cxraug.data.nih import NIH_HEADER_LINE
from cxraug.errors import CxrError
from cxraug.synthesis.augment import (
    SYNTH_PATIENT_BASE,
    augment,
    latents,
    parse_shard,
    plan_counts,
    synthetic_name,
)
from cxraug.synthesis.png import encode_png, png_ok
from cxraug.synthesis.sinks import SINKS, Sink


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_generator(tmp_path_factory.mktemp("model") / "g.onnx")


@pytest.fixture(scope="module")
def hot_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_generator(tmp_path_factory.mktemp("hot") / "h.onnx", label_mode="multi-hot")


# ------------------------------------------------------------------------------ pieces
def test_names_latents_png_and_shard_parsing(tmp_path: Path) -> None:
    assert synthetic_name(0, 0) == "10000000_000.png"
    assert synthetic_name(3, 1234) == "13001234_000.png"
    assert synthetic_name(89, 999_999) == "99999999_000.png"
    for bad in ((90, 0), (0, 1_000_000), (-1, 0)):
        with pytest.raises(ValueError):
            synthetic_name(*bad)
    a = latents(7, 2, [0, 1, 2, 3], 16)
    assert np.array_equal(a[2:], latents(7, 2, [2, 3], 16))  # row k depends on k only
    assert not np.allclose(a[0], latents(7, 3, [0], 16)[0])  # ...and on the target
    assert not np.allclose(a[0], latents(8, 2, [0], 16)[0])  # ...and on the seed
    assert not np.allclose(a[0], a[1])
    gray = np.random.default_rng(0).integers(0, 256, (37, 23), dtype=np.uint8)
    path = tmp_path / "x.png"
    path.write_bytes(encode_png(gray))
    with Image.open(path) as im:
        assert im.mode == "L" and np.array_equal(np.asarray(im), gray)
    assert png_ok(path)
    path.write_bytes(encode_png(gray)[:-5])
    assert not png_ok(path)
    assert parse_shard("2/3") == (2, 3)
    for bad in ("0/2", "3/2", "a/b", "1"):
        with pytest.raises(CxrError, match="--shard"):
            parse_shard(bad)


def test_plan_counts() -> None:
    real = {"A": 10, "B": 0, "C": 99}
    assert plan_counts(real, ["A", "B", "C"], 50, None) == {"A": 40, "B": 50, "C": 0}
    assert plan_counts(None, ["A", "B"], None, 5) == {"A": 5, "B": 5}
    with pytest.raises(CxrError, match="exactly one"):
        plan_counts(real, ["A"], 5, 5)
    with pytest.raises(CxrError, match="exactly one"):
        plan_counts(real, ["A"], None, None)
    with pytest.raises(CxrError, match="positive"):
        plan_counts(real, ["A"], -5, None)
    with pytest.raises(CxrError, match="positive"):
        plan_counts(real, ["A"], None, 0)
    # no real data: every class is topped up from zero
    assert plan_counts(None, ["A", "B"], 5, None) == {"A": 5, "B": 5}


# ------------------------------------------------------------------------------ counts
@pytest.mark.slow
def test_target_arithmetic_against_all_labels(nih_sample: Path, model: Path,
                                              tmp_path: Path) -> None:
    """target 2300 over the paper's classes: max(0, 2300 - single-label count) per class."""
    csv_path = nih_sample / "all_labels_112120.csv"  # 3 columns only
    labels = pd.read_csv(csv_path)["Finding Labels"]
    expected_real = {c: int((labels == c).sum()) for c in PAPER7}
    result = run(model, tmp_path / "aug", real_csv=csv_path, target_per_class=2300)
    got = {t["name"]: (t["real"], t["generate"], t["on_disk"]) for t in result.targets}
    for c in PAPER7:
        want = max(0, 2300 - expected_real[c])
        assert got[c] == (expected_real[c], want, want), c
    assert sum(v[1] for v in got.values()) > 0  # Mass and Pneumothorax are below 2300
    synth = read_nih_csv(tmp_path / "aug" / "Data_Entry_2017.csv")
    assert synth["Finding Labels"].value_counts().to_dict() == {
        c: got[c][1] for c in PAPER7 if got[c][1]}
    # mixed.csv lists the real rows whose image is on disk (under the CSV's folder: the sample's
    # 401 of NIH's 112,120) and says how many it left out
    mixed = pd.read_csv(tmp_path / "aug" / "mixed.csv")
    found = int((mixed["Synthetic"] == 0).sum())
    assert 0 < found == result.real_rows == sum(expected_real.values()) - result.real_missing
    assert found < 401 and any("not found under" in n for n in result.notes)


def test_split_list_counts_only_listed_images(nih_sample: Path, model: Path,
                                              tmp_path: Path) -> None:
    table = read_nih_csv(nih_sample / "Data_Entry_2017.csv")
    listed = table[table["Finding Labels"].isin(["Mass", "Nodule"])]["Image Index"][:10]
    lst = tmp_path / "train_val_list.txt"
    lst.write_text("\n".join(listed) + "\n")
    result = run(model, tmp_path / "aug", real_csv=nih_sample / "Data_Entry_2017.csv",
                 split_list=lst, target_per_class=12, classes=["Mass", "Nodule"],
                 real_root=nih_sample / "images")
    want = {c: int((table.loc[table["Image Index"].isin(listed), "Finding Labels"] == c).sum())
            for c in ("Mass", "Nodule")}
    assert {t["name"]: t["real"] for t in result.targets} == want
    assert {t["name"]: t["generate"] for t in result.targets} == {
        c: 12 - n for c, n in want.items()}
    mixed = pd.read_csv(tmp_path / "aug" / "mixed.csv")
    real = mixed[mixed["Synthetic"] == 0]
    assert sorted(real["Image Index"]) == sorted(listed)
    assert all(Path(p).is_file() for p in real["Path"])  # real_root paths resolve


def test_label_combination_counts_with_multi_label_keep(nih_sample: Path, hot_model: Path,
                                                        tmp_path: Path) -> None:
    """A combination's real count: images whose classes (among the model's) are exactly it."""
    csv_path = nih_sample / "Data_Entry_2017.csv"
    table = read_nih_csv(csv_path)
    model_classes = set(PAPER7)
    sets = [set(x.split("|")) & model_classes for x in table["Finding Labels"]]
    want_combo = sum(1 for x in sets if x == {"Effusion", "Infiltration"})
    want_mass = sum(1 for x in sets if "Mass" in x)  # keep: every image carrying Mass
    assert want_combo > 0
    result = run(hot_model, tmp_path / "aug", real_csv=csv_path, multi_label="keep",
                 target_per_class=want_combo + 3, classes=["Mass"],
                 labels=["Infiltration|Effusion"])
    got = {t["name"]: (t["real"], t["generate"]) for t in result.targets}
    assert got == {"Mass": (want_mass, max(0, want_combo + 3 - want_mass)),
                   "Effusion|Infiltration": (want_combo, 3)}


def test_counts_from_a_cache_training_split(phantom_cache: Path, tmp_path: Path) -> None:
    from cxraug.data.cache import CacheReader

    with CacheReader(phantom_cache) as cache:
        names = list(cache.class_names)
        train = cache.indices("train")
        counts = np.asarray(cache.multi_hot)[train].sum(axis=0)
        n_all = cache.n
    model = make_generator(tmp_path / "g.onnx", classes=names)
    target = int(counts.max()) + 1
    result = run(model, tmp_path / "aug", data=phantom_cache, target_per_class=target)
    assert [(t["real"], t["generate"]) for t in result.targets] == [
        (int(c), target - int(c)) for c in counts]
    mixed = pd.read_csv(tmp_path / "aug" / "mixed.csv")
    assert int((mixed["Synthetic"] == 0).sum()) == len(train) < n_all  # training split only
    assert mixed["Finding Labels"].value_counts().to_dict() == dict.fromkeys(names, target)


def test_mixed_csv_from_a_cache_opens_every_path_and_keeps_every_column(
        phantom_cache: Path, phantom_dir: Path, tmp_path: Path) -> None:
    """No --real-root: the real images are found under the cache's data root; mixed.csv loads
    with plain pandas, every Path opens from the CSV's folder, real rows keep NIH's columns."""
    from cxraug.data.cache import CacheReader

    with CacheReader(phantom_cache) as cache:
        names = list(cache.class_names)
    model = make_generator(tmp_path / "g.onnx", classes=names, meta={"view": "PA"})
    out = tmp_path / "aug"
    result = run(model, out, data=phantom_cache, per_class=2, output_size=32,
                 privacy_filter=False)
    assert result.real_missing == 0
    assert result.notes == ["privacy filter off (--no-privacy-filter): images are not checked "
                            "for copies of training images"]
    mixed = pd.read_csv(out / "mixed.csv")
    for path, synthetic in zip(mixed["Path"], mixed["Synthetic"], strict=True):
        with Image.open(os.path.join(out, path)) as im:  # relative to the CSV, or absolute
            assert im.mode == "L" and (im.size == (32, 32)) == bool(synthetic)
    as_text = pd.read_csv(out / "mixed.csv", dtype=str)  # as written: "63", not 63.0
    real = as_text[as_text["Synthetic"] == "0"].set_index("Image Index")
    source = read_nih_csv(phantom_dir / "Data_Entry_2017.csv").set_index("Image Index")
    for column in ("Follow-up #", "Patient Age", "Patient Gender", "View Position",
                   "OriginalImage Width"):
        assert real[column].notna().all(), column
        assert (real[column].astype(str) == source.loc[real.index, column].astype(str)).all()
    # synthetic rows carry the generator's training view, so default NIH view filters keep them
    assert (mixed.loc[mixed["Synthetic"] == 1, "View Position"] == "PA").all()
    manifest = json.loads((out / "manifest.json").read_text())
    real_side = int(source["OriginalImage Width"].iloc[0])
    assert manifest["image_sizes"] == {"synthetic": [[32, 32]],
                                       "real": [[real_side, real_side]]}
    assert manifest["view"] == "PA"


def test_outputs_follow_the_umask_like_any_other_tool(model: Path, tmp_path: Path) -> None:
    """CSVs, manifest and images alike: a colleague can read what the umask lets them read."""
    from cxraug.io_utils import file_mode

    out = tmp_path / "aug"
    run(model, out, per_class=1)
    modes = {p.relative_to(out).as_posix(): p.stat().st_mode & 0o777
             for p in out.rglob("*") if p.is_file()}
    assert {"Data_Entry_2017.csv", "mixed.csv", "manifest.json", "job.json"} <= set(modes)
    assert set(modes.values()) == {file_mode()}, modes
    old = os.umask(0o077)  # a private umask is honoured too (read once per process: subprocess)
    try:
        code = ("from cxraug.io_utils import write_text_atomic as w; import sys; "
                "w(sys.argv[1], 'x')")
        subprocess.run([sys.executable, "-c", code, str(tmp_path / "private.txt")], check=True)
    finally:
        os.umask(old)
    assert (tmp_path / "private.txt").stat().st_mode & 0o777 == 0o600


def test_a_label_that_cannot_be_specialized_is_said_not_hidden(
        model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cxraug.inference.specialize as specialize

    monkeypatch.setattr(specialize, "specialize_for_label", lambda *a, **k: None)
    result = run(model, tmp_path / "aug", per_class=2, classes=["Mass", "Nodule"])
    assert any("2 label(s) ran on the full graph" in n and "Mass:" in n for n in result.notes)
    manifest = json.loads((tmp_path / "aug" / "manifest.json").read_text())
    assert manifest["label_specialized_sessions"] == 0
    assert [f.split(":")[0] for f in manifest["full_graph_labels"]] == ["Mass", "Nodule"]


def test_view_option_and_missing_real_images_are_said(phantom_cache: Path, tmp_path: Path
                                                      ) -> None:
    from cxraug.data.cache import CacheReader

    with CacheReader(phantom_cache) as cache:
        names = list(cache.class_names)
    model = make_generator(tmp_path / "g.onnx", classes=names, meta={"view": "PA"})
    moved = tmp_path / "moved.h5"  # a cache whose images are no longer where it was made
    shutil.copy(phantom_cache, moved)
    import h5py

    with h5py.File(moved, "r+") as h5:
        h5.attrs["data_root"] = str(tmp_path / "gone")
    result = run(model, tmp_path / "aug", data=moved, per_class=1, view="ap")
    assert result.real_missing == result.real_rows + result.real_missing > 0
    assert any("not found" in n and "--real-root" in n for n in result.notes)
    synth = read_nih_csv(tmp_path / "aug" / "Data_Entry_2017.csv")
    assert (synth["View Position"] == "AP").all()
    mixed = pd.read_csv(tmp_path / "aug" / "mixed.csv")
    assert (mixed["Synthetic"] == 1).all()  # rows whose image cannot be found are left out
    with pytest.raises(CxrError, match="--view"):
        run(model, tmp_path / "aug2", per_class=1, view="LATERAL")


def test_wrong_real_root_is_refused_before_anything_is_written(nih_sample: Path, model: Path,
                                                              tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CxrError, match="none of the .* real images"):
        run(model, tmp_path / "aug", real_csv=nih_sample / "Data_Entry_2017.csv", per_class=1,
            real_root=empty)
    assert not (tmp_path / "aug").exists()


# ------------------------------------------------------------------------------ output format
def test_nih_csv_layout_and_mixed_csv(nih_sample: Path, model: Path, tmp_path: Path) -> None:
    out = tmp_path / "aug"
    result = run(model, out, real_csv=nih_sample / "Data_Entry_2017.csv", target_per_class=15)
    lines = (out / "Data_Entry_2017.csv").read_text().splitlines()
    assert lines[0] == NIH_HEADER_LINE
    assert len(next(csv.reader([lines[0]]))) == 12
    assert all(len(row) == 11 for row in csv.reader(lines[1:]))
    plain = pd.read_csv(out / "Data_Entry_2017.csv")  # plain pandas reads NIH's quirk too
    assert len(plain.columns) == 12 and len(plain) == len(lines) - 1
    ours = read_nih_csv(out / "Data_Entry_2017.csv")
    assert len(ours) == sum(t["generate"] for t in result.targets) > 0
    assert (ours["Patient ID"] >= SYNTH_PATIENT_BASE).all()
    assert (ours["Patient ID"] > 30805).all()  # never a real NIH patient
    assert ours["Patient ID"].is_unique and ours["Follow-up #"].eq(0).all()  # one each
    assert ours["OriginalImage Width"].eq(16).all() and ours["OriginalImage Height"].eq(16).all()
    assert ours["Patient Age"].isna().all() and ours["View Position"].isna().all()
    for _, row in ours.iterrows():
        assert row["Image Index"] == f"{row['Patient ID']:08d}_{row['Follow-up #']:03d}.png"
        path = out / "images" / row["Image Index"]
        with Image.open(path) as im:
            assert im.mode == "L" and im.size == (16, 16)
    on_disk = sorted(p.name for p in (out / "images").iterdir())
    assert on_disk == sorted(ours["Image Index"])
    mixed = pd.read_csv(out / "mixed.csv")
    assert {"Path", "Synthetic"} <= set(mixed.columns)
    syn = mixed[mixed["Synthetic"] == 1]
    assert sorted(syn["Image Index"]) == on_disk
    assert all((out / p).is_file() for p in syn["Path"])
    real = mixed[mixed["Synthetic"] == 0]
    # no real_root: the real PNGs are found under the CSV's folder, as `prepare` finds them
    assert len(real) == result.real_rows > 100 and result.real_missing == 0
    assert all(os.path.isabs(p) and Path(p).is_file() for p in real["Path"])
    source = read_nih_csv(nih_sample / "Data_Entry_2017.csv").set_index("Image Index")
    got = pd.read_csv(out / "mixed.csv", dtype=str, keep_default_na=False)
    got = got[got["Synthetic"] == "0"].set_index("Image Index")
    for column in ("Follow-up #", "Patient ID", "View Position", "Patient Age"):
        want = source.loc[got.index, column].astype("string").fillna("")
        assert (got[column] == want).all(), column
    manifest = json.loads((out / "manifest.json").read_text())
    from cxraug.io_utils import sha256_file

    assert manifest["model"]["sha256"] == sha256_file(model)
    assert manifest["provider"] == result.provider == "CPUExecutionProvider"
    # every class that was generated ran on its own specialized session
    made = [c for c in manifest["classes"] if c["generate"] > 0]
    assert manifest["label_specialized_sessions"] == len(made) > 0
    assert {"cxraug", "onnxruntime", "numpy"} <= set(manifest["versions"])
    assert [c["name"] for c in manifest["classes"]] == list(PAPER7)
    assert "Atelectasis" in result.summary()


def test_class_folders_output_size_and_label_combinations(hot_model: Path,
                                                          tmp_path: Path) -> None:
    out = tmp_path / "aug"
    result = run(hot_model, out, per_class=2, classes=["No Finding"],
                 labels=["Infiltration|Effusion"], layout="class-folders", output_size=64)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [
        "Effusion+Infiltration", "No Finding"]
    rows = read_nih_csv(out / "Data_Entry_2017.csv")
    assert sorted(set(rows["Finding Labels"])) == ["Effusion|Infiltration", "No Finding"]
    mixed = pd.read_csv(out / "mixed.csv")
    for p in mixed["Path"]:
        with Image.open(out / p) as im:
            assert im.size == (64, 64) and im.mode == "L"
    assert [t["name"] for t in result.targets] == ["No Finding", "Effusion|Infiltration"]
    with pytest.raises(CxrError, match="multi-hot"):
        run(make_generator(tmp_path / "i.onnx"), tmp_path / "x", per_class=1,
            labels=["Effusion|Infiltration"])


def test_output_size_1024(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "big"
    run(model, out, per_class=1, classes=["Mass"], output_size=1024)
    (name,) = [p for p in (out / "images").iterdir()]
    with Image.open(name) as im:
        big = np.asarray(im)
        assert im.size == (1024, 1024) and im.mode == "L"
    small = tmp_path / "small"
    run(model, small, per_class=1, classes=["Mass"])
    with Image.open(small / "images" / name.name) as im:
        ref = np.asarray(im, dtype=np.float32)
    # the upscaled image is the same picture: block means follow the 16x16 original
    blocks = big.reshape(16, 64, 16, 64).mean(axis=(1, 3))
    assert np.corrcoef(blocks.ravel(), ref.ravel())[0, 1] > 0.95


# ------------------------------------------------------------------------------ determinism
def test_same_bytes_across_batch_sizes_workers_and_shards(model: Path, tmp_path: Path) -> None:
    kw = {"per_class": 23, "classes": ["Effusion", "Mass", "No Finding"], "seed": 5}
    ref = tmp_path / "ref"
    run(model, ref, batch_size=64, workers=1, **kw)
    ref_files = files(ref)
    assert len([n for n in ref_files if n.startswith("images/")]) == 69
    other = tmp_path / "b3"
    run(model, other, batch_size=3, workers=3, **kw)
    assert files(other) == ref_files
    one = tmp_path / "b1"
    run(model, one, batch_size=1, workers=2, **kw)
    assert files(one) == ref_files
    # two shards on two "machines", merged by copying, then a --resume run writes the CSVs
    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    r1 = run(model, s1, shard="1/2", batch_size=7, **kw)
    r2 = run(model, s2, shard="2/2", batch_size=16, **kw)
    assert r1.generated + r2.generated == 69
    assert not (s1 / "Data_Entry_2017.csv").exists()
    part = read_nih_csv(s1 / "parts" / "shard-1-of-2.csv")
    assert sorted(part["Image Index"]) == sorted(p.name for p in (s1 / "images").iterdir())
    assert not set(os.listdir(s1 / "images")) & set(os.listdir(s2 / "images"))
    shutil.copytree(s2, s1, dirs_exist_ok=True)
    merged = run(model, s1, resume=True, **kw)
    assert merged.generated == 0 and merged.skipped == 69
    assert files(s1) == ref_files
    # a different seed gives different images under the same names
    seed6 = tmp_path / "seed6"
    run(model, seed6, **{**kw, "seed": 6})
    assert files(seed6).keys() == ref_files.keys()
    assert files(seed6)["images/12000000_000.png"] != ref_files["images/12000000_000.png"]


def test_two_shards_at_once_into_one_folder_merge_to_the_unsharded_result(
        model: Path, tmp_path: Path) -> None:
    """Two shard processes run together in one --out (with --resume, so whichever starts second
    joins the job) and neither removes the other's files in flight; the merge equals one run."""
    kw = {"per_class": 400, "classes": ["Effusion", "Mass"], "seed": 2}
    ref = tmp_path / "ref"
    run(model, ref, **kw)
    out = tmp_path / "both"
    args = ["augment", "--model", str(model), "--out", str(out), "--per-class", "400",
            "--classes", "Effusion,Mass", "--seed", "2", "--resume", "--device", "cpu",
            "--batch-size", "8"]
    procs = [subprocess.Popen(_cli(*args, "--shard", s), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for s in ("1/2", "2/2")]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    merged = run(model, out, resume=True, **kw)
    assert merged.generated == 0 and merged.skipped == 800
    assert files(out) == files(ref)


def test_resume_removes_a_killed_runs_temporary_files_but_not_a_live_ones(
        model: Path, tmp_path: Path) -> None:
    out = tmp_path / "aug"
    run(model, out, per_class=2, classes=["Mass"])
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = out / "images" / f".90300000_005.png.{dead}.tmp"
        flight = out / "images" / f".90300000_006.png.{live.pid}.tmp"
        stale.write_bytes(b"partial")
        flight.write_bytes(b"partial")
        run(model, out, per_class=2, classes=["Mass"], resume=True)
        assert not stale.exists() and flight.exists()
    finally:
        live.kill()
        live.wait()


# ------------------------------------------------------------------------------ job handling
def test_job_folder_rules(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "aug"
    run(model, out, per_class=3, classes=["Mass"])
    with pytest.raises(CxrError, match="already holds this job.*--resume"):
        run(model, out, per_class=3, classes=["Mass"])
    again = run(model, out, per_class=3, classes=["Mass"], resume=True)
    assert again.generated == 0 and again.skipped == 3
    with pytest.raises(CxrError, match="different augment job.*--overwrite"):
        run(model, out, per_class=4, classes=["Mass"], resume=True)
    with pytest.raises(CxrError, match="different augment job"):
        run(model, out, per_class=3, classes=["Mass"], seed=1)
    (out / "images" / "notes.txt").write_text("mine")
    replaced = run(model, out, per_class=2, classes=["Nodule"], overwrite=True)
    assert replaced.generated == 2
    assert sorted(os.listdir(out / "images")) == [
        "15000000_000.png", "15000001_000.png", "notes.txt"]  # old PNGs gone, user file kept
    assert json.loads((out / "job.json").read_text())["targets"][0]["name"] == "Nodule"
    # a folder of the earlier naming (1,000 images per synthetic patient) is never resumed or
    # mixed: one line naming the fix; --overwrite replaces its images, not the user's files
    old = tmp_path / "old"
    (old / "images").mkdir(parents=True)
    (old / "job.json").write_text(json.dumps({
        "format": "cxraug-augment-1", "layout": "flat",
        "targets": [{"name": "Mass", "code": 4, "folder": "Mass", "count": 2}]}))
    for name in ("90400000_000.png", "90400000_001.png", "mine.png"):
        (old / "images" / name).write_bytes(b"x")
    for kw in ({}, {"resume": True}):
        with pytest.raises(CxrError, match="earlier naming.*new --out, or --overwrite"):
            run(model, old, per_class=2, classes=["Mass"], **kw)
    assert len(os.listdir(old / "images")) == 3  # nothing touched
    fresh = run(model, old, per_class=2, classes=["Mass"], overwrite=True)
    assert fresh.generated == 2
    assert sorted(os.listdir(old / "images")) == ["14000000_000.png", "14000001_000.png",
                                                  "mine.png"]
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "thesis.docx").write_text("x")
    with pytest.raises(CxrError, match="not empty"):
        run(model, busy, per_class=1, overwrite=True)
    assert (busy / "thesis.docx").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_per_class": -5}, "positive"),
        ({"per_class": 0}, "positive"),
        ({"per_class": 3, "target_per_class": 3}, "exactly one"),
        ({}, "exactly one"),
        ({"per_class": 1, "classes": ["Effusoin"]}, "did you mean 'Effusion'.*Pneumothorax"),
        ({"per_class": 1, "classes": ["Cardiomegaly"]}, "model's classes: No Finding"),
        ({"per_class": 1, "shard": "3/2"}, "--shard"),
        ({"per_class": 1, "layout": "pyramid"}, "--layout"),
        ({"per_class": 1, "batch_size": 0}, "--batch-size"),
        ({"per_class": 1, "output_size": 3}, "--output-size"),
        ({"per_class": 1, "split_list": "x.txt"}, "--split-list"),
        ({"per_class": 1, "real_root": "."}, "--real-root"),
    ],
)
def test_user_errors(model: Path, tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(CxrError, match=message) as info:
        run(model, tmp_path / "aug", **kwargs)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "aug").exists()  # nothing written on a refused job


def test_options_object_checks_alone_and_runs_as_augment(model: Path, tmp_path: Path) -> None:
    """AugmentOptions.validate() raises augment's messages without loading anything, and
    run_augment(options) makes what augment(**options) makes."""
    import dataclasses

    from cxraug.synthesis.augment import AugmentOptions, run_augment

    bad = AugmentOptions(model=tmp_path / "missing.onnx", out=tmp_path / "x", per_class=1,
                         workers=0)
    with pytest.raises(CxrError, match="--workers 0"):
        bad.validate()  # a model that does not exist is not opened by validate()
    with pytest.raises(dataclasses.FrozenInstanceError):
        bad.workers = 2  # type: ignore[misc]
    options = AugmentOptions(model=model, out=tmp_path / "a", per_class=3, device="cpu",
                             progress=False, seed=4, classes=["Effusion", "Mass"])
    options.validate()
    result = run_augment(options)
    run(model, tmp_path / "b", per_class=3, seed=4, classes=["Effusion", "Mass"])
    assert result.counts == {"Effusion": 3, "Mass": 3}
    assert files(tmp_path / "a") == files(tmp_path / "b")


def test_model_errors_and_unwritable_folder(tmp_path: Path) -> None:
    bare = make_generator(tmp_path / "bare.onnx", drop_meta=True)
    with pytest.raises(CxrError, match="no cxraug metadata"):
        run(bare, tmp_path / "a", per_class=1)
    odd = make_generator(tmp_path / "odd.onnx", input_names=["noise", "label"])
    with pytest.raises(CxrError, match="inputs"):
        run(odd, tmp_path / "b", per_class=1)
    good = make_generator(tmp_path / "good.onnx")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CxrError, match="cannot write there|is a file"):
        run(good, blocker / "sub", per_class=1)
    with pytest.raises(CxrError, match="is a file"):
        run(good, blocker, per_class=1)
    if os.geteuid() != 0:  # root writes anywhere; elsewhere a read-only folder must be refused
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            with pytest.raises(CxrError, match="cannot write there"):
                run(good, ro / "out", per_class=1)
        finally:
            ro.chmod(0o755)


# ------------------------------------------------------------------------------ crash safety
def test_interrupt_right_after_a_submit_lists_every_file_on_disk(
        model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C landing between handing a chunk to the writer pool and recording it (a real race
    CI hit) must still leave a CSV that lists exactly the PNGs on disk."""
    import concurrent.futures

    import cxraug.synthesis.writers as writers_module

    class InterruptedPool(concurrent.futures.ThreadPoolExecutor):
        calls = 0

        def submit(self, *args, **kwargs):  # type: ignore[override]
            future = super().submit(*args, **kwargs)
            InterruptedPool.calls += 1
            if InterruptedPool.calls == 5:
                future.result()  # the chunk is on disk before the "Ctrl-C" arrives
                raise KeyboardInterrupt
            return future

    monkeypatch.setattr(writers_module, "ThreadPoolExecutor", InterruptedPool)
    out = tmp_path / "aug"
    with pytest.raises(KeyboardInterrupt):
        run(model, out, per_class=40, classes=["Effusion"], batch_size=8, workers=2)
    names = sorted(os.listdir(out / "images"))
    assert len(names) == 5 * 4  # the pool is FIFO: chunks 1-5 (4 images each) are written
    assert sorted(read_nih_csv(out / "Data_Entry_2017.csv")["Image Index"]) == names


@pytest.mark.slow
def test_ctrl_c_then_kill_9_then_resume(tmp_path: Path) -> None:
    model = make_generator(tmp_path / "g.onnx", size=32, channels=8)
    out = tmp_path / "aug"
    images = out / "images"
    args = ["augment", "--model", str(model), "--out", str(out), "--per-class", "700",
            "--classes", "Effusion,Mass,Nodule", "--batch-size", "8", "--device", "cpu",
            "--seed", "3"]
    # Ctrl-C: exit 130, and the CSV lists exactly the complete files on disk
    assert start_and_stop(args, images, 200, signal.SIGINT) == 130
    names = sorted(os.listdir(images))
    assert 0 < len(names) < 2100 and all(n.endswith(".png") for n in names)
    assert sorted(read_nih_csv(out / "Data_Entry_2017.csv")["Image Index"]) == names
    # kill -9 during the resumed run: whatever CSV exists lists only complete files
    rc = start_and_stop([*args, "--resume"], images, len(names) + 300, signal.SIGKILL)
    assert rc == -signal.SIGKILL
    pngs = [n for n in os.listdir(images) if n.endswith(".png")]
    assert len(names) < len(pngs) < 2100
    for name in read_nih_csv(out / "Data_Entry_2017.csv")["Image Index"]:
        assert png_ok(images / name)
    rerun = subprocess.run(_cli(*args, "--resume"), cwd=REPO, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    names = sorted(os.listdir(images))
    assert len(names) == 2100 and all(n.endswith(".png") for n in names)  # no temp files
    rows = read_nih_csv(out / "Data_Entry_2017.csv")
    assert sorted(rows["Image Index"]) == names and not rows["Image Index"].duplicated().any()
    ref = tmp_path / "ref"
    augment(model=model, out=ref, per_class=700, classes=["Effusion", "Mass", "Nodule"],
            batch_size=64, device="cpu", seed=3, progress=False)
    assert files(out) == files(ref)


# ------------------------------------------------------------------------------ no TensorFlow
def test_synthesis_path_imports_no_tensorflow(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "aug"
    code = (
        "import sys\n"
        "import cxraug.cli\n"
        "from cxraug.synthesis import augment, draw, filters\n"
        "from cxraug.inference import classifier, generator\n"
        f"rc = cxraug.cli.main(['augment', '--model', {str(model)!r}, '--out', {str(out)!r},"
        " '--per-class', '2', '--device', 'cpu'])\n"
        f"rc2 = cxraug.cli.main(['inspect', {str(model)!r}])\n"
        "assert rc == 0 and rc2 == 0, (rc, rc2)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("ok")
    assert len(os.listdir(out / "images")) == 14


def test_cli_errors_are_one_line(model: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture) -> None:
    from cxraug.cli import main

    rc = main(["augment", "--model", str(model), "--out", str(tmp_path / "o"),
               "--target-per-class", "-3"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.strip().count("\n") == 0
    assert "Traceback" not in err


def test_nothing_to_generate_still_writes_consistent_csvs(nih_sample: Path, model: Path,
                                                          tmp_path: Path) -> None:
    out = tmp_path / "aug"
    result = run(model, out, real_csv=nih_sample / "Data_Entry_2017.csv", target_per_class=1)
    assert result.generated == 0 and all(t["generate"] == 0 for t in result.targets)
    assert (out / "Data_Entry_2017.csv").read_text().splitlines() == [NIH_HEADER_LINE]
    mixed = pd.read_csv(out / "mixed.csv")
    assert len(mixed) > 0 and (mixed["Synthetic"] == 0).all()
    assert os.listdir(out / "images") == []


@pytest.mark.slow
def test_smoke_onnx_end_to_end(smoke_onnx: Path, phantom_cache: Path, tmp_path: Path) -> None:
    """The real export of a trained smoke run, balanced against the phantom cache's train split."""
    from cxraug.data.cache import CacheReader

    with CacheReader(phantom_cache) as cache:
        train = cache.indices("train")
        counts = np.bincount(np.asarray(cache.labels)[train], minlength=len(cache.class_names))
        names = list(cache.class_names)
    target = int(counts.max()) + 2
    result = augment(model=smoke_onnx, out=tmp_path / "aug", data=phantom_cache,
                     target_per_class=target, device="auto", progress=False)
    got = {t["name"]: (t["real"], t["generate"]) for t in result.targets}
    assert got == {n: (int(c), target - int(c)) for n, c in zip(names, counts, strict=True)}
    mixed = pd.read_csv(tmp_path / "aug" / "mixed.csv")
    assert mixed["Finding Labels"].value_counts().to_dict() == dict.fromkeys(names, target)
    assert result.provider == "CPUExecutionProvider" or result.provider.startswith("CUDA")
    # a real exported network gives the same floats whatever the batch size (so the same bytes)
    from cxraug.inference.generator import OnnxGenerator, model_card

    card = model_card(smoke_onnx)
    assert ", ".join(names) in card and "label mode   index" in card

    gen = OnnxGenerator(smoke_onnx, device="cpu")
    z = latents(0, 1, range(20), gen.latent_dim)
    lab = np.arange(20) % len(names)
    whole = gen.generate(z, lab)
    for batch in (1, 7):
        parts = [gen.generate(z[s:s + batch], lab[s:s + batch]) for s in range(0, 20, batch)]
        assert np.array_equal(np.concatenate(parts), whole)
    # the real cxraug graph specializes for every class, and matches the full graph
    assert gen.specialized_labels == len(names)
    full = OnnxGenerator(smoke_onnx, device="cpu", specialize=False).generate(z, lab)
    assert np.max(np.abs(full - whole)) < 1e-5


@pytest.mark.parametrize("size", [1024, 512, 100, 24])
def test_resize_is_pillows_lanczos_rounded_once(size: int) -> None:
    """augment's resize gives Pillow's float Lanczos, rounded once to gray levels: the same
    bytes but for a rare pixel one level apart (float32 sums against Pillow's float64)."""
    from cxraug.grid import to_uint8
    from cxraug.synthesis.augment import resize_to_uint8

    rng = np.random.default_rng(size)
    image = np.tanh(rng.normal(size=(64, 64))).astype(np.float32)
    pillow = to_uint8(np.asarray(Image.fromarray(image).resize(
        (size, size), Image.Resampling.LANCZOS), np.float32))
    ours = resize_to_uint8(image, size)
    assert ours.shape == (size, size) and ours.dtype == np.uint8
    diff = np.abs(ours.astype(int) - pillow.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-4, ((diff > 0).sum(), diff.size)
    # the whole range, clipped where Lanczos overshoots: white squares on black. Symmetric
    # edges put exact half levels (ties) in the middle of transitions; only those may differ
    blocks = np.kron(rng.integers(0, 2, (8, 8)) * 2.0 - 1.0, np.ones((8, 8))).astype(np.float32)
    exact = (np.asarray(Image.fromarray(blocks).resize((size, size), Image.Resampling.LANCZOS),
                        np.float64) + 1.0) * 127.5
    diff = np.abs(resize_to_uint8(blocks, size).astype(int) - to_uint8(exact / 127.5 - 1.0))
    assert diff.max() <= 1
    assert np.all(np.abs(exact[diff > 0] % 1.0 - 0.5) < 1e-3), exact[diff > 0][:5]
    # at the generator's own size: to_uint8 alone
    assert np.array_equal(resize_to_uint8(image, 64), to_uint8(image))


# ------------------------------------------------------------------------------ output sinks
class _MemorySink(Sink):
    """A container that is not a folder of files: proves a new sink is one class + one entry."""

    name, description = "memory", "in memory"

    def __init__(self) -> None:
        self.store: dict[tuple[str, str], bytes] = {}
        self.lock = threading.Lock()

    def location(self, target_folder: str) -> str:
        return f"mem/{target_folder}"

    def root(self, out: Path) -> Path:
        return out / "mem"

    def stored(self, out: Path, location: str, ours) -> Iterator[str]:
        return iter([n for (loc, n) in list(self.store) if loc == location and ours(n)])

    def record(self, out: Path, location: str, name: str) -> None:
        return None

    def discard(self, out: Path, location: str, name: str) -> None:
        self.store.pop((location, name), None)

    def put(self, out: Path, location: str, name: str, data: bytes) -> None:
        with self.lock:
            self.store[(location, name)] = data

    def exists(self, out: Path, location: str, name: str) -> bool:
        return (location, name) in self.store

    def remove(self, out: Path, locations: list[str], ours) -> None:
        for key in [k for k in self.store if k[0] in locations and ours(k[1])]:
            del self.store[key]


def test_a_registered_sink_is_used_for_writing_listing_and_resume(
        model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sink = _MemorySink()
    monkeypatch.setitem(SINKS, "memory", sink)
    out = tmp_path / "aug"
    assert main(["augment", "--model", str(model), "--out", str(out), "--per-class", "3",
                 "--classes", "Effusion,Mass", "--layout", "memory", "--device", "cpu",
                 "--seed", "4"]) == 0
    assert not (out / "images").exists()  # nothing went to the folder sink
    mixed = pd.read_csv(out / "mixed.csv")
    listed = mixed.loc[mixed["Synthetic"] == 1, "Path"].tolist()
    assert sorted(listed) == sorted(f"{loc}/{n}" for loc, n in sink.store) and len(listed) == 6
    assert {p.split("/")[1] for p in listed} == {"Effusion", "Mass"}
    # the same images as the folder sink makes
    ref = tmp_path / "ref"
    run(model, ref, per_class=3, classes=["Effusion", "Mass"], seed=4)
    assert {n: d for (_, n), d in sink.store.items()} == {
        p.name: p.read_bytes() for p in (ref / "images").iterdir()}
    # resume asks the sink what is stored: one image lost is made again, byte for byte
    lost = sorted(sink.store)[2]
    kept = sink.store.pop(lost)
    result = run(model, out, per_class=3, classes=["Effusion", "Mass"], seed=4, layout="memory",
                 resume=True)
    assert result.generated == 1 and result.skipped == 5 and sink.store[lost] == kept
    # --overwrite removes the old job's images through the sink
    run(model, out, per_class=1, classes=["Mass"], seed=4, layout="memory", overwrite=True)
    assert sorted(n for _, n in sink.store) == [synthetic_name(
        result.targets[1]["code"], 0)]


# ------------------------------------------------------------------------------ PNG DEFLATE
def test_both_deflates_write_the_same_pixels_and_record() -> None:
    """zlib (the default: reproducible bytes) and ISA-L (opt-in): standard PNGs, the same
    pixels, the filters' tEXt record readable from either."""
    import io

    import cxraug.synthesis.png as png

    pytest.importorskip("isal", reason="ISA-L is optional: pip install 'cxraug[fast-png]'")
    gray = np.random.default_rng(0).integers(0, 256, (37, 53)).astype(np.uint8)
    gray[10:20] = 128  # runs, as upsampled images have
    for deflate in ("zlib", "isal"):
        data = png.encode_png(gray, text="k=1", deflate=deflate)
        with Image.open(io.BytesIO(data)) as im:
            assert im.mode == "L" and im.info.get("cxraug-filter") == "k=1"
            assert np.array_equal(np.asarray(im), gray), deflate
    assert png.encode_png(gray) == png.encode_png(gray, deflate="zlib")  # the default


def test_a_job_resumes_across_deflates_and_isal_is_one_line_when_missing(
        model: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """How the PNGs are deflated is not part of what the job is: a folder written with zlib
    resumes with --png-deflate isal, and the images made again have the lost ones' pixels."""
    import cxraug.synthesis.png as png

    pytest.importorskip("isal", reason="ISA-L is optional: pip install 'cxraug[fast-png]'")
    out = tmp_path / "aug"
    run(model, out, per_class=3, classes=["Effusion", "Mass"], seed=4)
    assert json.loads((out / "job.json").read_text())["png"]["deflate"] == "zlib"
    lost = sorted((out / "images").iterdir())[:2]
    pixels = {p.name: np.asarray(Image.open(p)) for p in lost}
    for p in lost:
        p.unlink()
    result = run(model, out, per_class=3, classes=["Effusion", "Mass"], seed=4, resume=True,
                 png_deflate="isal")
    assert result.generated == 2 and result.skipped == 4
    for p in lost:
        assert np.array_equal(np.asarray(Image.open(p)), pixels[p.name])
    # without ISA-L installed: one line, before anything is written
    monkeypatch.setattr(png, "_isal", None)
    assert main(["augment", "--model", str(model), "--out", str(tmp_path / "b"), "--per-class",
                 "1", "--png-deflate", "isal", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'cxraug[fast-png]'" in err and err.strip().count("\n") == 0
    assert not (tmp_path / "b").exists()
    assert main(["augment", "--model", str(model), "--out", str(tmp_path / "b"), "--per-class",
                 "1", "--png-deflate", "gzip", "--device", "cpu"]) == 2
    assert "--png-deflate 'gzip': choose zlib or isal" in capsys.readouterr().err


def test_a_generator_with_a_downstream_result_says_how_to_use_its_images(tmp_path: Path) -> None:
    """`<model>.downstream.json` beside the model: augment prints and records its
    recommendation; an unreadable one is named and ignored; without one, nothing is said."""
    from cxraug.synthesis.augment import downstream_note

    model = make_generator(tmp_path / "g.onnx")
    assert downstream_note(model) is None
    def verdict(d: float, low: float, high: float) -> dict[str, object]:
        return {"verdict": {"difference": d, "low": low, "high": high}}

    arms = {"real": {}, "ceiling": verdict(0.038, -0.002, 0.064),
            "share-0.5": verdict(0.001, -0.025, 0.030), "all": verdict(0.02, 0.001, 0.04)}
    (tmp_path / "g.downstream.json").write_text(json.dumps({
        "n_test": 464, "n_test_patients": 224, "arms": arms,
        "recommendation": {"strategy": None, "closest": "share-0.5", "text": "recommended: none"}}))
    result = run(model, tmp_path / "aug", per_class=1, privacy_filter=False)
    note = [n for n in result.notes if "how to use these images" in n]
    assert note and "464 real test images of 224 patients" in note[0]
    assert "no way of mixing them helped (closest share-0.5: +0.001 (-0.025 to +0.030))" in note[0]
    assert "more real patients gave +0.038 (-0.002 to +0.064)" in note[0]
    assert note[0].endswith("Train on real images only") and len(note[0]) < 300  # a log line
    manifest = json.loads((tmp_path / "aug" / "manifest.json").read_text())
    assert note[0] in manifest["notes"]
    (tmp_path / "g.downstream.json").write_text(json.dumps({
        "n_test": 464, "n_test_patients": 224, "arms": arms,
        "recommendation": {"strategy": "all", "closest": "all", "text": "recommended: all"}}))
    chosen = str(downstream_note(model))
    assert "mix them as all: macro AUROC +0.020 (+0.001 to +0.040)" in chosen
    assert "real images only" not in chosen
    (tmp_path / "g.downstream.json").write_text("{not json")
    assert "not a readable `cxraug downstream` result" in str(downstream_note(model))
