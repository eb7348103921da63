"""Recipes: the built-ins load and are sane; every user mistake is one clear CxrError."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxraug.errors import CxrError
from cxraug.model_options import CxraugOptions, PaperOptions
from cxraug.recipe import (
    ModelConfig,
    available_recipes,
    field_docs,
    load_recipe,
    model_config,
    validate_model,
)

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
    assert r.model.options.fast_conv_grad


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
    assert small.model.label_mode == "multi-hot" and small.model.options.upsample == "nearest"
    assert small.model.options.minibatch_std and small.train.ada_target > 0
    assert not {"brightness", "contrast"} & set(small.train.diffaugment)
    assert small.model.options.d_channels == 16 and small.model.options.g_min_channels == 32
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


# a run folder's recipe.toml [model] table as versions before per-family options wrote it:
# flat, every family's keys (here a paper run: the cxraug keys at their defaults)
OLD_PAPER_MODEL = """
[model]
arch = "paper"
image_size = 128
latent_dim = 100
embedding_dim = 50
label_mode = "index"
filters = 64
fast_conv_grad = false
g_channels = 256
g_min_channels = 16
d_channels = 32
spectral_norm = true
upsample = "nearest"
minibatch_std = false
"""


def test_old_flat_files_load_to_the_same_values_and_write_back_unchanged(
        tmp_path: Path) -> None:
    """The [model] table stays flat on disk: an old run folder's recipe.toml loads into the
    family's options and writes back byte for byte (resume compares these tables)."""
    path = tmp_path / "recipe.toml"
    path.write_text(OLD_PAPER_MODEL)
    r = load_recipe(path)
    assert r.model.options == PaperOptions(filters=64, fast_conv_grad=False)
    written = r.to_toml()
    assert written[written.index("[model]"):written.index("\n[train]")].strip() == \
        OLD_PAPER_MODEL.strip()
    assert load_recipe(path, overrides={"model.filters": "32"}).model.options.filters == 32
    for name in BUILTIN:  # every family's keys, flat, in the order they always had
        assert list(load_recipe(name).to_dict()["model"]) == [
            "arch", "image_size", "latent_dim", "embedding_dim", "label_mode", "filters",
            "fast_conv_grad", "g_channels", "g_min_channels", "d_channels", "spectral_norm",
            "upsample", "minibatch_std"]
    small = load_recipe("small-data-64")
    assert small.model.options == CxraugOptions(g_channels=128, g_min_channels=32,
                                                d_channels=16, upsample="nearest",
                                                minibatch_std=True)


def test_an_option_of_another_family(tmp_path: Path) -> None:
    """A switch of another family is refused with the one-line error it always had; another
    family's sizes are read, range-checked and ignored, as before (overrides that switch
    model.arch keep working)."""
    paper = {"model.arch": "paper", "train.aux_class_weight": 0.0}
    with pytest.raises(CxrError, match=r"smoke-32\.toml: model\.upsample = 'bilinear' needs "
                                       r'model\.arch = "cxraug" \(the paper\'s generator '
                                       r"upsamples by transposed convolutions\)$"):
        load_recipe("smoke-32", overrides={**paper, "model.upsample": "bilinear"})
    with pytest.raises(CxrError, match=r'model\.minibatch_std needs model\.arch = "cxraug"; '
                                       r"set it to false$"):
        load_recipe("smoke-32", overrides={**paper, "model.minibatch_std": True})
    with pytest.raises(CxrError, match=r"model\.g_channels must be at least 1, got 0"):
        load_recipe("smoke-32", overrides={**paper, "model.g_channels": 0})
    r = load_recipe("smoke-32", overrides={**paper, "model.g_channels": 32})
    assert r.model.options == PaperOptions() and r.to_dict()["model"]["g_channels"] == 256
    assert load_recipe("smoke-32", overrides={"model.filters": 64}).model.options == \
        load_recipe("smoke-32").model.options


def test_configs_in_code_take_the_flat_keys_and_their_familys_options() -> None:
    assert model_config(arch="paper", filters=16).options == PaperOptions(filters=16)
    assert ModelConfig(arch="cxraug").options == CxraugOptions()
    with pytest.raises(CxrError, match="model.arch paper takes PaperOptions, got "
                                       "CxraugOptions"):
        validate_model(ModelConfig(arch="paper", options=CxraugOptions()))


def test_every_option_is_listed_with_its_doc() -> None:
    docs = field_docs()
    for key in ("filters", "fast_conv_grad", "g_channels", "g_min_channels", "d_channels",
                "spectral_norm", "upsample", "minibatch_std"):
        assert docs[f"model.{key}"].strip(), key
    assert "model.options" not in docs
