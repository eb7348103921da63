"""Training recipes: TOML files validated into dataclasses, with CLI overrides.

A recipe has three tables, ``[model]``, ``[train]`` and ``[data]``, mirroring
:class:`ModelConfig`, :class:`TrainConfig` and :class:`DataConfig`. Every field has a default and a
``doc`` string; unknown keys, wrong types and out-of-range values are errors that name the recipe
file, the key and the fix. This module does not import TensorFlow.

A network family's own options live in its dataclass (:mod:`cxraug.model_options`, named by its
registration in :mod:`cxraug.architectures`), held as ``ModelConfig.options``. On disk the
``[model]`` table stays flat, every family's keys side by side, exactly as recipes, run folders'
recipe.toml and exported models' metadata have always written it: :func:`recipe_from_dict` maps
the keys into the family's class and :meth:`Recipe.to_dict` writes them back flat, so old files
load to the same values, ``--set model.filters=64`` works as before, and a resumed run compares
the same tables.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import tomllib

from .architectures import ARCHITECTURES, architecture, option_classes, owners
from .contract import RECIPE_LABEL_MODES
from .diffaugment import POLICIES
from .errors import CxrError
from .losses import LOSSES as GAN_LOSSES
from .losses import REGULARIZERS
from .model_options import ModelOptions
from .model_options import doc as _doc

RECIPE_DIR = Path(__file__).resolve().parent / "recipes"

#: Network families (registered in :mod:`cxraug.architectures`) and recipe label modes.
ARCHS = tuple(ARCHITECTURES)
LABEL_MODES = RECIPE_LABEL_MODES
LOSSES = tuple(GAN_LOSSES)  # registered in cxraug/losses.py
DIFFAUG_POLICIES = tuple(POLICIES)  # registered in cxraug/diffaugment.py
FAKE_LABELS = ("uniform", "data")
if typing.TYPE_CHECKING:
    from _typeshed import DataclassInstance
_T = TypeVar("_T", bound="DataclassInstance")  # a [section]'s dataclass


@dataclass
class ModelConfig:
    """Which networks to build and how big."""

    arch: str = _doc("Network family: paper | paper-dcgan | cxraug.", "cxraug")
    image_size: int = _doc("Side of the square images, a multiple of 16 (32..1024).", 128)
    latent_dim: int = _doc("Size of the latent vector z.", 100)
    embedding_dim: int = _doc("Size of the learned label embedding.", 50)
    label_mode: str = _doc(
        "index: one class per image (int label); multi-hot: a vector of classes (multi-label).",
        "index",
    )
    options: ModelOptions = field(default_factory=ModelOptions, metadata={
        "doc": "The family's own options (cxraug/model_options.py); files hold them flat."})

    def __post_init__(self) -> None:
        # the bare base class stands for "this family's defaults" (configs made in code)
        if type(self.options) is ModelOptions and self.arch in ARCHITECTURES:
            self.options = architecture(self.arch).options()


@dataclass
class TrainConfig:
    """How to train."""

    epochs: int = _doc("Passes over the training split (ignored when train.kimg is set).", 50)
    kimg: float = _doc(
        "Length in thousands of images shown to G (one per latent of a G step; StyleGAN's "
        "kimg); 0: train.epochs decides. On a few hundred images epochs mean little.", 0.0)
    minutes: float = _doc(
        "Wall-clock budget of the whole run, summed over resumed sessions; training stops at "
        "the first step past it (0: no time limit).", 0.0)
    batch_size: int = _doc("Images per step (global batch across GPUs).", 128)
    g_lr: float = _doc("Generator Adam learning rate.", 2e-4)
    d_lr: float = _doc("Discriminator Adam learning rate.", 2e-4)
    beta1: float = _doc("Adam beta1 for both optimizers.", 0.5)
    beta2: float = _doc("Adam beta2 for both optimizers.", 0.999)
    loss: str = _doc("GAN loss: bce (non-saturating, the paper) | hinge.", "bce")
    d_half_batches: bool = _doc(
        "The paper's D update: one step on half a batch of reals, one on half a batch of fakes.",
        False,
    )
    ema_decay: float = _doc("Decay of the generator's weight EMA; 0 disables it.", 0.0)
    diffaugment: list[str] = _doc(
        "Differentiable augmentations for D (translation, cutout, brightness, contrast).",
        default_factory=list,
    )
    ada_target: float = _doc(
        "Adaptive augmentation (ADA, Karras et al. 2020): each DiffAugment policy is applied to "
        "an image with probability p, raised while D overfits, i.e. while "
        "r_t = E[sign(D(real))] is above this target (0.6 in StyleGAN2-ADA); 0: off, every "
        "policy always applied.", 0.0)
    ada_kimg: float = _doc("ADA speed: kimg over which p can move from 0 to 1.", 100.0)
    class_balanced: bool = _doc("Sample every class equally often instead of by frequency.", False)
    fake_labels: str = _doc(
        "Labels of the fakes: uniform (every class equally often, the paper) | data (the real "
        "batch's labels, shuffled, so real and fake label frequencies match). Multi-hot models "
        "always use data.",
        "uniform",
    )
    aux_class_weight: float = _doc(
        "Weight of an auxiliary class loss (cxraug arch only; 0 disables it): D gets a second "
        "head that learns to name the finding of real images, and G is also trained to make that "
        "head recognise the requested finding in its fakes (metrics.csv's d_loss and g_loss "
        "then include this weighted term).",
        0.0,
    )
    r1_gamma: float = _doc(
        "R1 penalty (Mescheder et al. 2018; StyleGAN2): gamma / 2 times D's squared gradient "
        "with respect to real images, added to D's loss (metrics.csv's d_loss includes it); it "
        "keeps a discriminator that sees a few hundred images from growing sharp around each "
        "of them. 0: off.", 0.0)
    steps_per_epoch: int = _doc("Steps per epoch; 0 means one pass over the split.", 0)
    seed: int = _doc("Seed for weights, sampling and noise (reproducible on CPU).", 0)
    checkpoint_every: int = _doc("Save a checkpoint every N epochs (and always at the end).", 5)
    keep_checkpoints: int = _doc("Checkpoints kept on disk (the newest N).", 5)
    sample_every: int = _doc("Write a sample grid every N epochs.", 1)
    eval_every: int = _doc(
        "Every N epochs, measure realism on the cache's val split (other patients) and save the "
        "best checkpoint so far as 'best' (what export uses); 0: off.", 0)
    eval_images: int = _doc("Synthetic images per realism measurement.", 256)
    grid_columns: int = _doc("Fixed latent vectors (columns) in the sample grids.", 8)
    mixed_precision: bool = _doc("float16 compute on GPU (ignored on CPU).", False)
    xla: bool = _doc("Compile the training step with XLA (jit_compile).", False)


@dataclass
class DataConfig:
    """What to read from the cache."""

    split: str = _doc("Cache split to train on.", "train")


@dataclass
class Recipe:
    name: str = "custom"
    description: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain values, the ``[model]`` table flat as files hold it (:func:`model_table`)."""
        return {**dataclasses.asdict(self), "model": model_table(self.model)}

    def to_toml(self) -> str:
        return dump_toml(self.to_dict())


