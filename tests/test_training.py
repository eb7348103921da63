"""Training stage: data stream, GAN step, run folder, resume, determinism, guards, sampling.

Every trainer build costs a graph trace (several seconds on 2 cores), so the tests share the
session's ``smoke_run`` and build as few extra trainers as the behaviour under test needs.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from cxraug.errors import CxrError
from cxraug.recipe import load_recipe


def _weights(run_dir: Path, checkpoint: str | None = None) -> dict[str, list[np.ndarray]]:
    """Every variable of a checkpoint (G, D, EMA, optimizers), read without building models."""
    import tensorflow as tf

    from cxraug.training.run import checkpoint_prefix, resolve_checkpoint

    entry = resolve_checkpoint(run_dir, checkpoint)
    reader = tf.train.load_checkpoint(checkpoint_prefix(run_dir, entry))
    # wall-clock times differ between runs
    skip = ("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter", "epoch_wall", "run_seconds")
    names = sorted(n for n in reader.get_variable_to_shape_map() if not n.startswith(skip))
    return {n: reader.get_tensor(n) for n in names}


def _max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64))))
               if np.asarray(a[k]).dtype.kind in "fiu" else 0.0 for k in a)


# --------------------------------------------------------------------------------- dataset
def test_epoch_plan_is_reproducible_and_a_permutation(phantom_cache: Path) -> None:
    from cxraug.training.dataset import CacheDataset

    ds = CacheDataset(phantom_cache, batch_size=16, seed=3)
    plan = ds.epoch_plan(0)
    assert plan.shape == (ds.n // 16, 16)
    assert len(np.unique(plan)) == plan.size  # no image twice within one pass
    assert np.array_equal(plan, CacheDataset(phantom_cache, batch_size=16, seed=3).epoch_plan(0))
    assert not np.array_equal(plan, ds.epoch_plan(1))
    assert not np.array_equal(plan, CacheDataset(phantom_cache, batch_size=16, seed=4)
                              .epoch_plan(0))


def test_class_balanced_sampling_is_uniform_over_classes(phantom_cache: Path) -> None:
    from cxraug.training.dataset import CacheDataset

    ds = CacheDataset(phantom_cache, batch_size=32, class_balanced=True, steps_per_epoch=200)
    counts = ds.class_counts[ds.present_classes]
    assert counts.max() >= 3 * counts.min(), "the phantom split should be imbalanced"
    drawn = np.bincount(ds.labels[ds.epoch_plan(0).ravel()], minlength=ds.num_classes)
    share = drawn[ds.present_classes] / drawn.sum()
    assert np.all(np.abs(share - 1 / len(ds.present_classes)) < 0.02), share
    natural = CacheDataset(phantom_cache, batch_size=32, steps_per_epoch=200)
    nat = np.bincount(natural.labels[natural.epoch_plan(0).ravel()], minlength=ds.num_classes)
    assert nat.argmax() == np.argmax(ds.class_counts)  # frequency sampling keeps the imbalance


def test_dataset_streams_batches_without_loading_the_cache(
    phantom_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cxraug.training import dataset as dataset_mod

    ds = dataset_mod.CacheDataset(phantom_cache, batch_size=8, seed=0)
    reads: list[int] = []
    original = h5py.Dataset.__getitem__

    def spy(self: h5py.Dataset, key: object) -> np.ndarray:
        out = original(self, key)
        if self.name == "/images":
            reads.append(len(out))
        return out

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    batches = list(ds.dataset(epoch=0).take(3))
    assert reads and max(reads) <= 8 and len(reads) <= 3 + 2  # batch by batch (+ prefetch)
    images, labels = batches[0]
    assert images.shape == (8, ds.size, ds.size, 1) and images.dtype.name == "float32"
    assert -1.0 <= float(np.min(images)) and float(np.max(images)) <= 1.0
    assert labels.dtype.name == "int32"
    # What the stream holds is an index plan, not pixels.
    held = sum(v.nbytes for v in vars(ds).values() if isinstance(v, np.ndarray))
    assert held < ds.n * ds.size * ds.size / 4
    # Resume support: starting at step k gives the batches k.. of the same epoch.
    full = [b[0] for b in ds.batches(epoch=2)]
    tail = [b[0] for b in ds.batches(epoch=2, start_step=2)]
    assert all(np.array_equal(a, b) for a, b in zip(full[2:], tail, strict=True))


def test_multi_hot_labels(phantom_cache: Path) -> None:
    from cxraug.training.dataset import CacheDataset

    ds = CacheDataset(phantom_cache, batch_size=4, label_mode="multi-hot")
    _, labels = next(iter(ds.dataset(0)))
    assert labels.shape == (4, ds.num_classes) and labels.dtype.name == "float32"
    assert np.all(np.asarray(labels).sum(axis=1) >= 1)


# ------------------------------------------------------------------------------ the step
def _tiny(arch: str, **train: object):
    model = {"model.arch": arch, "model.image_size": 32, "model.latent_dim": 16,
             "model.embedding_dim": 8, "model.filters": 8, "model.g_channels": 32,
             "model.d_channels": 8}
    return load_recipe("smoke-32", overrides={**model, "train.batch_size": 8,
                                              **{f"train.{k}": v for k, v in train.items()}})


@pytest.mark.slow
@pytest.mark.parametrize("arch,half,loss,aux", [("paper", True, "bce", 0.0),
                                                ("paper", False, "bce", 0.0),
                                                ("cxraug", False, "hinge", 0.0),
                                                ("cxraug", False, "hinge", 1.0),
                                                ("cxraug", True, "bce", 0.5)])
def test_one_step_moves_every_weight_of_both_networks(arch: str, half: bool, loss: str,
                                                      aux: float) -> None:
    import tensorflow as tf

    from cxraug.training.step_tf import TFTrainer

    recipe = _tiny(arch, d_half_batches=half, loss=loss, diffaugment="translation,cutout" if
                   arch == "cxraug" else "", aux_class_weight=aux)
    trainer = TFTrainer(recipe, num_classes=7)
    heads = [v.path for v in trainer.discriminator.trainable_variables if "class_logits" in v.path]
    assert len(heads) == (2 if aux else 0)  # the auxiliary class head exists only when asked
    g0 = [v.numpy().copy() for v in trainer.generator.trainable_variables]
    d0 = [v.numpy().copy() for v in trainer.discriminator.trainable_variables]
    n = trainer.real_batch
    real = tf.random.uniform([n, 32, 32, 1], -1, 1, seed=1)
    labels = tf.constant(np.arange(n) % 7, tf.int32)
    out = trainer.train_step(real, labels)
    assert all(np.isfinite(float(v)) for v in out.values())
    for name, before, model in (("G", g0, trainer.generator), ("D", d0, trainer.discriminator)):
        still = [v.path for b, v in zip(before, model.trainable_variables, strict=True)
                 if np.array_equal(b, v.numpy())]
        # Under hinge loss with every logit inside the margin (typical at initialization), the
        # gradient of D's output bias is exactly 0.5 * (-1 + 1) = 0; nothing else may stay put.
        allowed = [p for p in still if loss == "hinge" and name == "D" and p.endswith("bias")]
        assert still == allowed and len(allowed) <= 1, f"{arch}: {name} unchanged: {still}"
    # The paper's half-batch mode makes two D updates per step, the other mode one.
    assert int(trainer.d_optimizer.iterations.numpy()) == (2 if half else 1)
    assert int(trainer.g_optimizer.iterations.numpy()) == 1


def test_auxiliary_class_loss_is_weighted_cross_entropy() -> None:
    """The class term against hand-computed softmax / sigmoid cross-entropy, in both label modes,
    and exactly zero without the head."""
    import tensorflow as tf

    from cxraug.losses import class_loss

    logits = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]], np.float32)
    got = class_loss(tf.constant(logits), tf.constant([0, 1]), "index", 0.5).numpy()
    assert got.shape == (2, 1)  # per example, like the GAN loss of logits [N, 1]: no broadcasting
    got = got[:, 0]
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(got, 0.5 * -log_softmax[[0, 1], [0, 1]], rtol=1e-6)
    hot = np.array([[1, 0, 1], [0, 0, 0]], np.float32)
    got = class_loss(tf.constant(logits), tf.constant(hot), "multi-hot", 0.5).numpy()[:, 0]
    p = 1 / (1 + np.exp(-logits))
    bce = -(hot * np.log(p) + (1 - hot) * np.log(1 - p))
    np.testing.assert_allclose(got, 0.5 * bce.sum(axis=1), rtol=1e-5)
    assert np.all(class_loss(None, tf.constant([0, 1]), "index", 0.5).numpy() == 0)


def test_auxiliary_class_loss_needs_the_cxraug_discriminator() -> None:
    with pytest.raises(CxrError, match="aux_class_weight needs model.arch"):
        _tiny("paper", aux_class_weight=1.0)
    with pytest.raises(CxrError, match=r"aux_class_weight must be in \[0, 100\]"):
        _tiny("cxraug", aux_class_weight=-1.0)


@pytest.mark.slow
@pytest.mark.parametrize("option", ["mixed_precision", "xla"])
def test_mixed_precision_and_xla_build_and_step_on_cpu(option: str) -> None:
    import tensorflow as tf

    from cxraug.training.step_tf import TFTrainer

    trainer = TFTrainer(_tiny("cxraug", **{option: True}), num_classes=7)
    real = tf.random.uniform([8, 32, 32, 1], -1, 1, seed=1)
    out = trainer.train_step(real, tf.constant(np.arange(8) % 7, tf.int32))
    assert all(np.isfinite(float(v)) for v in out.values())
    assert int(trainer.step.numpy()) == 1
    if option == "mixed_precision":
        assert trainer.generator.dtype_policy.name == "mixed_float16"
        import keras

        assert keras.mixed_precision.dtype_policy().name == "float32"  # process policy restored


def test_diff_augment_is_differentiable_and_keeps_shape() -> None:
    import tensorflow as tf

    from cxraug.diffaugment import diff_augment

    rng = tf.random.Generator.from_seed(0)
    x = tf.Variable(tf.random.uniform([4, 16, 16, 1], -1, 1, seed=2))
    with tf.GradientTape() as tape:
        y = diff_augment(x, ["translation", "cutout", "brightness", "contrast"], rng)
        loss = tf.reduce_sum(y)
    grad = tape.gradient(loss, x)
    assert y.shape == x.shape and grad is not None and float(tf.reduce_sum(tf.abs(grad))) > 0
    cut = diff_augment(tf.ones([8, 16, 16, 1]), ["cutout"], rng).numpy()
    zeros = (cut == 0).reshape(8, -1).sum(1)
    assert np.all((zeros >= 16) & (zeros <= 64))  # an 8x8 square per image, clipped at borders
    assert set(np.unique(cut)) <= {0.0, 1.0}


# ------------------------------------------------------------------------ the run folder
def test_run_folder_tells_the_story(smoke_run: Path) -> None:
    from PIL import Image

    from cxraug.training.run import read_checkpoint_index
    from cxraug.training.sampling import GRID_PAD, tile_size

    info = json.loads((smoke_run / "run.json").read_text())
    assert info["status"] == "finished" and info["epochs_done"] == 3
    assert info["data"]["fingerprint"] and len(info["class_names"]) == 7
    assert {"tensorflow", "keras", "cxraug"} <= set(info["versions"])
    assert info["sessions"][0]["command"]
    recipe = load_recipe(smoke_run / "recipe.toml")
    assert recipe.train.epochs == 3 and recipe.name == "smoke-32"
    with open(smoke_run / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["epoch", "step", "kimg", "d_acc_fake", "d_acc_real", "d_loss",
                             "g_loss", "r_t", "aug_p", "wall_s", "img_per_s", "realism_gap",
                             "contrast", "dynamic_range", "exposure_spread", "brightness",
                             "histogram_c2st", "hf_energy", "spectrum_c2st", "cnn_c2st",
                             "c2st_val", "near_copy", "diversity"]
    assert rows[0]["c2st_val"] == ""  # realism is measured only with train.eval_every
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert all(0 <= float(r["d_acc_real"]) <= 1 and float(r["img_per_s"]) > 0 for r in rows)
    grids = sorted((smoke_run / "samples").glob("epoch_*.png"))
    assert [g.name for g in grids] == ["epoch_0001.png", "epoch_0002.png", "epoch_0003.png"]
    grid = Image.open(grids[-1])
    tile = tile_size(32)
    columns = recipe.train.grid_columns
    assert grid.height == 7 * (tile + GRID_PAD) + GRID_PAD  # a row per class
    assert grid.width > columns * (tile + GRID_PAD)  # a column per fixed z, plus names
    assert np.load(smoke_run / "grid_z.npy").shape == (columns, recipe.model.latent_dim)
    index = read_checkpoint_index(smoke_run)
    assert [e["epoch"] for e in index] == [1, 2, 3]
    assert any((smoke_run / "tensorboard").iterdir())
    assert "epoch 3/3" in (smoke_run / "log.txt").read_text()


def test_load_generator_and_sample_grid(smoke_run: Path, tmp_path: Path) -> None:
    from PIL import Image

    from cxraug.cli import main
    from cxraug.training.run import load_generator
    from cxraug.training.sampling import GRID_PAD, tile_size

    loaded = load_generator(smoke_run)
    assert (loaded.epoch, loaded.ema, loaded.checkpoint) == (3, True, "ckpt-" + str(loaded.step))
    assert loaded.class_names == json.loads((smoke_run / "run.json").read_text())["class_names"]
    early = load_generator(smoke_run, checkpoint="1")
    assert early.epoch == 1
    z = np.zeros((2, loaded.recipe.model.latent_dim), np.float32)
    a = np.asarray(loaded.model({"z": z, "label": np.array([0, 1], np.int32)}))
    b = np.asarray(early.model({"z": z, "label": np.array([0, 1], np.int32)}))
    assert a.shape == (2, 32, 32, 1) and not np.allclose(a, b)
    with pytest.raises(CxrError, match="available: ckpt-"):
        load_generator(smoke_run, checkpoint="ckpt-999")
    out = tmp_path / "grid.png"
    assert main(["sample", "--run", str(smoke_run), "--out", str(out), "--columns", "3"]) == 0
    grid = Image.open(out)
    assert grid.height == 7 * (tile_size(32) + GRID_PAD) + GRID_PAD
    assert grid.width > 3 * (tile_size(32) + GRID_PAD)
    assert main(["sample", "--run", str(tmp_path), "--out", str(out)]) == 2  # not a run


def test_label_changes_the_output_after_training(smoke_run: Path) -> None:
    """For fixed z, switching the label changes the image clearly more than at initialization."""
    import keras

    from cxraug import models
    from cxraug.training.run import load_generator

    loaded = load_generator(smoke_run)
    keras.utils.set_random_seed(loaded.recipe.train.seed)
    untrained = models.build_generator(loaded.recipe.model, len(loaded.class_names))
    z = np.random.default_rng(1).standard_normal((16, loaded.recipe.model.latent_dim))

    def label_effect(g: keras.Model) -> float:
        outs = np.stack([np.asarray(g({"z": z.astype(np.float32),
                                       "label": np.full(16, c, np.int32)}, training=False))
                         for c in range(7)])
        return float(np.mean([np.abs(outs[a] - outs[b]).mean()
                              for a in range(7) for b in range(a + 1, 7)]))

    trained, initial = label_effect(loaded.model), label_effect(untrained)
    assert trained > 0.01 and trained > 1.5 * initial, (trained, initial)


def test_refuses_a_non_empty_folder_and_a_changed_recipe(
    smoke_run: Path, phantom_cache: Path, tmp_path: Path
) -> None:
    from cxraug.training.loop import train

    recipe = load_recipe("smoke-32")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(CxrError, match="not empty; add --resume"):
        train(recipe, data=phantom_cache, out=busy, progress=False)
    with pytest.raises(CxrError, match="not a cxraug run folder"):
        train(recipe, data=phantom_cache, out=busy, resume=True, progress=False)
    assert (busy / "notes.txt").read_text() == "mine"
    with pytest.raises(CxrError, match="holds no run"):
        train(recipe, data=phantom_cache, out=tmp_path / "new", resume=True, progress=False)
    changed = load_recipe("smoke-32", overrides={"train.g_lr": 3e-4, "train.epochs": 3})
    with pytest.raises(CxrError, match=r"recipe differs.*train\.g_lr"):
        train(changed, data=phantom_cache, out=smoke_run, resume=True, progress=False)
    other = tmp_path / "other.h5"
    shutil.copy(phantom_cache, other)
    with h5py.File(other, "r+") as handle:
        handle.attrs["fingerprint"] = "0" * 64
    same = load_recipe("smoke-32", overrides={"train.epochs": 3, "train.checkpoint_every": 1})
    with pytest.raises(CxrError, match="is not the one run"):
        train(same, data=other, out=smoke_run, resume=True, progress=False)
    damaged = tmp_path / "damaged"
    shutil.copytree(smoke_run, damaged)
    (damaged / "recipe.toml").unlink()
    with pytest.raises(CxrError, match="no recipe.toml"):
        train(same, data=phantom_cache, out=damaged, resume=True, progress=False)


def test_the_resume_refusal_lists_what_may_change_from_the_tuple(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The refusal of a changed recipe names every key of RESUMABLE_CHANGES, read when the
    message is made: a key added to (or removed from) the tuple is in (or out of) the message."""
    import cxraug.training.loop as loop
    import cxraug.training.resume as resume
    from cxraug.training.run import RunPaths

    assert loop.RESUMABLE_CHANGES is resume.RESUMABLE_CHANGES
    paths = RunPaths(tmp_path / "run")
    paths.root.mkdir()
    paths.run_json.write_text(json.dumps({"backend": "tensorflow"}))
    paths.recipe.write_text(load_recipe("smoke-32").to_toml())
    changed = load_recipe("smoke-32", overrides={"train.g_lr": 3e-4})

    def refusal() -> str:
        with pytest.raises(CxrError, match=r"recipe differs.*train\.g_lr") as caught:
            resume.check_folder(paths, True, "tensorflow", changed)
        return str(caught.value)

    message = refusal()
    assert all(key in message for key in resume.RESUMABLE_CHANGES), message
    assert resume.resumable_changes() in message
    monkeypatch.setattr(resume, "RESUMABLE_CHANGES", ("train.epochs", "train.made_up_key"))
    other = refusal()
    assert other != message and "train.made_up_key" in other and "train.kimg" not in other
    # a key the tuple allows is no change at all
    monkeypatch.setattr(resume, "RESUMABLE_CHANGES", ("train.g_lr",))
    assert resume.check_folder(paths, True, "tensorflow", changed) == {"backend": "tensorflow"}


