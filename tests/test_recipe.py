"""Recipes: the built-ins load and are sane; every user mistake is one clear CxrError."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxraug.errors import CxrError
from cxraug.recipe import available_recipes, field_docs, load_recipe

BUILTIN = ["cxraug-128", "paper-128", "paper-dcgan-128", "small-data-64", "smoke-32"]


def test_all_builtin_recipes_load() -> None:
    assert available_recipes() == sorted(BUILTIN)
    for name in BUILTIN:
        recipe = load_recipe(name)
        assert recipe.name == name
        assert recipe.description


def test_paper_recipe_is_the_paper() -> None:
    r = load_recipe("paper-128")
    assert (r.model.arch, r.model.image_size, r.model.latent_dim, r.model.embedding_dim) == (
        "paper", 128, 100, 50)
    assert (r.train.batch_size, r.train.epochs, r.train.g_lr, r.train.d_lr, r.train.beta1) == (
        128, 50, 2e-4, 2e-4, 0.5)
    assert r.train.loss == "bce" and r.train.d_half_batches and r.train.ema_decay == 0
    assert r.train.fake_labels == "uniform" and not r.train.class_balanced
    assert r.model.fast_conv_grad


def test_default_and_small_recipes_use_the_improvements() -> None:
    for name in ("cxraug-128", "small-data-64", "smoke-32"):
        r = load_recipe(name)
        assert r.model.arch == "cxraug" and r.train.loss == "hinge"
        assert r.train.ema_decay > 0 and r.train.diffaugment and r.train.d_lr > r.train.g_lr
    for name in ("cxraug-128", "smoke-32"):  # label fidelity on large data: class head, balance
        assert load_recipe(name).train.aux_class_weight > 0
        assert load_recipe(name).train.class_balanced
    # a few hundred real images: what the realism probes measured to hold up (docs/BENCHMARKS.md
    # "realism"): no brightness/contrast augmentation (it leaked into G's contrast), a small D,
    # room for fine detail in G, a checkpoint chosen by the probes, within 90 CPU minutes
    small = load_recipe("small-data-64")
    assert small.model.label_mode == "multi-hot" and small.model.upsample == "nearest"
    assert small.model.minibatch_std and small.train.ada_target > 0
    assert not {"brightness", "contrast"} & set(small.train.diffaugment)
    assert small.model.d_channels == 16 and small.model.g_min_channels == 32
    assert not small.train.class_balanced
    assert small.train.kimg > 0 and small.train.eval_every > 0 and small.train.minutes <= 90
    assert load_recipe("smoke-32").model.image_size == 32
    assert load_recipe("paper-128").train.aux_class_weight == 0  # the paper stays the paper


def test_unknown_key_suggests_the_right_one(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text("[train]\nepocs = 3\n")
    with pytest.raises(CxrError, match=r"unknown key train\.epocs \(did you mean epochs\?\)"):
        load_recipe(path)


def test_wrong_type_and_bad_range(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text('[train]\nbatch_size = "many"\n')
    with pytest.raises(CxrError, match=r"train\.batch_size must be int"):
        load_recipe(path)
    path.write_text("[train]\ng_lr = 3.0\n")
    with pytest.raises(CxrError, match=r"train\.g_lr must be in \(0, 1\)"):
        load_recipe(path)
    path.write_text("[model]\nimage_size = 100\n")
    with pytest.raises(CxrError, match="multiple of 16"):
        load_recipe(path)
    path.write_text('[train]\nfake_labels = "random"\n')
    with pytest.raises(CxrError, match="fake_labels must be one of uniform, data"):
        load_recipe(path)
    path.write_text("[train]\nd_half_batches = true\nbatch_size = 33\n")
    with pytest.raises(CxrError, match="even with d_half_batches"):
        load_recipe(path)
    path.write_text("[train\n")
    with pytest.raises(CxrError, match="not valid TOML"):
        load_recipe(path)


def test_unknown_recipe_name_hints() -> None:
    with pytest.raises(CxrError, match=r"unknown recipe 'smoke32' \(did you mean smoke-32\?\)"):
        load_recipe("smoke32")
    with pytest.raises(CxrError, match="not found"):
        load_recipe("missing/recipe.toml")


def test_overrides_as_the_cli_passes_them() -> None:
    r = load_recipe("smoke-32", overrides={"train.epochs": "3", "train.diffaugment": "cutout",
                                           "train.xla": "true", "model.latent_dim": 16})
    assert r.train.epochs == 3 and r.train.diffaugment == ["cutout"] and r.train.xla
    assert r.model.latent_dim == 16
    with pytest.raises(CxrError, match="expected section.key"):
        load_recipe("smoke-32", overrides={"epochs": 3})
    with pytest.raises(CxrError, match="train.epochs must be int"):
        load_recipe("smoke-32", overrides={"train.epochs": "three"})


def test_resolved_recipe_round_trips(tmp_path: Path) -> None:
    for name in BUILTIN:
        r = load_recipe(name, overrides={"train.seed": 7})
        path = tmp_path / f"{name}.toml"
        path.write_text(r.to_toml())
        assert load_recipe(path) == r


def test_every_field_is_documented() -> None:
    docs = field_docs()
    assert "train.fake_labels" in docs and "train.keep_checkpoints" in docs
    assert all(doc.strip() for doc in docs.values())
