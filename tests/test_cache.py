"""``prepare`` -> HDF5 cache round trip, skips and report, atomicity, CacheReader, CLI."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxraug.cli import main
from cxraug.data import cache as cache_mod
from cxraug.data.cache import FORMAT, CacheReader, describe_cache, prepare, report_path_for
from cxraug.data.images import load_gray
from cxraug.data.labels import load_label_table
from cxraug.data.nih import ALL_LABELS, image_name, write_nih_csv
from cxraug.errors import CxrError

LABELS = ["No Finding", "Mass", "Nodule", "Effusion", "Mass|Nodule", "Hernia"]


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """36 small PNGs in NIH layout (folders images_001/images, images_002/images), mixed modes."""
    root = tmp_path_factory.mktemp("small")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(36):
        pid, fu = 100 + i // 2, i % 2
        name = image_name(pid, fu)
        folder = root / f"images_00{1 + i % 2}" / "images"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, size=(40, 40), dtype=np.uint8)
        if i % 9 == 4:
            Image.fromarray(np.stack([pixels] * 3 + [np.full_like(pixels, 255)], -1)).save(
                folder / name)
        elif i % 9 == 7:
            Image.fromarray(pixels.astype(np.uint16) * 100 + 500).save(folder / name)
        else:
            Image.fromarray(pixels).save(folder / name)
        rows.append({"Image Index": name, "Finding Labels": LABELS[i % len(LABELS)],
                     "Follow-up #": fu, "Patient ID": pid,
                     "View Position": "PA" if i % 3 else "AP"})
    csv_path = root / "Data_Entry_2017.csv"
    write_nih_csv(pd.DataFrame(rows), csv_path)
    return root, csv_path


def run(root: Path, csv_path: Path, out: Path, **kw: object) -> cache_mod.PrepareResult:
    kw.setdefault("progress", False)
    kw.setdefault("workers", 1)
    return prepare(data_root=root, csv=csv_path, out=out, **kw)


def test_round_trip_reads_back_what_was_written(small_set: tuple[Path, Path],
                                                tmp_path: Path) -> None:
    root, csv_path = small_set
    out = tmp_path / "c.h5"
    result = run(root, csv_path, out, size=16, classes=["No Finding", "Mass", "Nodule"],
                 multi_label="keep", val_fraction=0.2, test_fraction=0.2, seed=4, workers=2)
    table = load_label_table(csv_path, classes=["No Finding", "Mass", "Nodule"],
                             multi_label="keep", val_fraction=0.2, test_fraction=0.2, seed=4)
    assert result.n_written == len(table) == 24 and result.n_skipped == 0
    assert "24 images" in result.summary()
    assert result.split_sizes == {s: int((table.split == i).sum()) for i, s in
                                  enumerate(("train", "val", "test"))}
    assert f"split: train {result.split_sizes['train']}, " in result.summary()
    with CacheReader(out) as cache:
        assert cache.n == 24 and cache.size == 16
        assert cache.class_names == ["No Finding", "Mass", "Nodule"]
        assert list(cache.image_index) == list(table.image_index)
        assert (cache.labels == table.label).all() and (cache.labels == -1).sum() == 6
        assert (cache.multi_hot == table.multi_hot).all()
        assert (cache.patient_ids == table.patient_id).all()
        assert list(cache.split) == [("train", "val", "test")[s] for s in table.split]
        index = {p.name: p for p in root.rglob("*.png")}
        pixels = cache.read(np.arange(cache.n))
        for i, name in enumerate(cache.image_index):
            assert (pixels[i] == load_gray(index[name], 16)).all(), name
        # read() returns the requested order, duplicates included
        order = [5, 2, 2, 17, 0]
        assert (cache.read(order) == pixels[order]).all()
        assert (cache.read([3, 4, 5]) == pixels[3:6]).all()
        assert cache.read([]).shape == (0, 16, 16)
        with pytest.raises(IndexError):
            cache.read([24])
        for name in ("train", "val", "test"):
            assert (cache.split[cache.indices(name)] == name).all()
        with pytest.raises(CxrError, match="unknown split"):
            cache.indices("dev")
        attrs = cache.attrs
        assert attrs["format"] == FORMAT and attrs["multi_label"] == "keep"
        assert attrs["options"]["seed"] == 4 and attrs["options"]["size"] == 16
        assert attrs["csv_path"] == str(csv_path.resolve()) and len(attrs["csv_sha256"]) == 64
        assert attrs["split_names"] == ["train", "val", "test"] and attrs["cxraug_version"]
        assert attrs["fingerprint"] == result.fingerprint and attrs["created"]
    with h5py.File(out, "r") as h5:
        assert h5["images"].chunks == (1, 16, 16) and h5["images"].dtype == np.uint8
        assert h5["label"].dtype == np.int16 and h5["patient_id"].dtype == np.int64
        assert h5["split"].dtype == np.uint8 and h5["multi_hot"].dtype == np.uint8
    assert report_path_for(out).read_text() == "image,reason\n"
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind

    text = describe_cache(out)
    assert "fingerprint " + result.fingerprint in text and "Nodule" in text
    train_line = next(line for line in text.splitlines() if line.startswith("images"))
    assert train_line.split()[-1] == "24"


def test_same_inputs_same_fingerprint_and_pixels(small_set: tuple[Path, Path],
                                                 tmp_path: Path) -> None:
    root, csv_path = small_set
    a = run(root, csv_path, tmp_path / "a.h5", size=8, top_k=2, workers=2)
    b = run(root, csv_path, tmp_path / "b.h5", size=8, top_k=2, workers=1)
    c = run(root, csv_path, tmp_path / "c.h5", size=8, top_k=2, seed=1)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    with CacheReader(tmp_path / "a.h5") as ca, CacheReader(tmp_path / "b.h5") as cb:
        assert (ca.read(range(ca.n)) == cb.read(range(cb.n))).all()
        assert ca.class_names == ["No Finding", "Effusion", "Hernia"]  # 6-way tie: by name


def test_skips_missing_corrupt_truncated_and_escapes(small_set: tuple[Path, Path],
                                                     tmp_path: Path) -> None:
    root, csv_path = small_set
    data = tmp_path / "data"
    data.mkdir()
    names = []
    for src in sorted(root.rglob("*.png"))[:8]:
        (data / src.name).write_bytes(src.read_bytes())
        names.append(src.name)
    good = (data / names[1]).read_bytes()
    (data / names[1]).write_bytes(good[: len(good) // 2])  # truncated
    (data / names[2]).write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))  # corrupt
    (data / names[3]).unlink()  # missing
    outside = tmp_path / "outside.png"
    outside.write_bytes(good)
    (data / "00000999_000.png").symlink_to(outside)  # a symlink out of the root
    rows = [{"Image Index": n, "Finding Labels": "Mass"} for n in names]
    rows += [{"Image Index": "../outside.png", "Finding Labels": "Mass", "Patient ID": 7},
             {"Image Index": "00000999_000.png", "Finding Labels": "Mass"}]
    write_nih_csv(pd.DataFrame(rows), tmp_path / "labels.csv")
    out = tmp_path / "s.h5"
    result = run(data, tmp_path / "labels.csv", out, size=8, classes=["Mass"],
                 val_fraction=0, test_fraction=0, workers=2)
    (data / "sub").mkdir()
    (data / "sub" / names[0]).write_bytes((data / names[0]).read_bytes())  # same name twice
    dup = run(data, tmp_path / "labels.csv", tmp_path / "dup.h5", size=8, classes=["Mass"],
              val_fraction=0, test_fraction=0, workers=1)
    assert dup.n_duplicate_names == 1 and "several folders" in dup.summary()
    assert result.n_duplicate_names == 0
    assert result.n_written == 5 and result.n_skipped == 5
    assert result.skip_reasons == {"unreadable": 2, "missing": 1, "rejected": 2}
    report = pd.read_csv(report_path_for(out))
    reasons = dict(zip(report["image"], report["reason"], strict=True))
    assert reasons[names[1]].startswith("unreadable") and reasons[names[2]].startswith("unread")
    assert reasons[names[3]].startswith("missing")
    assert "'..'" in reasons["../outside.png"]
    assert "outside the data root" in reasons["00000999_000.png"]
    assert "skipped 5 images" in result.summary() and str(report_path_for(out)) in result.summary()
    with CacheReader(out) as cache:
        kept = [n for i, n in enumerate(names) if i not in (1, 2, 3)]
        assert list(cache.image_index) == kept
        for i, name in enumerate(kept):
            assert (cache.read([i])[0] == load_gray(data / name, 8)).all()
        assert cache.attrs["n_skipped"] == 5


def test_nothing_usable_fails_without_a_file(small_set: tuple[Path, Path],
                                             tmp_path: Path) -> None:
    root, csv_path = small_set
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "none.h5"
    with pytest.raises(CxrError, match="none of the"):
        run(empty, csv_path, out)
    assert not out.exists() and report_path_for(out).exists()
    broken = tmp_path / "broken"
    broken.mkdir()
    for src in sorted(root.rglob("*.png")):
        (broken / src.name).write_text("garbage")
    with pytest.raises(CxrError, match="could be decoded"):
        run(broken, csv_path, out, workers=2)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_interrupted_run_leaves_no_cache(small_set: tuple[Path, Path], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    root, csv_path = small_set
    calls = {"n": 0}
    real = cache_mod.load_gray

    def flaky(path: object, size: int) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt
        return real(path, size)

    monkeypatch.setattr(cache_mod, "load_gray", flaky)
    out = tmp_path / "k.h5"
    with pytest.raises(KeyboardInterrupt):
        run(root, csv_path, out, size=8, workers=1)
    assert calls["n"] == 10
    assert list(tmp_path.iterdir()) == []  # neither the cache nor a temporary file


def _children(pid: int) -> set[int]:
    kids: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            kids |= {int(x) for x in (task / "children").read_text().split()}
    return kids


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_kill_9_leaves_no_orphan_and_the_rerun_cleans_up(nih_sample: Path, tmp_path: Path
                                                          ) -> None:
    """SIGKILL to prepare mid-run: its decoder processes end by themselves, the rerun removes
    the dead run's temporary cache and writes the same cache as an uninterrupted run."""
    out = tmp_path / "k.h5"
    code = ("import sys; from cxraug.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.Popen([sys.executable, "-c", code, "prepare", str(nih_sample),
                             "--csv", str(nih_sample / "Data_Entry_2017.csv"), "--size", "32",
                             "--out", str(out), "--workers", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(tmp_path.glob(".k.h5.*.tmp*")) or len(_children(proc.pid)) < 2:
        assert proc.poll() is None and time.time() < deadline, "prepare ended too soon"
        time.sleep(0.05)
    workers = _children(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while any(Path(f"/proc/{w}").exists() and "Z" not in _state(w) for w in workers):
        assert time.time() < deadline, f"orphaned decoders still running: {workers}"
        time.sleep(0.1)
    assert list(tmp_path.glob(".k.h5.*.tmp*"))  # the killed run could not clean up...
    run(nih_sample, nih_sample / "Data_Entry_2017.csv", out, size=32, workers=2)
    assert not list(tmp_path.glob(".k.h5.*.tmp*"))  # ...its rerun did
    ref = tmp_path / "ref.h5"
    run(nih_sample, nih_sample / "Data_Entry_2017.csv", ref, size=32, workers=2)
    with CacheReader(out) as a, CacheReader(ref) as b:
        assert a.fingerprint == b.fingerprint
        assert np.array_equal(np.asarray(a.read(np.arange(a.n))),
                              np.asarray(b.read(np.arange(b.n))))


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def test_dead_decoder_is_a_clear_error(small_set: tuple[Path, Path], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    root, csv_path = small_set

    def crash(path: object, size: int) -> np.ndarray:
        os._exit(1)  # what a segfault or the OOM killer looks like to the pool

    monkeypatch.setattr(cache_mod, "load_gray", crash)
    monkeypatch.setattr(cache_mod, "_mp_context", lambda: cache_mod.multiprocessing.get_context(
        "fork"))  # the patched function reaches the decoders only through fork
    out = tmp_path / "dead.h5"
    with pytest.raises(CxrError, match="decoder process died.*--workers 1"):
        run(root, csv_path, out, size=8, workers=2)
    assert not out.exists() and not list(tmp_path.glob(".*"))


def test_refuses_to_overwrite(small_set: tuple[Path, Path], tmp_path: Path) -> None:
    root, csv_path = small_set
    out = tmp_path / "o.h5"
    out.write_bytes(b"precious")
    with pytest.raises(CxrError, match="--overwrite"):
        run(root, csv_path, out, size=8)
    assert out.read_bytes() == b"precious"
    run(root, csv_path, out, size=8, overwrite=True)
    with CacheReader(out) as cache:
        assert cache.n > 0
    with pytest.raises(CxrError, match="is a folder"):
        run(root, csv_path, tmp_path, size=8)


def test_reader_rejects_other_files(tmp_path: Path) -> None:
    (tmp_path / "x.h5").write_bytes(b"hello")
    with pytest.raises(CxrError, match="not an HDF5 file"):
        CacheReader(tmp_path / "x.h5")
    with h5py.File(tmp_path / "other.h5", "w") as h5:
        h5["images"] = np.zeros((1, 2, 2), dtype=np.uint8)
    with pytest.raises(CxrError, match="not a cxraug cache"):
        CacheReader(tmp_path / "other.h5")
    with pytest.raises(CxrError, match="not found"):
        describe_cache(tmp_path / "missing.h5")


def test_view_filter_and_official_lists(small_set: tuple[Path, Path], tmp_path: Path) -> None:
    root, csv_path = small_set
    names = sorted(p.name for p in root.rglob("*.png"))
    test_names = [n for n in names if n.startswith(("00000100", "00000101"))]
    (tmp_path / "test_list.txt").write_text("\n".join(test_names) + "\n")
    out = tmp_path / "v.h5"
    run(root, csv_path, out, size=8, classes=["No Finding", "Mass", "Nodule", "Effusion"],
        view="PA", test_list=tmp_path / "test_list.txt", val_fraction=0.3)
    with CacheReader(out) as cache:
        rows = pd.read_csv(csv_path)
        view = dict(zip(rows["Image Index"], rows["View Position"], strict=True))
        assert all(view[n] == "PA" for n in cache.image_index)
        test = set(cache.image_index[cache.split == "test"])
        assert test == {n for n in test_names if n in set(cache.image_index)} and test
        assert cache.attrs["options"]["test_list"]["name"] == "test_list.txt"
        assert cache.view("train") == "PA"  # prepare --view decides


def test_view_counts_per_split_give_the_training_view(small_set: tuple[Path, Path],
                                                      tmp_path: Path) -> None:
    """Without --view the cache counts View Position per split; its training view is the most
    common recorded one, which export writes into the generator and augment into its rows."""
    root, csv_path = small_set
    out = tmp_path / "all.h5"
    run(root, csv_path, out, size=8, classes=["No Finding", "Mass", "Nodule", "Effusion"],
        multi_label="keep", val_fraction=0.2, test_fraction=0.2)
    rows = pd.read_csv(csv_path)
    view = dict(zip(rows["Image Index"], rows["View Position"], strict=True))
    with CacheReader(out) as cache:
        counts = cache.attrs["view_counts"]
        for split in ("train", "val", "test"):
            names = cache.image_index[cache.split == split]
            want = pd.Series([view[n] for n in names]).value_counts().to_dict()
            assert counts[split] == want, split
        assert cache.view("train") == "PA"  # 2 of 3 rows are PA
    assert cache_mod.main_view({}, {"train": {"": 9, "AP": 2, "PA": 1}}) == "AP"
    assert cache_mod.main_view({}, {"train": {"": 9}}) == ""  # nothing recorded
    assert cache_mod.main_view({}, None) == ""  # a cache from before view counts
    assert cache_mod.main_view({"view": "ap"}, {"train": {"PA": 5}}) == "AP"


def test_cli_prepare_info_and_errors(small_set: tuple[Path, Path], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    root, csv_path = small_set
    out = tmp_path / "cli.h5"
    rc = main(["prepare", str(root), "--csv", str(csv_path), "--out", str(out), "--size", "8",
               "--top-k", "2", "--workers", "1"])
    captured = capsys.readouterr()
    assert rc == 0 and f"wrote {out}" in captured.out
    assert main(["info", str(out)]) == 0
    assert "fingerprint" in capsys.readouterr().out
    rc = main(["prepare", str(root), "--csv", str(tmp_path / "missing.csv"), "--out",
               str(tmp_path / "m.h5")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "not found" in err
    assert err.strip().count("\n") == 0
    bad = tmp_path / "bad.csv"
    bad.write_text("Image Index,Finding Labels\n00000001_000.png,Mass,extra\n")
    rc = main(["prepare", str(root), "--csv", str(bad), "--out", str(tmp_path / "m.h5")])
    err = capsys.readouterr().err
    assert rc == 2 and "line 2 has 3 fields" in err and err.strip().count("\n") == 0
    rc = main(["prepare", str(root), "--csv", str(csv_path), "--out", str(out)])
    assert rc == 2 and "--overwrite" in capsys.readouterr().err
    rc = main(["info", str(bad)])
    assert rc == 2 and "not an HDF5 file" in capsys.readouterr().err
    assert not (tmp_path / "m.h5").exists()


def test_prepare_and_info_do_not_import_tensorflow(small_set: tuple[Path, Path],
                                                   tmp_path: Path) -> None:
    root, csv_path = small_set
    out = tmp_path / "tf.h5"
    code = (
        "import sys\n"
        "from cxraug.cli import main\n"
        f"assert main(['prepare', {str(root)!r}, '--csv', {str(csv_path)!r}, '--out', "
        f"{str(out)!r}, '--size', '8', '--workers', '2']) == 0\n"
        f"assert main(['info', {str(out)!r}]) == 0\n"
        "import cxraug.data.cache, cxraug.data.labels, cxraug.data.images\n"
        "print('TF' if 'tensorflow' in sys.modules else 'NO-TF')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "NO-TF"


def test_nih_sample_prepare(nih_sample: Path, tmp_path: Path) -> None:
    """Real NIH PNGs, RGBA ones included, through the worker pool (a subset keeps it quick)."""
    index = {p.name: p for p in (nih_sample / "images").glob("*.png")}
    rgba = {n for n, p in index.items() if Image.open(p).mode == "RGBA"}
    assert rgba
    frame = pd.read_csv(nih_sample / "Data_Entry_2017.csv", index_col=False)
    subset = frame[frame["Image Index"].isin(rgba) | (frame.index % 20 == 0)]
    subset.to_csv(tmp_path / "subset.csv", index=False)
    out = tmp_path / "nih.h5"
    result = prepare(data_root=nih_sample, csv=tmp_path / "subset.csv", out=out, size=64,
                     classes=list(ALL_LABELS), multi_label="keep", workers=2, progress=False)
    assert result.n_skipped == 0 and result.n_written == len(subset)
    with CacheReader(out) as cache:
        assert rgba <= set(cache.image_index)
        pixels = cache.read(np.arange(cache.n))
        for i, name in enumerate(cache.image_index):
            assert (pixels[i] == load_gray(index[name], 64)).all()
        assert cache.attrs["options"]["multi_label"] == "keep"


@pytest.mark.slow
def test_sigterm_through_the_cli_leaves_nothing(nih_sample: Path, tmp_path: Path) -> None:
    """A real run with decoder processes, stopped mid-way: exit 130, no cache, no temp file."""
    import signal
    import time

    out = tmp_path / "t.h5"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cxraug.cli", "prepare", str(nih_sample), "--csv",
         str(nih_sample / "Data_Entry_2017.csv"), "--out", str(out), "--classes",
         ",".join(ALL_LABELS), "--multi-label", "keep", "--workers", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".t.h5.*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(tmp_path.glob(".t.h5.*")), "prepare never started writing"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert list(tmp_path.iterdir()) == []