# --------------------------------------------------------------- resume and determinism
@pytest.mark.slow
def test_resume_equals_an_uninterrupted_run_and_seeds_reproduce(
    smoke_run: Path, phantom_cache: Path, tmp_path: Path
) -> None:
    from cxraug.training.loop import train

    def recipe(epochs: int):
        return load_recipe("smoke-32", overrides={"train.epochs": epochs,
                                                  "train.checkpoint_every": 1})

    # Seed determinism: a fresh 2-epoch run equals the session run's epoch-2 checkpoint.
    straight = tmp_path / "straight"
    train(recipe(2), data=phantom_cache, out=straight, progress=False)
    assert _max_diff(_weights(straight), _weights(smoke_run, "2")) == 0.0
    # 1 epoch, resume to step 11 (inside epoch 2, like Ctrl-C), resume to the end.
    split = tmp_path / "split"
    train(recipe(1), data=phantom_cache, out=split, progress=False)
    spe = json.loads((split / "run.json").read_text())["steps_per_epoch"]
    stopped = train(recipe(2), data=phantom_cache, out=split, resume=True, progress=False,
                    max_steps=spe + 3)
    assert stopped.status == "stopped" and stopped.step == spe + 3
    done = train(recipe(2), data=phantom_cache, out=split, resume=True, progress=False)
    assert done.status == "finished" and done.epochs_done == 2
    assert _max_diff(_weights(straight), _weights(split)) < 1e-5
    rows = list(csv.DictReader(open(split / "metrics.csv", newline="")))
    straight_rows = list(csv.DictReader(open(straight / "metrics.csv", newline="")))
    for key in ("d_loss", "g_loss", "d_acc_real", "d_acc_fake"):
        assert [float(r[key]) for r in rows] == pytest.approx(
            [float(r[key]) for r in straight_rows], abs=1e-5)
    sessions = json.loads((split / "run.json").read_text())["sessions"]
    assert [s["resumed_from"] is not None for s in sessions] == [False, True, True]