SECTIONS: dict[str, type] = {"model": ModelConfig, "train": TrainConfig, "data": DataConfig}


def _common_model_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(ModelConfig) if f.name != "options"]


def model_table(m: ModelConfig) -> dict[str, Any]:
    """The flat ``[model]`` table of ``m``: the common keys, then every registered family's
    options in registration order, this family's values and the others' defaults (the layout
    every recipe.toml has had, so the tables resume compares and exports record stay as they
    were)."""
    table = {key: getattr(m, key) for key in _common_model_keys()}
    for cls in option_classes():
        values = m.options if type(m.options) is cls else cls()
        table.update(dataclasses.asdict(values))
    return table


def _build_model(values: Any, source: str) -> ModelConfig:
    """A flat ``[model]`` table -> :class:`ModelConfig`, the keys of ``model.arch``'s family in
    its options. Every family's keys are read and checked as before; another family's are then
    dropped, or refused where their field says so (``elsewhere``) and the value is not that
    field's default."""
    if not isinstance(values, dict):
        raise CxrError(f"recipe {source}: [model] must be a table")
    common = _common_model_keys()
    classes = option_classes()
    fields_of = {cls: {f.name: f for f in dataclasses.fields(cls)} for cls in classes}
    known = common + [name for names in fields_of.values() for name in names]
    for key in values:
        if key not in known:
            hint = difflib.get_close_matches(key, known, n=1)
            suggestion = f" (did you mean {hint[0]}?)" if hint else ""
            raise CxrError(f"recipe {source}: unknown key model.{key}{suggestion}")
    m = _build_section(ModelConfig, {k: v for k, v in values.items() if k in common}, source,
                       "model")
    every = {cls: _build_section(cls, {k: v for k, v in values.items() if k in fields_of[cls]},
                                 source, "model") for cls in classes}
    if m.arch not in ARCHITECTURES:
        return m  # validate_model names the registered families
    own = architecture(m.arch).options

    def fail(msg: str) -> NoReturn:
        raise CxrError(f"recipe {source}: {msg}")

    for cls, options in every.items():
        if cls is own:
            continue
        options.check(fail)
        for name, f in fields_of[cls].items():
            value = getattr(options, name)
            if "elsewhere" in f.metadata and name in values and value != f.default:
                fail(f.metadata["elsewhere"].format(value=value,
                                                    owners=" | ".join(owners(cls))))
    m.options = every.get(own, own())
    return m


