"""cxraug from Python: `import cxraug`, load a generator, draw augment's images in memory, stream
them class-mixed and sharded across workers, into PyTorch and tf.data."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from helpers import make_generator, run
from PIL import Image

import cxraug
from cxraug.errors import CxrError


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_generator(tmp_path_factory.mktemp("api") / "g.onnx")


@pytest.fixture(scope="module")
def hot_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_generator(tmp_path_factory.mktemp("api_hot") / "h.onnx", label_mode="multi-hot")


def _pngs(out: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted((out / "images").glob("*.png"))}


def test_import_cxraug_is_cheap_and_names_the_api() -> None:
    code = ("import sys, cxraug; cxraug.CxrError; print(sorted(m for m in sys.modules if "
            "m.split('.')[0] in ('tensorflow', 'keras', 'onnxruntime', 'torch')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert out.strip() == "[]"
    for name in ("load_generator", "prepare", "augment", "evaluate", "Generator", "Drawn"):
        assert callable(getattr(cxraug, name)) and name in dir(cxraug)
    with pytest.raises(AttributeError):
        cxraug.nope  # noqa: B018


def test_generate_equals_augment_for_the_same_seed_and_labels(model: Path, hot_model: Path,
                                                               tmp_path: Path) -> None:
    g = cxraug.load_generator(model, device="cpu")
    assert g.classes[4] == "Mass" and g.image_size == 16 and g.label_mode == "index"
    assert "sha256" in g.card and not g.privacy_filter
    drawn = g.generate(["Mass", "Nodule"], n=5, seed=3)
    assert drawn.images.dtype == np.uint8 and drawn.images.shape == (10, 16, 16)
    assert drawn.label_names == ["Mass"] * 5 + ["Nodule"] * 5
    assert drawn.labels.shape == (10, 7) and (drawn.labels.sum(1) == 1).all()
    assert (drawn.labels[:5, 4] == 1).all() and (drawn.labels[5:, 5] == 1).all()
    run(model, tmp_path / "aug", per_class=5, classes=["Mass", "Nodule"], seed=3)
    written = _pngs(tmp_path / "aug")
    assert sorted(written) == sorted(drawn.names)
    for name, image in zip(drawn.names, drawn.images, strict=True):
        assert np.array_equal(written[name], image), name
    # deterministic, and images k.. of a label are the same whatever else is drawn with them
    again = g.generate("Nodule", n=3, seed=3, start=2)
    assert np.array_equal(again.images, drawn.images[7:10]) and again.ks == [2, 3, 4]
    assert not np.array_equal(g.generate("Nodule", n=3, seed=4).images, drawn.images[5:8])
    # a multi-hot model: combinations as augment's --label
    h = cxraug.load_generator(hot_model, device="cpu")
    combo = h.generate(["Effusion|Mass"], n=4, seed=1)
    run(hot_model, tmp_path / "hot", per_class=4, classes=["Mass"], labels=["Effusion|Mass"],
        seed=1)
    written = _pngs(tmp_path / "hot")
    assert combo.label_names == ["Effusion|Mass"] * 4
    assert (combo.labels[:, [h.classes.index("Effusion"), h.classes.index("Mass")]] == 1).all()
    for name, image in zip(combo.names, combo.images, strict=True):
        assert np.array_equal(written[name], image), name


def test_bad_labels_and_numbers_are_one_line_errors(model: Path) -> None:
    g = cxraug.load_generator(model, device="cpu")
    with pytest.raises(CxrError, match="no such class.*did you mean 'Mass'"):
        g.generate("Mas", n=1)
    with pytest.raises(CxrError, match="multi-hot"):
        g.generate("Effusion|Mass", n=1)
    with pytest.raises(CxrError, match="non-negative"):
        g.generate("Mass", n=-1)
    with pytest.raises(CxrError, match="weights"):
        g.stream({"Mass": -1.0})
    with pytest.raises(CxrError, match="worker 2 of 2"):
        g.stream(worker=2, workers=2)


def test_streams_mix_as_asked_and_shard_across_workers_without_repeats(model: Path) -> None:
    """The mixing and sharding logic alone (no framework): positions only, then images."""
    g = cxraug.load_generator(model, device="cpu")
    mix = {"Mass": 3.0, "Nodule": 1.0}
    one = list(g.stream(mix, seed=5, n=4000).positions())
    assert [i for i, _, _ in one] == list(range(4000))
    share = Counter(t for _, t, _ in one)
    assert share[0] / 4000 == pytest.approx(0.75, abs=0.03)
    pairs = [(t, k) for _, t, k in one]
    assert len(set(pairs)) == len(pairs)  # no image twice
    for t in (0, 1):  # each label's images in order: 0, 1, 2, ...
        assert [k for _, tt, k in one if tt == t] == list(range(share[t]))
    parts = [list(g.stream(mix, seed=5, n=4000, worker=w, workers=3).positions())
             for w in range(3)]
    assert sorted(sum(parts, [])) == one  # the union is the one-worker stream
    assert all(i % 3 == w for w, part in enumerate(parts) for i, _, _ in part)
    balanced = Counter(t for _, t, _ in g.stream(seed=0, n=7000).positions())
    assert len(balanced) == 7 and all(abs(c / 1000 - 1) < 0.12 for c in balanced.values())
    # the images: worker 1 of 2 draws exactly the one-worker stream's odd positions
    whole = list(g.stream(mix, seed=5, n=40))
    odd = list(g.stream(mix, seed=5, n=40, worker=1, workers=2))
    assert len(whole) == 40 and len(odd) == 20
    for (a, la), (b, lb) in zip(whole[1::2], odd, strict=True):
        assert np.array_equal(a, b) and np.array_equal(la, lb)
    drawn = g.generate("Mass", n=3, seed=5)  # the stream's images are generate's
    mass = [img for img, lab in whole if lab[4] == 1][:3]
    assert np.array_equal(np.stack(mass), drawn.images)


def test_tf_data_batches(model: Path) -> None:
    pytest.importorskip("tensorflow")
    g = cxraug.load_generator(model, device="cpu")
    batches = list(g.tf_dataset({"Mass": 1, "Nodule": 1}, seed=2, n=20, batch_size=8))
    assert [b[0].shape[0] for b in batches] == [8, 8, 4]
    x = np.concatenate([np.asarray(b[0]) for b in batches])
    y = np.concatenate([np.asarray(b[1]) for b in batches])
    assert x.shape == (20, 16, 16, 1) and x.dtype == np.float32 and 0 <= x.min() <= x.max() <= 1
    assert set(map(tuple, np.argwhere(y)[:, 1:].tolist())) <= {(4,), (5,)}
    whole = list(g.stream({"Mass": 1, "Nodule": 1}, seed=2, n=20))
    assert np.allclose(x[..., 0], np.stack([a for a, _ in whole]) / 255.0)


def test_torch_dataset_with_two_workers_draws_each_image_once(model: Path) -> None:
    torch = pytest.importorskip("torch", reason="torch is not a dependency of cxraug")
    from torch.utils.data import DataLoader

    g = cxraug.load_generator(model, device="cpu")
    ds = g.torch_dataset({"Mass": 1, "Nodule": 3}, seed=7, n=64)
    seen = []
    for x, y in DataLoader(ds, batch_size=8, num_workers=2):
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 16, 16)
        seen += [(tuple(a.flatten().tolist()), int(b.argmax())) for a, b in zip(x, y,
                                                                               strict=True)]
    whole = [(tuple((a.astype(np.float32) / 255).flatten().tolist()), int(lab.argmax()))
             for a, lab in g.stream({"Mass": 1, "Nodule": 3}, seed=7, n=64)]
    assert len(seen) == 64 and sorted(seen) == sorted(whole)


# ------------------------------------------------------------------ other people's loaders
def test_loaders_take_augment_output_unchanged(hot_model: Path, tmp_path: Path) -> None:
    """pandas reads both CSVs as they are; Keras' image_dataset_from_directory reads the
    class-folders layout (a label combination is a folder, so a class of its own there)."""
    import pandas as pd

    out = tmp_path / "aug"
    run(hot_model, out, per_class=3, classes=["Mass", "Nodule"], labels=["Effusion|Mass"],
        layout="class-folders")
    entries = pd.read_csv(out / "Data_Entry_2017.csv")
    assert len(entries) == 9 and entries["Patient ID"].is_unique
    assert set(entries["Finding Labels"]) == {"Mass", "Nodule", "Effusion|Mass"}
    mixed = pd.read_csv(out / "mixed.csv")
    assert len(mixed) == 9 and (mixed["Synthetic"] == 1).all()
    assert all((out / p).is_file() for p in mixed["Path"])
    pytest.importorskip("tensorflow")
    import keras

    ds = keras.utils.image_dataset_from_directory(
        out, color_mode="grayscale", image_size=(16, 16), batch_size=4,
        shuffle=False, verbose=False)
    assert ds.class_names == ["Effusion+Mass", "Mass", "Nodule"]
    labels = np.concatenate([np.asarray(y) for _, y in ds])
    assert sorted(Counter(labels.tolist()).values()) == [3, 3, 3]


def test_torchvision_image_folder_reads_the_class_folders(hot_model: Path,
                                                          tmp_path: Path) -> None:
    datasets = pytest.importorskip("torchvision.datasets",
                                   reason="torchvision is not installed here")
    out = tmp_path / "aug"
    run(hot_model, out, per_class=2, classes=["Mass", "Nodule"], layout="class-folders")
    folder = datasets.ImageFolder(str(out))
    assert folder.classes == ["Mass", "Nodule"] and len(folder) == 4


def test_torchxrayvision_loads_every_synthetic_image_with_its_labels(
        hot_model: Path, tmp_path: Path) -> None:
    """Its NIH_Dataset keeps one image per Patient ID by default: with one synthetic patient
    per image it keeps them all."""
    xrv = pytest.importorskip("torchxrayvision", reason="torchxrayvision is not installed here")
    out = tmp_path / "aug"
    run(hot_model, out, per_class=5, classes=["Mass", "Nodule", "Effusion"], view="PA")
    data = xrv.datasets.NIH_Dataset(imgpath=str(out / "images"),
                                    csvpath=str(out / "Data_Entry_2017.csv"))  # its defaults
    assert len(data) == 15
    mass = data.pathologies.index("Mass")
    assert int(np.nansum(data.labels[:, mass])) == 5