@pytest.mark.slow
def test_nan_guard_stops_and_keeps_the_last_good_checkpoint(
    phantom_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cxraug.training import loop
    from cxraug.training.run import read_checkpoint_index
    from cxraug.training.step_tf import TFTrainer

    original = TFTrainer.train_step
    calls = {"n": 0}

    def poisoned(self: TFTrainer, real: object, labels: object) -> object:
        calls["n"] += 1
        if calls["n"] == 5:  # second step of epoch 2: break D's weights
            var = self.discriminator.trainable_variables[0]
            var.assign(var * float("nan"))
        return original(self, real, labels)

    out = tmp_path / "nan"
    recipe = load_recipe("smoke-32", overrides={"train.epochs": 3, "train.checkpoint_every": 1,
                                                "train.steps_per_epoch": 3})
    monkeypatch.setattr(TFTrainer, "train_step", poisoned)
    with pytest.raises(CxrError, match=r"diverged at epoch 2, step 5.*last good checkpoint ckpt-3"):
        loop.train(recipe, data=phantom_cache, out=out, progress=False)
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "failed" and "non-finite" in info["error"]
    assert [e["step"] for e in read_checkpoint_index(out)] == [3]
    weights = _weights(out)
    assert all(np.all(np.isfinite(v)) for v in weights.values() if v.dtype.kind == "f")


# ------------------------------------------------------- budgets, realism tracking, EMA, ADA
def _budget_recipe(**train: object):
    return load_recipe("smoke-32", overrides={"train.checkpoint_every": 1, "train.eval_every": 1,
                                              "train.eval_images": 64,
                                              **{f"train.{k}": v for k, v in train.items()}})


@pytest.mark.slow
def test_kimg_budget_stops_where_it_should_and_resumes_exactly(
        phantom_cache: Path, tmp_path: Path) -> None:
    """0.4 kimg at batch 32 is 13 steps: one 7-step epoch and 6 steps into the second. A run cut
    at step 4 and resumed ends on the same weights, metrics and best checkpoint."""
    from cxraug.training.loop import train
    from cxraug.training.run import read_checkpoint_index, resolve_checkpoint

    straight = train(_budget_recipe(kimg=0.4), data=phantom_cache, out=tmp_path / "a",
                     progress=False)
    assert straight.status == "finished" and straight.step == 13 == straight.end_step
    rows = list(csv.DictReader(open(tmp_path / "a" / "metrics.csv", newline="")))
    assert [(int(r["epoch"]), int(r["step"])) for r in rows] == [(1, 7), (2, 13)]
    assert float(rows[-1]["kimg"]) == pytest.approx(13 * 32 / 1000)
    assert all(0 <= float(r["c2st_val"]) <= 1 and r["near_copy"] != "" for r in rows)
    assert all(float(r["contrast"]) > 0 and 0 <= float(r["cnn_c2st"]) <= 1 for r in rows)
    assert all(r["realism_gap"] != "" for r in rows)
    best = [e for e in read_checkpoint_index(tmp_path / "a") if e["reason"] == "best"]
    assert len(best) == 1 and resolve_checkpoint(tmp_path / "a")["name"] == best[0]["name"]
    assert resolve_checkpoint(tmp_path / "a", "latest")["name"] == "ckpt-13"

    cut = train(_budget_recipe(kimg=0.4), data=phantom_cache, out=tmp_path / "b",
                progress=False, max_steps=4)
    assert cut.status == "stopped" and cut.step == 4
    done = train(_budget_recipe(kimg=0.4), data=phantom_cache, out=tmp_path / "b", resume=True,
                 progress=False)
    assert done.status == "finished" and done.step == 13
    assert _max_diff(_weights(tmp_path / "a", "latest"), _weights(tmp_path / "b", "latest")) < 1e-5
    again = list(csv.DictReader(open(tmp_path / "b" / "metrics.csv", newline="")))
    for key in ("d_loss", "g_loss", "c2st_val", "near_copy", "realism_gap", "cnn_c2st"):
        assert [float(r[key]) for r in again] == pytest.approx([float(r[key]) for r in rows],
                                                                abs=1e-5)
    assert resolve_checkpoint(tmp_path / "b")["name"] == best[0]["name"]
    # a larger budget continues the same run (the budget may change on --resume)
    more = train(_budget_recipe(kimg=0.5), data=phantom_cache, out=tmp_path / "b", resume=True,
                 progress=False)
    assert more.status == "finished" and more.step == 16


@pytest.mark.slow
def test_ctrl_c_at_the_end_of_an_epoch_keeps_its_metrics_row(
        phantom_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while epoch 1's grid is drawn (its steps done, its row not yet written): --resume
    writes that row, so metrics.csv has every epoch exactly once."""
    import cxraug.training.loop as loop

    real_grid = loop.generate_grid
    calls = {"n": 0}

    def interrupted_grid(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt
        return real_grid(*args, **kwargs)

    monkeypatch.setattr(loop, "generate_grid", interrupted_grid)
    recipe = load_recipe("smoke-32", overrides={"train.epochs": 2, "train.sample_every": 1})
    with pytest.raises(KeyboardInterrupt):
        loop.train(recipe, data=phantom_cache, out=tmp_path / "r", progress=False)
    done = loop.train(recipe, data=phantom_cache, out=tmp_path / "r", resume=True,
                      progress=False)
    assert done.status == "finished" and done.epochs_done == 2
    rows = list(csv.DictReader(open(tmp_path / "r" / "metrics.csv", newline="")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    spe = int(rows[0]["step"])
    assert [int(r["step"]) for r in rows] == [spe, 2 * spe]


@pytest.mark.slow
def test_a_best_checkpoint_before_any_regular_one_loads(phantom_cache: Path, tmp_path: Path
                                                        ) -> None:
    """A budget that ends before the first regular checkpoint still leaves a usable best one."""
    from cxraug.training.loop import train
    from cxraug.training.run import load_generator

    recipe = load_recipe("smoke-32", overrides={"train.kimg": 0.25, "train.checkpoint_every": 50,
                                                "train.eval_every": 1, "train.eval_images": 64})
    train(recipe, data=phantom_cache, out=tmp_path / "c", progress=False)
    loaded = load_generator(tmp_path / "c")
    assert loaded.checkpoint.startswith("best-") and loaded.step == 8


@pytest.mark.slow
def test_time_budget_is_summed_over_sessions(phantom_cache: Path, tmp_path: Path) -> None:
    from cxraug.training.loop import train

    recipe = load_recipe("smoke-32", overrides={"train.minutes": 1e-4})  # 6 ms: one step
    first = train(recipe, data=phantom_cache, out=tmp_path / "t", progress=False)
    assert first.status == "finished" and first.step == 1
    info = json.loads((tmp_path / "t" / "run.json").read_text())
    assert info["run_seconds"] >= 0.006
    assert "time budget" in (tmp_path / "t" / "log.txt").read_text()
    again = train(recipe, data=phantom_cache, out=tmp_path / "t", resume=True, progress=False)
    assert again.status == "finished" and again.step == 1  # the budget was already spent


def test_ema_generator_statistics_belong_to_its_weights(smoke_run: Path) -> None:
    """The sampled/exported EMA generator in inference mode behaves like the same weights with
    their own batch statistics (BigGAN's standing statistics); the live generator's statistics,
    which older versions copied into it, do not fit it."""
    import keras
    import tensorflow as tf

    from cxraug import models
    from cxraug.training.run import checkpoint_prefix, load_generator, resolve_checkpoint

    loaded = load_generator(smoke_run, "latest")
    ema = loaded.model
    live = models.build_generator(loaded.recipe.model, len(loaded.class_names))
    prefix = checkpoint_prefix(smoke_run, resolve_checkpoint(smoke_run, "latest"))
    tf.train.Checkpoint(generator=live).restore(prefix).expect_partial()

    def bns(model: keras.Model) -> list[keras.layers.BatchNormalization]:
        return [layer for layer in model._flatten_layers()
                if isinstance(layer, keras.layers.BatchNormalization)]

    rng = np.random.default_rng(0)
    z = rng.standard_normal((512, loaded.recipe.model.latent_dim)).astype(np.float32)
    inputs = {"z": z, "label": rng.integers(0, 7, 512).astype(np.int32)}
    batch_stats = np.asarray(ema(inputs, training=True))
    own = np.abs(np.asarray(ema(inputs, training=False)) - batch_stats).mean()
    for bn, donor in zip(bns(ema), bns(live), strict=True):
        assert not np.allclose(bn.moving_mean.numpy(), donor.moving_mean.numpy())
        bn.moving_mean.assign(donor.moving_mean)
        bn.moving_variance.assign(donor.moving_variance)
    copied = np.abs(np.asarray(ema(inputs, training=False)) - batch_stats).mean()
    assert own < 0.5 * copied, (own, copied)


def test_ada_moves_p_toward_the_overfitting_target() -> None:
    import tensorflow as tf

    from cxraug.training.step_tf import TFTrainer
    from cxraug.training.trainer import ADA_INTERVAL

    trainer = TFTrainer(_tiny("cxraug", diffaugment="translation", ada_target=0.6,
                               ada_kimg=1.0), num_classes=7)
    rate = 8 * ADA_INTERVAL / 1000.0  # batch 8, p from 0 to 1 in 1 kimg
    assert float(trainer.aug_p.numpy()) == 0.0

    def steps(r_t: float, n: int) -> None:
        for _ in range(n):
            p, acc = trainer.ada_update(trainer.aug_p, trainer.ada_acc, tf.constant(r_t),
                                        trainer.step)
            trainer.aug_p.assign(p)
            trainer.ada_acc.assign(acc)
            trainer.step.assign_add(1)

    steps(1.0, 2 * ADA_INTERVAL)  # D sure of every real: overfitting, raise p twice
    assert float(trainer.aug_p.numpy()) == pytest.approx(2 * rate)
    steps(0.0, ADA_INTERVAL - 1)  # no change before the interval ends
    assert float(trainer.aug_p.numpy()) == pytest.approx(2 * rate)
    steps(0.0, 1 + 3 * ADA_INTERVAL)  # below target: lower p, never below 0
    assert float(trainer.aug_p.numpy()) == 0.0


def test_the_jax_checkpoint_layout_is_written_and_read_in_one_place(tmp_path: Path) -> None:
    """A JAX checkpoint's arrays round-trip through its one owner (numpy only, no JAX): the
    state, the host counters, the EMA statistics, and a generator's weights for export; a
    network of another shape is refused."""
    from types import SimpleNamespace

    from cxraug.training import jax_checkpoint as J

    state = {"g": [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(4, np.float32)],
             "g_stats": [np.full(2, 3.0, np.float32)], "ema": [np.zeros((2, 3), np.float32),
                                                             np.zeros(4, np.float32)],
             "step": np.asarray(7, np.int32)}
    host = {"epoch": 2, "epoch_wall": 1.5, "run_seconds": 9.0}
    path = tmp_path / f"ckpt-7{J.SUFFIX}"
    np.savez(path, **J.pack(state, host, [np.full(2, 5.0, np.float32)]))
    with np.load(path) as data:
        assert str(data["format"]) == J.FORMAT and int(data["g/count"]) == 2
        saved, counters, stats = J.unpack(data, state, {k: 0 for k in host}, 1, str(path))
    assert counters == host and isinstance(counters["epoch"], int)
    assert int(saved["step"]) == 7 and np.array_equal(saved["g"][0], state["g"][0])
    assert [s.tolist() for s in stats] == [[5.0, 5.0]]
    with np.load(path) as data, pytest.raises(CxrError, match="holds shape"):
        J.unpack(data, {**state, "g": [np.zeros((3, 2)), np.ones(4)]}, host, None, str(path))

    class Var(SimpleNamespace):
        def assign(self, value: np.ndarray) -> None:
            self.value = np.asarray(value)

    def generator(shape: tuple[int, ...]) -> SimpleNamespace:
        return SimpleNamespace(
            trainable_variables=[Var(shape=shape, path="w"), Var(shape=(4,), path="b")],
            non_trainable_variables=[Var(shape=(2,), path="mean")])

    g = generator((2, 3))
    J.load_generator_weights(g, path, use_ema=True)
    assert g.trainable_variables[0].value.sum() == 0 and g.non_trainable_variables[0].value[0] == 5
    J.load_generator_weights(g, path, use_ema=False)
    assert g.trainable_variables[0].value.sum() == 15 and g.non_trainable_variables[0].value[0] == 3
    with pytest.raises(CxrError, match="does not match the run's recipe"):
        J.load_generator_weights(generator((3, 2)), path, use_ema=False)


def test_diff_augment_with_probability_zero_is_the_identity() -> None:
    import tensorflow as tf

    from cxraug.diffaugment import diff_augment

    rng = tf.random.Generator.from_seed(0)
    x = tf.random.uniform([6, 16, 16, 1], -1, 1, seed=3)
    policies = ["translation", "cutout", "brightness", "contrast"]
    assert np.array_equal(diff_augment(x, policies, rng, tf.constant(0.0)).numpy(), x.numpy())
    changed = diff_augment(x, policies, rng, tf.constant(1.0)).numpy()
    assert all(not np.allclose(changed[i], x.numpy()[i]) for i in range(6))


def test_minibatch_std_never_mixes_reals_and_fakes() -> None:
    from cxraug.models.layers import MinibatchStdDev

    rng = np.random.default_rng(0)
    same = np.repeat(rng.normal(size=(1, 4, 4, 3)), 4, axis=0)
    varied = rng.normal(size=(4, 4, 4, 3))
    out = np.asarray(MinibatchStdDev(4)(np.concatenate([same, varied]).astype(np.float32)))
    assert out.shape == (8, 4, 4, 4)
    assert np.allclose(out[:4, ..., 3], 0, atol=1e-3)  # a group of identical images: no spread
    assert np.all(out[4:, ..., 3] > 0.5)


def test_new_training_options_are_validated() -> None:
    with pytest.raises(CxrError, match="ada_target needs train.diffaugment"):
        load_recipe("smoke-32", overrides={"train.ada_target": 0.6, "train.diffaugment": ""})
    with pytest.raises(CxrError, match="multiple of 4"):
        load_recipe("smoke-32", overrides={"model.minibatch_std": True, "train.batch_size": 30})
    with pytest.raises(CxrError, match="train.kimg must be 0"):
        load_recipe("smoke-32", overrides={"train.kimg": -1})


def test_regularizers_are_validated_from_the_registry() -> None:
    """Each registered penalty's weight is a [train] field, checked in one loop: R1 keeps its
    one-line errors."""
    from cxraug.losses import REGULARIZERS
    from cxraug.recipe import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert all(reg.weight in fields for reg in REGULARIZERS.values())
    with pytest.raises(CxrError, match=r"train\.r1_gamma must be 0 \(off\) or more"):
        load_recipe("smoke-32", overrides={"train.r1_gamma": -1})
    with pytest.raises(CxrError, match="r1_gamma needs the full-batch D step"):
        load_recipe("smoke-32", overrides={"train.r1_gamma": 1, "train.d_half_batches": True})


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_a_registered_regularizer_is_picked_up_by_each_backend(backend: str) -> None:
    """A toy penalty registered as one REGULARIZERS entry (tests/regularizer_probe.py) adds
    exactly its weighted mean to D's loss in that backend's step, and nothing else changes."""
    import os
    import subprocess
    import sys

    from helpers import REPO

    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "tests/regularizer_probe.py"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["backend"] == backend
    without, with_toy = out["without"], out["with"]
    assert with_toy["d_loss"] - without["d_loss"] == pytest.approx(out["penalty"], rel=1e-5)
    for key in ("g_loss", "d_acc_real", "d_acc_fake", "r_t"):
        assert with_toy[key] == pytest.approx(without[key], rel=1e-5, abs=1e-6), key