def model_config(**table: Any) -> ModelConfig:
    """A :class:`ModelConfig` from flat ``[model]`` keys, as a recipe file gives them
    (``model_config(arch="paper", filters=16)``), read and checked like one."""
    return _build_model(table, "model config")


def available_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.toml"))


def resolve_recipe_path(name_or_path: str | Path) -> Path:
    """A path to a TOML file, or the name of a built-in recipe (``smoke-32``)."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise CxrError(f"recipe file {path} not found; built-in recipes: "
                           f"{', '.join(available_recipes())}")
        return path
    builtin = RECIPE_DIR / f"{name_or_path}.toml"
    if builtin.is_file():
        return builtin
    hint = difflib.get_close_matches(str(name_or_path), available_recipes(), n=1)
    suggestion = f" (did you mean {hint[0]}?)" if hint else ""
    raise CxrError(f"unknown recipe {name_or_path!r}{suggestion}; built-in recipes: "
                   f"{', '.join(available_recipes())}, or give a path to a .toml file")


def load_recipe(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> Recipe:
    """Read, validate and override a recipe. ``overrides`` maps ``section.key`` to a value."""
    path = resolve_recipe_path(name_or_path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise CxrError(f"recipe {path} is not valid TOML: {exc}") from None
    return recipe_from_dict(raw, source=str(path), overrides=overrides)


def recipe_from_dict(
    raw: dict[str, Any], source: str = "<recipe>", overrides: dict[str, Any] | None = None
) -> Recipe:
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if section not in SECTIONS or not key:
            raise CxrError(f"override {dotted!r}: expected section.key with section one of "
                           f"{', '.join(SECTIONS)}")
        raw.setdefault(section, {})[key] = value
    unknown = set(raw) - {"name", "description", *SECTIONS}
    if unknown:
        raise CxrError(f"recipe {source}: unknown top-level key(s) {sorted(unknown)}; "
                       f"allowed: name, description, {', '.join(SECTIONS)}")
    recipe = Recipe(name=str(raw.get("name", Path(source).stem)),
                    description=str(raw.get("description", "")),
                    model=_build_model(raw.get("model", {}), source),
                    train=_build_section(TrainConfig, raw.get("train", {}), source, "train"),
                    data=_build_section(DataConfig, raw.get("data", {}), source, "data"))
    validate(recipe, source)
    return recipe


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
    elif origin in (types.UnionType, typing.Union):
        return value
    name = getattr(annotation, "__name__", str(annotation))
    raise CxrError(f"{where} must be {name}, got {value!r}")


def _build_section(cls: type[_T], values: Any, source: str, section: str) -> _T:
    if not isinstance(values, dict):
        raise CxrError(f"recipe {source}: [{section}] must be a table")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name != "options"]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            hint = difflib.get_close_matches(key, names, n=1)
            suggestion = f" (did you mean {hint[0]}?)" if hint else ""
            raise CxrError(f"recipe {source}: unknown key {section}.{key}{suggestion}")
        kwargs[key] = _coerce(value, hints[key], f"recipe {source}: {section}.{key}")
    return cls(**kwargs)


def validate_model(m: ModelConfig, source: str = "<model config>") -> None:
    """The ``[model]`` table's ranges and what its architecture allows (builders call it too,
    for configs made in code); raises :class:`CxrError` on the first problem."""

    def fail(msg: str) -> NoReturn:
        raise CxrError(f"recipe {source}: {msg}")

    if m.arch not in ARCHITECTURES:
        fail(f"model.arch must be one of {', '.join(ARCHITECTURES)}, got {m.arch!r}")
    family = architecture(m.arch)
    if m.label_mode not in LABEL_MODES:
        fail(f"model.label_mode must be one of {', '.join(LABEL_MODES)}, got {m.label_mode!r}")
    if not (32 <= m.image_size <= 1024 and m.image_size % 16 == 0):
        fail(f"model.image_size must be a multiple of 16 between 32 and 1024, got {m.image_size}")
    for key in ("latent_dim", "embedding_dim"):
        if getattr(m, key) < 1:
            fail(f"model.{key} must be at least 1, got {getattr(m, key)}")
    if not family.conditional and m.label_mode != "index":
        fail(f"model.arch {m.arch} is unconditional; leave label_mode = \"index\"")
    if type(m.options) is not family.options:
        fail(f"model.arch {m.arch} takes {family.options.__name__}, got "
             f"{type(m.options).__name__} (build configs with recipe.model_config)")
    m.options.check(fail)


def validate(recipe: Recipe, source: str = "<recipe>") -> None:
    """Range and consistency checks; raise :class:`CxrError` on the first problem."""
    m, t = recipe.model, recipe.train

    def fail(msg: str) -> NoReturn:
        raise CxrError(f"recipe {source}: {msg}")

    validate_model(m, source)
    family = architecture(m.arch)
    if t.loss not in LOSSES:
        fail(f"train.loss must be one of {', '.join(LOSSES)}, got {t.loss!r}")
    if t.epochs < 1:
        fail(f"train.epochs must be at least 1, got {t.epochs}")
    for key in ("kimg", "minutes"):
        if getattr(t, key) < 0:
            fail(f"train.{key} must be 0 (off) or more, got {getattr(t, key)}")
    if not 0 <= t.ada_target < 1:
        fail(f"train.ada_target must be in [0, 1) (0: off; 0.6 is StyleGAN2-ADA's), "
             f"got {t.ada_target}")
    if t.ada_target > 0 and not t.diffaugment:
        fail("train.ada_target needs train.diffaugment policies to adapt; list some "
             '(e.g. ["translation", "cutout"]) or set ada_target = 0')
    if t.ada_kimg <= 0:
        fail(f"train.ada_kimg must be positive, got {t.ada_kimg}")
    m.options.check(fail, t)  # the family's rules that involve [train]
    if t.batch_size < 2 or (t.d_half_batches and t.batch_size % 2):
        fail(f"train.batch_size must be at least 2 (and even with d_half_batches), got "
             f"{t.batch_size}")
    for key in ("g_lr", "d_lr"):
        if not 0 < getattr(t, key) < 1:
            fail(f"train.{key} must be in (0, 1), got {getattr(t, key)}")
    for key in ("beta1", "beta2"):
        if not 0 <= getattr(t, key) < 1:
            fail(f"train.{key} must be in [0, 1), got {getattr(t, key)}")
    if not 0 <= t.ema_decay < 1:
        fail(f"train.ema_decay must be in [0, 1), got {t.ema_decay}")
    for reg in REGULARIZERS.values():  # D's penalties, each weighed by a [train] field
        weight = getattr(t, reg.weight)
        if weight < 0:
            fail(f"train.{reg.weight} must be 0 (off) or more, got {weight}")
        if weight > 0 and t.d_half_batches:
            fail(f"train.{reg.weight} needs the full-batch D step; set "
                 "train.d_half_batches = false")
    if not 0 <= t.aux_class_weight <= 100:
        fail(f"train.aux_class_weight must be in [0, 100], got {t.aux_class_weight}")
    if t.aux_class_weight > 0 and not family.class_head:
        fail(f"train.aux_class_weight needs model.arch = \"cxraug\" (the {m.arch} "
             "discriminator has no class head); set it to 0")
    bad = [p for p in t.diffaugment if p not in DIFFAUG_POLICIES]
    if bad:
        fail(f"train.diffaugment has unknown policies {bad}; allowed: "
             f"{', '.join(DIFFAUG_POLICIES)}")
    for key in ("steps_per_epoch",):
        if getattr(t, key) < 0:
            fail(f"train.{key} must be 0 or more, got {getattr(t, key)}")
    if t.fake_labels not in FAKE_LABELS:
        fail(f"train.fake_labels must be one of {', '.join(FAKE_LABELS)}, got {t.fake_labels!r}")
    for key in ("checkpoint_every", "sample_every", "grid_columns", "keep_checkpoints"):
        if getattr(t, key) < 1:
            fail(f"train.{key} must be at least 1, got {getattr(t, key)}")
    if t.eval_every < 0:
        fail(f"train.eval_every must be 0 (off) or more, got {t.eval_every}")
    if t.eval_images < 20:
        fail(f"train.eval_images must be at least 20, got {t.eval_images}")
    if recipe.data.split not in ("train", "val", "test", "all"):
        fail(f"data.split must be train, val, test or all, got {recipe.data.split!r}")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if value is None:
        return '""'
    raise TypeError(f"cannot write {value!r} as TOML")


def dump_toml(data: dict[str, Any]) -> str:
    """Write a two-level dict (scalars, then tables of scalars) as TOML."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for key, table in data.items():
        if isinstance(table, dict):
            lines += ["", f"[{key}]"] + [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def field_docs() -> dict[str, str]:
    """``section.key`` -> documentation, for ``cxraug recipes`` and the README; the model's
    options as the flat keys files use, each family's after the common ones."""
    docs = {}
    for name, cls in SECTIONS.items():
        classes: list[type[Any]] = [cls, *option_classes()] if cls is ModelConfig else [cls]
        docs.update({f"{name}.{f.name}": f.metadata.get("doc", "") for c in classes
                     for f in dataclasses.fields(c) if f.name != "options"})
    return docs
