"""The generator that ships with cxraug: installed with the package, used by `augment` without
--model, and described by a committed evaluate report that `evaluate` reproduces."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cxraug.data.nih import NIH_HEADER_LINE
from cxraug.inference.generator import DEFAULT_MODEL, OnnxGenerator, model_card

REPO = Path(__file__).resolve().parents[1]
FOLDER = REPO / "cxraug" / "exported_models"
REPORT = FOLDER / "nih-sample-64" / "report.json"
SHARED = Path(os.environ.get("CXRAUG_NIH_SAMPLE", REPO.parent / "shared" / "nih-sample")).parent


def test_default_model_is_small_real_and_says_what_it_is() -> None:
    assert DEFAULT_MODEL == FOLDER / "nih-sample-64.onnx" and DEFAULT_MODEL.is_file()
    assert DEFAULT_MODEL.stat().st_size < 8 * 2**20  # a few MB: it ships in the wheel
    gen = OnnxGenerator(DEFAULT_MODEL, device="cpu")
    assert (gen.image_size, gen.label_mode, len(gen.class_names)) == (64, "multi-hot", 15)
    assert gen.view == "PA" and gen.meta["recipe_name"] == "small-data-64"
    assert int(gen.meta["train_images"]) == 362  # the NIH sample's training split
    card = model_card(DEFAULT_MODEL)
    assert "362 images" in card and "view PA" in card
    # images vary with z and respond to the label (not one picture per class)
    z = np.random.default_rng(0).standard_normal((8, gen.latent_dim)).astype(np.float32)
    hot = np.zeros((8, 15), np.float32)
    hot[:, 0] = 1
    a = gen.generate(z, hot)
    assert a.shape == (8, 64, 64) and float(a.std(axis=0).mean()) > 0.05
    # the committed report belongs to this very file
    from cxraug.io_utils import sha256_file

    report = json.loads(REPORT.read_text())
    assert report["generator_sha256"] == sha256_file(DEFAULT_MODEL)


def test_augment_without_model_in_a_fresh_process(tmp_path: Path) -> None:
    """The README's first command: no --model, no real data; it says both, and how the shipped
    model's images measured in use (its .downstream.json), in its first lines."""
    out = tmp_path / "aug"
    proc = subprocess.run(
        [sys.executable, "-m", "cxraug.cli", "augment", "--target-per-class", "2", "--out",
         str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    first = proc.stderr.splitlines()[:3]
    assert first[0].startswith("using the default generator") and "nih-sample-64.onnx" in first[0]
    assert first[1].startswith("how to use these images (`cxraug downstream`")
    assert "Train on real images only" in first[1]
    assert first[2].startswith("no real data given") and "from 0 to 2" in first[2]
    # the shipped training reference turns the privacy filter on without being asked
    assert any(line.startswith("privacy filter on: ") and "362 training images" in line
               for line in proc.stderr.splitlines())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["filters"]["privacy"]["n_train"] == 362
    assert all(row["filter"]["kept"] == 2 for row in manifest["classes"])
    lines = (out / "Data_Entry_2017.csv").read_text().splitlines()
    assert lines[0] == NIH_HEADER_LINE and len(lines) == 1 + 15 * 2
    assert all(",PA,64,64," in line for line in lines[1:])  # view and size on every row
    assert len(list((out / "images").glob("*.png"))) == 30


@pytest.mark.slow
def test_a_non_editable_install_finds_the_default_model(tmp_path: Path) -> None:
    """Build the wheel, install it into a bare folder and look the model up from there."""
    # an older setuptools cannot build it: then pip fetches a new one into an isolated build
    isolation = ["--no-build-isolation"] if _setuptools_major() >= 77 else []
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", *isolation,
                    "-w", str(tmp_path / "wheel"), str(REPO)], check=True, timeout=600)
    (wheel,) = (tmp_path / "wheel").glob("cxraug-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        assert "cxraug/exported_models/nih-sample-64.onnx" in zf.namelist()
        assert "cxraug/exported_models/nih-sample-64.trainref.h5" in zf.namelist()
        # what downstream measured for it: augment says how to use its images
        assert "cxraug/exported_models/nih-sample-64.downstream.json" in zf.namelist()
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target",
                    str(site), str(wheel)], check=True, timeout=600)
    code = ("import cxraug.inference.generator as g; "
            "print(g.DEFAULT_MODEL.resolve(), g.DEFAULT_MODEL.is_file())")
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=120, check=True)
    path, found = proc.stdout.split()
    assert found == "True" and Path(path).is_relative_to(site.resolve())


