"""The phantom data set (`cxraug demo-data`): layout, determinism, and learnable labels.

The separability tests train a small numpy classifier (ridge regression on simple image features)
on part of a phantom set and check it beats chance clearly on held-out patients, while the same
classifier on global mean and standard deviation stays near chance: the signs, not the exposure,
carry the labels.
"""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxraug.data.labels import read_nih_csv, select_classes, single_label_counts
from cxraug.data.nih import (
    CANONICAL_COLUMNS,
    NIH_HEADER_LINE,
    NO_FINDING,
    PAPER_CLASSES,
    image_name,
)
from cxraug.data.phantom import (
    CSV_NAME,
    PHANTOM_CLASSES,
    PHANTOM_PATHOLOGIES,
    SIGNS,
    Anatomy,
    ImageSpec,
    Sign,
    make_phantom_dataset,
    plan_dataset,
    register_sign,
    render_image,
    render_phantoms,
)
from cxraug.data.phantom import render as render_module
from cxraug.data.phantom.dataset import readme_text
from cxraug.data.phantom.signs import Canvas, Notes, Scene
from cxraug.errors import CxrError

SIZE = 64


def _folder_bytes(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


# ------------------------------------------------------------------------------- layout, CSV
def test_layout_and_counts(phantom_dir: Path) -> None:
    images = sorted((phantom_dir / "images").glob("*.png"))
    assert len(images) == 420
    assert (phantom_dir / "README.txt").read_text().lower().count("synthetic") >= 1
    prefix = f".{phantom_dir.name}."
    leftovers = [p for p in phantom_dir.parent.iterdir() if p.name.startswith(prefix)]
    assert not leftovers  # the temporary folder was renamed into place
    with Image.open(images[0]) as im:
        assert im.mode == "L" and im.size == (SIZE, SIZE)
    frame = read_nih_csv(phantom_dir / CSV_NAME)
    assert sorted(frame["Image Index"]) == [p.name for p in images]
    # every paper class has enough single-label images for small tests, Cardiomegaly is rarer
    counts = frame["Finding Labels"].value_counts()
    for name in PAPER_CLASSES:
        assert counts[name] >= 25, (name, counts[name])
    assert counts[NO_FINDING] == counts.max()
    assert 0 < counts["Cardiomegaly"] < min(counts[c] for c in PAPER_CLASSES)
    multi = [s for s in frame["Finding Labels"] if "|" in s]
    assert len(multi) == 42
    for text in multi:
        parts = text.split("|")
        assert len(parts) == 2 and parts == sorted(parts) and NO_FINDING not in parts
    assert select_classes(frame, top_k=6) == list(PAPER_CLASSES)
    assert list(single_label_counts(frame).index[1:7]) == [
        "Infiltration", "Atelectasis", "Effusion", "Nodule", "Mass", "Pneumothorax"]


def test_csv_is_nih_layout(phantom_dir: Path) -> None:
    path = phantom_dir / CSV_NAME
    text = path.read_text()
    assert text.splitlines()[0] == NIH_HEADER_LINE
    rows = list(csv.reader(text.splitlines()))
    assert len(rows[0]) == 12 and {len(r) for r in rows[1:]} == {11}
    # plain pandas sees NIH's quirk: 12 header names, the last column empty
    plain = pd.read_csv(path)
    assert plain.shape == (420, 12)
    assert list(plain.columns[7:9]) == ["OriginalImage[Width", "Height]"]
    assert plain.iloc[:, 11].isna().all()
    # the project's reader gives typed canonical columns
    frame = read_nih_csv(path)
    assert set(CANONICAL_COLUMNS) <= set(frame.columns)
    assert len(frame) == 420 and frame.notna().all(axis=None)
    pairs = zip(frame["Patient ID"], frame["Follow-up #"], strict=True)
    names = [image_name(p, f) for p, f in pairs]
    assert names == list(frame["Image Index"])
    assert set(frame["Patient Gender"]) == {"M", "F"}
    assert set(frame["View Position"]) == {"PA", "AP"}
    assert frame["Patient Age"].between(18, 95).all()
    assert (frame["OriginalImage Width"] == SIZE).all()
    assert (frame["OriginalImage Height"] == SIZE).all()
    assert np.allclose(frame["OriginalImagePixelSpacing x"].astype(float), 0.143 * 1024 / SIZE)
    # patients have 1-4 follow-ups numbered from 0; each patient's sex is stable
    per_patient = frame.groupby("Patient ID")
    assert per_patient.size().between(1, 4).all() and per_patient.size().max() > 1
    assert (per_patient["Follow-up #"].max() + 1 == per_patient.size()).all()
    assert (per_patient["Patient Gender"].nunique() == 1).all()


def test_pngs_are_the_rendered_images(phantom_dir: Path) -> None:
    specs = plan_dataset(420, seed=0, multi_label_fraction=0.1)
    for spec in specs[::97]:
        with Image.open(phantom_dir / "images" / spec.name) as im:
            assert np.array_equal(np.asarray(im), render_image(spec, SIZE, seed=0))


# ------------------------------------------------------------------------------ determinism
def test_same_seed_same_bytes_any_worker_count(tmp_path: Path) -> None:
    a = make_phantom_dataset(tmp_path / "a", n=24, size=48, seed=3, progress=False, workers=1)
    b = make_phantom_dataset(tmp_path / "b", n=24, size=48, seed=3, progress=False, workers=2)
    assert a.counts == b.counts and a.csv_path.is_file()
    files_a, files_b = _folder_bytes(tmp_path / "a"), _folder_bytes(tmp_path / "b")
    assert len(files_a) == 24 + 2 and files_a == files_b
    make_phantom_dataset(tmp_path / "c", n=24, size=48, seed=4, progress=False)
    files_c = _folder_bytes(tmp_path / "c")
    differing = [k for k in files_a if k.endswith(".png") and files_a[k] != files_c.get(k)]
    assert len(differing) >= 20  # another seed draws other patients, signs and exposures


def test_same_patient_same_anatomy_at_any_size() -> None:
    images, specs = render_phantoms(12, 96, seed=1)
    small, _ = render_phantoms(12, 48, seed=1)
    down = images.reshape(12, 48, 2, 48, 2).astype(float).mean((2, 4))
    corr = [np.corrcoef(d.ravel(), s.ravel())[0, 1] for d, s in zip(down, small, strict=True)]
    assert min(corr) > 0.9  # the same scene, drawn at two resolutions
    by_patient: dict[int, list[int]] = {}
    for spec in specs:
        by_patient.setdefault(spec.patient_id, []).append(spec.index)
    assert any(len(v) > 1 for v in by_patient.values())


def test_refuses_to_clobber_and_overwrites_its_own(tmp_path: Path) -> None:
    out = tmp_path / "set"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(CxrError, match="not empty"):
        make_phantom_dataset(out, n=4, size=32, progress=False)
    with pytest.raises(CxrError, match="not a cxraug phantom"):
        make_phantom_dataset(out, n=4, size=32, progress=False, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"

    ours = tmp_path / "ours"
    make_phantom_dataset(ours, n=6, size=32, seed=1, progress=False)
    with pytest.raises(CxrError, match="--overwrite"):
        make_phantom_dataset(ours, n=4, size=32, progress=False)
    result = make_phantom_dataset(ours, n=4, size=32, seed=2, progress=False, overwrite=True)
    assert len(list((ours / "images").iterdir())) == 4 and result.n == 4
    assert "4 phantom images" in result.summary()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0}, "--n"),
        ({"size": 8}, "--size"),
        ({"seed": -1}, "--seed"),
        ({"multi_label_fraction": 1.5}, "--multi-label-fraction"),
        ({"workers": 0}, "workers"),
    ],
)
def test_bad_options(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(CxrError, match=match):
        make_phantom_dataset(tmp_path / "x", progress=False, **{"n": 4, "size": 32, **kwargs})
    assert not (tmp_path / "x").exists()


def test_failed_run_leaves_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cxraug.data.phantom.dataset as phantom  # the writer's module: where PNGs are encoded

    calls = []

    def failing(image: np.ndarray) -> bytes:
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C half-way
        return encode(image)

    encode = phantom.encode_png
    monkeypatch.setattr(phantom, "encode_png", failing)
    with pytest.raises(KeyboardInterrupt):
        make_phantom_dataset(tmp_path / "set", n=10, size=32, progress=False, workers=1)
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its temporary twin


def test_cli_demo_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cxraug.cli import main

    out = tmp_path / "demo"
    assert main(["demo-data", "--out", str(out), "--n", "10", "--size", "32", "--seed", "5"]) == 0
    assert "10 phantom images" in capsys.readouterr().out
    assert main(["demo-data", "--out", str(out), "--n", "10", "--size", "32"]) == 2
    assert "--overwrite" in capsys.readouterr().err


# ------------------------------------------------------------------------------- the signs
def test_every_phantom_finding_has_one_registered_sign() -> None:
    """Each finding a phantom can carry (and no other name) has its sign in the registry, once."""
    carried = {label for spec in plan_dataset(600, seed=2, multi_label_fraction=0.5)
               for label in spec.labels}
    assert carried == set(PHANTOM_PATHOLOGIES) == set(SIGNS)
    for finding, sign in SIGNS.items():
        assert sign.finding == finding and (sign.draw or sign.reshape), finding
    with pytest.raises(ValueError, match="already registered"):
        register_sign(Sign("Effusion", "a second sign", draw=SIGNS["Effusion"].draw))
    readme = readme_text(10, 64, 0, 0.1, {"No Finding": 10})
    for sign in SIGNS.values():
        assert readme.count(f"  {sign.finding:<13} {sign.description}\n") == 1
    with pytest.raises(ValueError, match="no phantom sign is registered for Hernia"):
        render_image(ImageSpec(0, 1, 0, ("Hernia",), 40, "M", "PA"), 32)


def _inert(sign: Sign) -> Sign:
    """``sign`` with the same random draws but no effect: images then differ by its effect only."""

    def draw(c: Canvas, scene: Scene, rng: np.random.Generator, notes: Notes) -> None:
        assert sign.draw is not None
        sign.draw(c, Scene.empty(c.x), rng, notes)

    def reshape(a: Anatomy, rng: np.random.Generator, notes: Notes) -> Anatomy:
        assert sign.reshape is not None
        sign.reshape(a, rng, notes)
        return a

    return replace(sign, draw=draw if sign.draw else None,
                   reshape=reshape if sign.reshape else None)


@pytest.mark.parametrize("finding", PHANTOM_PATHOLOGIES)
def test_a_registered_sign_changes_the_lungs(finding: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Rendering with the sign against rendering with the same random numbers but the sign
    made inert: the images differ, and the difference lies in the lungs (a sign that drew
    nothing, or drew outside the lungs, fails)."""
    canvases: list[Canvas] = []
    draw_signs = render_module.draw_signs

    def recording(labels: tuple[str, ...], canvas: Canvas, rng: np.random.Generator,
                  notes: Notes) -> Scene:
        canvases.append(canvas)
        return draw_signs(labels, canvas, rng, notes)

    monkeypatch.setattr(render_module, "draw_signs", recording)
    for index in (0, 1):
        spec = ImageSpec(index, 3 + index, 0, (finding,), 50, "MF"[index], "PA")
        with_sign = render_image(spec, 128, seed=0).astype(np.int16)
        with monkeypatch.context() as inert:
            inert.setitem(SIGNS, finding, _inert(SIGNS[finding]))
            without = render_image(spec, 128, seed=0).astype(np.int16)
        margins = canvases[-1].margins  # the anatomy without the sign
        lungs = (margins[0] > 0) | (margins[1] > 0)
        elsewhere = (margins[0] < -0.08) & (margins[1] < -0.08)
        change = np.abs(with_sign - without)
        assert change[lungs].max() >= 40, (finding, index, change[lungs].max())
        # exposure normalization moves every pixel a little; the sign moves the lungs
        assert change[lungs].mean() > 2.5 * change[elsewhere].mean(), (finding, index)


# --------------------------------------------------------------------------- separability
def _box(a: np.ndarray, r: int) -> np.ndarray:
    """Mean over a (2r+1)^2 window (edge-padded), via summed-area tables."""
    k = 2 * r + 1
    p = np.pad(a, ((0, 0), (r + 1, r), (r + 1, r)), mode="edge").cumsum(1).cumsum(2)
    return (p[:, k:, k:] - p[:, :-k, k:] - p[:, k:, :-k] + p[:, :-k, :-k]) / (k * k)


def _pool(a: np.ndarray, k: int) -> np.ndarray:
    n, h, w = a.shape
    return a.reshape(n, h // k, k, w // k, k).mean((2, 4))


def _standardize(images: np.ndarray) -> np.ndarray:
    x = images.astype(np.float64) / 255.0
    return (x - x.mean((1, 2), keepdims=True)) / x.std((1, 2), keepdims=True)


def _dark_zone(z: np.ndarray, share: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """The darkest ``share`` of each (smoothed) image, mostly lungs: mask and its pixel values."""
    n = len(z)
    flat = _box(z, 2).reshape(n, -1)
    m = int(share * flat.shape[1])
    idx = np.argpartition(flat, m, axis=1)[:, :m]
    mask = np.zeros(flat.shape, bool)
    np.put_along_axis(mask, idx, True, axis=1)
    return mask.reshape(z.shape), np.take_along_axis(z.reshape(n, -1), idx, axis=1)


def _rim_darkness(z: np.ndarray, lung: np.ndarray) -> np.ndarray:
    """How dark the edge of the dark zone gets (10th percentile, negated): a pneumothorax rim."""
    n = len(z)
    rim = lung & ~(_box(lung.astype(np.float64), 2) > 0.99)
    values = np.sort(np.where(rim, z, np.inf).reshape(n, -1), axis=1)
    return -values[np.arange(n), (0.1 * rim.sum((1, 2))).astype(int)]


def _features(images: np.ndarray) -> np.ndarray:
    """Layout (8x8 means), histogram, and lung-restricted darkness/blob statistics."""
    z = _standardize(images)
    n = len(z)
    lung, lz = _dark_zone(z)
    tophat = np.where(lung, z - _box(z, 3), 0.0)
    blob = np.where(lung, _box(z, 1) - _box(z, 4), 0.0)
    lq = np.quantile(lz, [0.02, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.98], axis=1).T
    texture = (z - _box(z, 1)) ** 2
    parts = [
        _pool(z, 8).reshape(n, -1),
        np.quantile(z.reshape(n, -1), np.linspace(0.01, 0.99, 15), axis=1).T,
        np.sort(tophat.reshape(n, -1), axis=1)[:, -8:],
        np.sort(blob.reshape(n, -1), axis=1)[:, -6:],
        lq - lq[:, 4:5],
        np.stack([(texture * lung).sum((1, 2)) / lung.sum((1, 2)), _rim_darkness(z, lung)], 1),
    ]
    for half in (slice(0, SIZE // 2), slice(SIZE // 2, SIZE)):
        side = lung[:, :, half]
        parts.append(_pool(side.mean(2)[:, :, None].repeat(4, 2), 4).reshape(n, -1))
    return np.concatenate(parts, axis=1)


def _fit_ridge(f: np.ndarray, y: np.ndarray, k: int, lam: float = 10.0):
    """Class-balanced ridge-regression classifier on one-hot targets: one linear solve."""
    mu, sd = f.mean(0), f.std(0) + 1e-6

    def design(q: np.ndarray) -> np.ndarray:
        return np.c_[(q - mu) / sd, np.ones(len(q))]

    a = design(f)
    weight = (len(y) / (k * np.bincount(y, minlength=k)))[y][:, None]
    gram = (a * weight).T @ a + lam * np.eye(a.shape[1])
    w = np.linalg.solve(gram, (a * weight).T @ np.eye(k)[y])
    return lambda q: (design(q) @ w).argmax(1)


def _balanced_accuracy(pred: np.ndarray, y: np.ndarray, k: int) -> float:
    return float(np.mean([np.mean(pred[y == c] == c) for c in range(k)]))


@pytest.fixture(scope="module")
def labelled_set() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Single-label images of the paper's 7 classes (+ Cardiomegaly), labels and patient ids."""
    images, specs = render_phantoms(1400, SIZE, seed=11)
    keep = [i for i, s in enumerate(specs) if len(s.labels) <= 1]
    labels = np.array([PHANTOM_CLASSES.index(specs[i].finding_labels) for i in keep])
    patients = np.array([specs[i].patient_id for i in keep])
    return images[keep], labels, patients


@pytest.mark.slow
def test_classes_separable_but_not_by_brightness(labelled_set) -> None:
    images, labels, patients = labelled_set
    paper = np.isin(labels, [PHANTOM_CLASSES.index(c) for c in PAPER_CLASSES])
    images, patients = images[paper], patients[paper]
    y = np.array([PAPER_CLASSES.index(PHANTOM_CLASSES[j]) for j in labels[paper]])
    train = patients % 3 != 0  # held-out patients, not just held-out images
    k = len(PAPER_CLASSES)

    feats = _features(images)
    predict = _fit_ridge(feats[train], y[train], k)
    acc = _balanced_accuracy(predict(feats[~train]), y[~train], k)

    x = images.astype(np.float64)
    brightness = np.stack([x.mean((1, 2)), x.std((1, 2))], axis=1)
    predict_b = _fit_ridge(brightness[train], y[train], k)
    acc_b = _balanced_accuracy(predict_b(brightness[~train]), y[~train], k)
    print(f"balanced accuracy over {k} classes: features {acc:.3f}, mean/std {acc_b:.3f}")
    assert acc > 0.55  # chance is 1/7 = 0.14
    assert acc_b < 0.25


@pytest.mark.slow
def test_every_class_shows_its_sign(labelled_set) -> None:
    images, labels, _ = labelled_set
    z = _standardize(images)
    n = len(z)
    c = (np.arange(SIZE) + 0.5) / SIZE * 2 - 1  # normalized coordinates, as the phantom draws
    u, v = np.meshgrid(c, c)
    lung, lz = _dark_zone(z)

    def region(mask: np.ndarray) -> np.ndarray:
        return z[:, mask].mean(1)

    bases = [region((v > 0.2) & (v < 0.5) & (s * u > 0.4) & (s * u < 0.8)) for s in (-1, 1)]
    lung_area = [lung[:, :, : SIZE // 2].mean((1, 2)), lung[:, :, SIZE // 2:].mean((1, 2))]
    filled = _box(lung.astype(np.float64), 4) > 0.5
    feature = {
        # a wider heart brightens the band beside the normal heart's left border
        "Cardiomegaly": region((v > 0.0) & (v < 0.4) & (u > 0.3) & (u < 0.6)),
        # fluid brightens one lung base
        "Effusion": np.maximum(*bases),
        # a rim of free air, darker than the lung, along the lung's edge
        "Pneumothorax": _rim_darkness(z, lung),
        # round opacities: the strongest blob response inside the lungs (holes filled, so a mass
        # brighter than the dark zone still counts as inside)
        "Mass": np.where(filled, _box(z, 2) - _box(z, 5), -9).reshape(n, -1).max(1),
        "Nodule": np.where(lung, z - _box(z, 2), -9).reshape(n, -1).max(1),
        # patchy opacities make the lungs brighter relative to the whole image
        "Infiltration": lz.mean(1),
        # volume loss: the two lungs' areas differ
        "Atelectasis": np.abs(lung_area[0] - lung_area[1]),
    }
    normal = labels == PHANTOM_CLASSES.index(NO_FINDING)
    for name, values in feature.items():
        sick = labels == PHANTOM_CLASSES.index(name)
        effect = (values[sick].mean() - values[normal].mean()) / values[normal].std()
        print(f"{name:<13} effect size vs No Finding {effect:+.2f}")
        assert effect > 0.5, name