def _setuptools_major() -> int:
    """The installed setuptools' major version (0 when absent): pyproject.toml needs 77+."""
    if importlib.util.find_spec("setuptools") is None:
        return 0
    from importlib.metadata import version

    return int(version("setuptools").split(".")[0])


def _nih_cache(tmp_path: Path) -> Path:
    """The cache of exported_models/README.md, made the same way (same bytes, same splits)."""
    from cxraug.data.cache import prepare

    sample, held = SHARED / "nih-sample", SHARED / "nih-heldout"
    if not (sample / "Data_Entry_2017.csv").is_file() or not (held / "images").is_dir():
        pytest.skip(f"needs the real NIH images in {sample} and {held}")
    rows = (held / "Data_Entry_2017.csv").read_bytes().split(b"\n", 1)[1]
    combined = tmp_path / "combined.csv"
    combined.write_bytes((sample / "Data_Entry_2017.csv").read_bytes() + rows)
    names = [line.split(b",", 1)[0] for line in rows.splitlines() if line]
    (tmp_path / "heldout_list.txt").write_bytes(b"\n".join(names) + b"\n")
    report = json.loads(REPORT.read_text())
    out = tmp_path / "nih64.h5"
    prepare(data_root=SHARED, csv=combined, out=out, size=64, classes=list(report["classes"]),
            multi_label="keep", test_list=tmp_path / "heldout_list.txt", progress=False)
    return out


@pytest.mark.slow
def test_committed_report_is_reproduced(tmp_path: Path) -> None:
    """`evaluate` on the shipped model gives the committed numbers (pixel statistics and the
    linear realism probes exactly, the CNN probe and the judge's numbers within the noise of
    retraining them)."""
    from cxraug.evaluation.report import evaluate

    committed = json.loads(REPORT.read_text())
    cache = _nih_cache(tmp_path)
    from cxraug.data.cache import CacheReader

    with CacheReader(cache) as reader:
        assert reader.fingerprint == committed["data_fingerprint"]
    evaluate(model=DEFAULT_MODEL, data=cache, out=tmp_path / "report", split=committed["split"],
             n_per_class=committed["n_per_class"], seed=committed["seed"],
             min_heldout=committed["min_heldout"], progress=False)
    again = json.loads((tmp_path / "report" / "report.json").read_text())
    a, b = committed["overall"], again["overall"]
    assert b["two_sample"]["accuracy"] == pytest.approx(a["two_sample"]["accuracy"], abs=0.02)
    assert b["pixel_diversity_ratio"] == pytest.approx(a["pixel_diversity_ratio"], abs=0.02)
    assert b["near_copy_fraction"] == pytest.approx(a["near_copy_fraction"], abs=0.01)
    # the realism probes: the linear ones exactly; the CNN's within its noise (its sums were
    # BLAS-thread dependent before it ran on one thread: 0.675 then, 0.668 since)
    for name, probe in a["probes"].items():
        again_probe = b["probes"][name]
        tolerance = 0.03 if name == "cnn_c2st" else 1e-4
        assert again_probe["value"] == pytest.approx(probe["value"], abs=tolerance), name
        assert again_probe["real"] == pytest.approx(probe["real"], abs=tolerance), name
    for key in ("synthetic_accuracy", "synthetic_auroc"):
        if a.get(key) is not None:
            assert b[key] == pytest.approx(a[key], abs=0.08), key
