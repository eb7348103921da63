"""The package's layering: stages import downward only (every import, including those inside
functions), contracts below the stages, TF-free stages stay TF-free, and the architecture registry
is the one place a network family is added."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import cxraug
from cxraug.architectures import ARCHITECTURES, Architecture, architecture, register
from cxraug.contract import INPUTS, LABEL, LABELS, Z, inputs_for, label_input, label_mode_of
from cxraug.errors import CxrError
from cxraug.model_options import Fail, ModelOptions, doc
from cxraug.recipe import ModelConfig, load_recipe

#: The stages (packages of cxraug) in pipeline order ...
STAGES = ("data", "models", "training", "export", "synthesis", "evaluation")
#: ... and the stages each one may import, all earlier in that order. Synthesis and evaluation
#: work from exported files and caches: beside each other, neither needs models, training or
#: export (what both need of ONNX inference is in cxraug/inference/, below the stages).
MAY_IMPORT: dict[str, tuple[str, ...]] = {
    "data": (),
    "models": (),
    "training": ("data", "models"),
    "export": ("data", "models", "training"),
    "synthesis": ("data",),
    "evaluation": ("data",),
}
#: Above the stages: they drive them (nothing imports these). The package itself names its API
#: by strings, imported on first use.
ABOVE = ("cxraug", "cxraug.cli", "cxraug.demo")
PACKAGE = Path(cxraug.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """Every module an ``import`` names (line, module), at any depth (functions, classes,
    ``if`` blocks); relative imports resolved; ``from pkg import name`` is ``pkg.name`` where that
    is a module, and ``from cxraug import name`` the module the library API takes it from."""
    here = module.split(".") if is_package else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(here[:len(here) - node.level + 1]
                                + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if full in MODULES:
                    found.append((node.lineno, full))
                elif base == "cxraug" and alias.name in cxraug._API:
                    found.append((node.lineno, cxraug._API[alias.name].partition(":")[0]))
                else:
                    found.append((node.lineno, base))
    return sorted(set(found))


def _layer(module: str) -> str:
    """A stage's name, "above" or "below" (the contracts and shared modules under the stages)."""
    parts = module.split(".")
    if module in ABOVE:
        return "above"
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else "below"


def _wrong_way(module: str, target: str) -> str | None:
    """Why ``module`` may not import ``target`` (None: it may)."""
    if target.split(".")[0] != "cxraug" or target == "cxraug":  # cxraug itself: __version__
        return None
    source, layer = _layer(module), _layer(target)
    if source == "above" or layer == "below" or layer == source:
        return None
    if source != "below" and layer in MAY_IMPORT.get(source, ()):
        return None
    if layer == "above":
        return "nothing imports the CLI or the demo"
    if source == "below":
        return "a module below the stages imports no stage"
    allowed = ", ".join(MAY_IMPORT[source]) or "no other stage"
    return f"{source} imports {allowed} and the modules below the stages only"


def test_the_declared_order_points_down() -> None:
    assert set(MAY_IMPORT) == set(STAGES)
    for stage, allowed in MAY_IMPORT.items():
        assert all(STAGES.index(a) < STAGES.index(stage) for a in allowed), stage


def test_every_import_points_down() -> None:
    """Stages import only the stages MAY_IMPORT gives them, modules below the stages import no
    stage, and nothing imports the CLI or the demo: every import statement, including those
    inside functions (the lazy imports that keep TensorFlow out)."""
    wrong = []
    for module, path in MODULES.items():
        source = path.read_text(encoding="utf-8")
        for line, target in _imports(source, module, path.name == "__init__.py"):
            why = _wrong_way(module, target)
            if why:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {module} imports "
                             f"{target} ({why})")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_the_import_walk_sees_imports_inside_functions() -> None:
    source = ("from ..errors import CxrError\n"
              "def f():\n"
              "    if True:\n"
              "        from ..evaluation.classifier import ClassifierFeatures\n"
              "    from . import augment\n"
              "    import cxraug.training.run as run\n"
              "    from .. import __version__, augment as api\n")
    found = _imports(source, "cxraug.synthesis.filters", is_package=False)
    assert found == [(1, "cxraug.errors"), (4, "cxraug.evaluation.classifier"),
                     (5, "cxraug.synthesis.augment"), (6, "cxraug.training.run"),
                     (7, "cxraug"), (7, "cxraug.synthesis.augment")]
    assert [_wrong_way("cxraug.synthesis.filters", t) for _, t in found] == [
        None, "synthesis imports data and the modules below the stages only", None,
        "synthesis imports data and the modules below the stages only", None, None]
    assert _wrong_way("cxraug.copy_reference", "cxraug.data.cache") == (
        "a module below the stages imports no stage")
    assert _wrong_way("cxraug.training.loop", "cxraug.cli") == (
        "nothing imports the CLI or the demo")
    assert _wrong_way("cxraug.cli", "cxraug.evaluation.report") is None


def test_the_training_backends_are_chosen_beside_the_driver() -> None:
    """What the backends share (trainer.py) and the driver's contract (protocol.py) import no
    backend's step, nor the factory that picks one (backends.py): no import circle."""
    backends = {"cxraug.training.step_tf", "cxraug.training.step_jax",
                "cxraug.training.backends", "cxraug.training.loop"}
    for module in ("cxraug.training.trainer", "cxraug.training.protocol"):
        source = MODULES[module].read_text(encoding="utf-8")
        assert not {t for _, t in _imports(source, module, False)} & backends, module


def test_the_trainer_contract_is_declared() -> None:
    """Every member of the driver's contract is the trainer base's, abstract where only a
    backend can implement it, or one of the settings its constructor sets."""
    from cxraug.training.protocol import Trainer
    from cxraug.training.trainer import TrainerBase

    members = {n for n in vars(Trainer) if not n.startswith("_")}
    assert {n for n in members if not hasattr(TrainerBase, n)} == {
        "replicas", "mixed", "label_mode", "label_key"}
    assert {"step_count", "train_step", "checkpoints", "batches", "first_bad_step",
            "_sums_and_p"} <= TrainerBase.__abstractmethods__
    with pytest.raises(TypeError, match="abstract"):
        TrainerBase(load_recipe("smoke-32"), 3)  # type: ignore[abstract]


def _modules_after(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys, json\n"
                          "print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_models_import_nothing_from_training() -> None:
    loaded = _modules_after("import cxraug.models, cxraug.models.paper, cxraug.models.cxraug_net")
    assert not [m for m in loaded if m.startswith("cxraug.training")]


def test_tf_free_modules_stay_tf_free() -> None:
    loaded = _modules_after(
        "import cxraug.recipe, cxraug.contract, cxraug.architectures, cxraug.copy_reference, "
        "cxraug.neighbors, cxraug.near_copy, cxraug.onnx_passes, cxraug.data.cache, "
        "cxraug.data.labels, cxraug.data.phantom, "
        "cxraug.synthesis.augment, cxraug.synthesis.filters, cxraug.synthesis.draw, "
        "cxraug.inference.generator, cxraug.inference.specialize, cxraug.inference.classifier, "
        "cxraug.metrics_csv, cxraug.data.reference, cxraug.training.protocol, "
        "cxraug.training.jax_checkpoint, cxraug.training.resume, cxraug.training.bookkeeping, "
        "cxraug.evaluation.report, cxraug.evaluation.metrics, cxraug.evaluation.realism\n"
        "cxraug.recipe.load_recipe('cxraug-128')")
    assert not [m for m in loaded if m.split(".")[0] in ("tensorflow", "keras", "tf2onnx")]


def test_the_generator_contract_in_one_place() -> None:
    from cxraug.export import onnx_export
    from cxraug.inference import generator

    assert onnx_export.ONNX_INPUTS is INPUTS and generator.INPUTS_BY_MODE is INPUTS
    assert label_input("index") == LABEL and label_input("multi-hot") == LABELS
    assert label_input("none") is None
    z, lab = np.zeros((2, 3)), np.zeros(2)
    assert inputs_for("none", z, lab) is z and set(inputs_for("index", z, lab)) == {Z, LABEL}
    assert label_mode_of(load_recipe("paper-dcgan-128").model) == "none"
    assert label_mode_of(load_recipe("small-data-64").model) == "multi-hot"


def test_a_new_architecture_is_one_registration(monkeypatch: pytest.MonkeyPatch) -> None:
    """A family registered by name, with its own options dataclass, builds through the same
    entry points (its builders receive its options) and is validated by recipes: its options
    are flat [model] keys, listed with their docs and checked by its own rules; its
    capabilities (no class head, not conditional) are enforced."""
    from cxraug import models
    from cxraug.recipe import field_docs

    monkeypatch.setitem(ARCHITECTURES, "tiny-test", Architecture(
        "tiny-test", "test_layering:_tiny_generator", "test_layering:_tiny_discriminator",
        conditional=False, options=TinyOptions))
    cfg = ModelConfig(arch="tiny-test", image_size=32, latent_dim=4)
    assert cfg.options == TinyOptions()
    g = models.build_generator(cfg, 0)
    assert [i.name for i in g.inputs] == [Z] and tuple(g.outputs[0].shape) == (None, 32, 32, 1)
    assert g.layers[1].units == TinyOptions().tiny_width  # the builder got the options
    assert models.label_input_name(cfg) is None and label_mode_of(cfg) == "none"
    with pytest.raises(CxrError, match="no class head"):
        models.build_discriminator(cfg, 0, class_head=True)
    tiny = {"model.arch": "tiny-test", "train.aux_class_weight": 0.0}
    # smoke-32's cxraug widths are another family's keys: read, checked, ignored (as before)
    recipe = load_recipe("smoke-32", overrides={**tiny, "model.tiny_width": "3"})
    assert recipe.model.arch == "tiny-test" and recipe.model.options == TinyOptions(3)
    assert recipe.to_dict()["model"]["tiny_width"] == 3
    assert field_docs()["model.tiny_width"] == "tiny: hidden units."
    with pytest.raises(CxrError, match="model.tiny_width must be at least 1, got 0"):
        load_recipe("smoke-32", overrides={**tiny, "model.tiny_width": 0})
    with pytest.raises(CxrError, match='model.tiny_switch needs model.arch = "tiny-test"'):
        load_recipe("smoke-32", overrides={"model.tiny_switch": True})
    with pytest.raises(CxrError, match="no class head"):  # smoke-32 trains D's class head
        load_recipe("smoke-32", overrides={"model.arch": "tiny-test"})
    with pytest.raises(CxrError, match="unconditional"):
        load_recipe("smoke-32", overrides={**tiny, "model.label_mode": "multi-hot"})
    with pytest.raises(ValueError, match="already registered"):
        register(architecture("cxraug"))
    with pytest.raises(ValueError, match=r"option\(s\) \['filters'\] already belong"):
        register(Architecture("clash", "m:g", "m:d", options=ClashingOptions))
    with pytest.raises(CxrError, match="model.arch must be one of"):
        architecture("nope")


@dataclass
class TinyOptions(ModelOptions):
    """The test family's own options."""

    tiny_width: int = doc("tiny: hidden units.", 8)
    tiny_switch: bool = doc("tiny: a switch other families must not be given.", False,
                            elsewhere='model.tiny_switch needs model.arch = "{owners}"')

    def check(self, fail: Fail, train: object = None) -> None:
        self._at_least_one(fail, "tiny_width")


@dataclass
class ClashingOptions(ModelOptions):
    filters: int = doc("a name the paper family already uses.", 1)


def _tiny_generator(cfg: ModelConfig, options: TinyOptions, num_classes: int):
    import keras

    z = keras.Input(shape=(cfg.latent_dim,), name=Z)
    x = keras.layers.Dense(options.tiny_width, activation="relu")(z)
    x = keras.layers.Dense(cfg.image_size * cfg.image_size, activation="tanh")(x)
    return keras.Model(z, keras.layers.Reshape((cfg.image_size, cfg.image_size, 1),
                                               name="image")(x))


def _tiny_discriminator(cfg: ModelConfig, options: TinyOptions, num_classes: int):
    import keras

    image = keras.Input(shape=(cfg.image_size, cfg.image_size, 1), name="image")
    return keras.Model(image, keras.layers.Dense(1)(keras.layers.Flatten()(image)))


def test_a_new_report_section_is_one_registration(monkeypatch: pytest.MonkeyPatch) -> None:
    """A metric registered by name gets a per-class entry and overall numbers from compute."""
    from cxraug.evaluation import sections as S

    assert list(S.SECTIONS) == ["realism", "baseline", "label_fidelity", "diversity",
                                "two_sample", "memorization"]
    monkeypatch.setattr(S, "SECTIONS", {})

    def overall(s: S.Shared, per: dict) -> dict:
        return {"toy_total": sum(per[c]["toy"]["n"] for c in s.classes),
                "toy_mean": s.macro(per, "toy", "n")}

    S.register("toy", overall)(lambda s, v: {"n": int(v.sel.sum()), "held": int(v.hsel.sum())})
    with pytest.raises(ValueError, match="already registered"):
        S.register("toy", overall)(lambda s, v: {})
    empty = np.zeros((0, 4))
    shared = S.Shared(classes=["A", "B"], cache_index={"A": 0, "B": 3}, seed=0, min_heldout=50,
                      synthetic={}, synthetic_class=np.array([0, 0, 1]), synthetic_features=empty,
                      heldout_images=empty, heldout_labels=np.array([3, 3, 0, 5]),
                      heldout_features=empty, train_features=empty,
                      train_labels=np.array([0, 3, 3]), train_subset={}, train_subset_images={},
                      judge_info={}, judge=None)
    per_class, overall_numbers = S.compute(shared)
    assert per_class["A"] == {"n_synthetic": 2, "n_real_heldout": 1, "n_real_train": 1,
                              "toy": {"n": 2, "held": 1}}
    assert per_class["B"]["toy"] == {"n": 1, "held": 2}
    assert overall_numbers == {"toy_total": 3, "toy_mean": 1.5}
    # ... and its table in report.html is one HtmlTable
    from cxraug.evaluation import render as R

    monkeypatch.setattr(R, "HTML_TABLES", (R.HtmlTable(
        "toy", lambda r: "<h2>Toy</h2>", (("images", lambda v: v["toy"]["n"]),),
        after=lambda r: [["total", r["overall"]["toy_total"]]]),))
    report = {"generator": "g.onnx", "data": "d.h5", "split": "test", "n_per_class": 2,
              "classifier": "c", "seed": 0, "created": "now", "flags": [], "notes": [],
              "classes": per_class, "overall": overall_numbers}
    page = R.html_report(report, [], b"", b"", b"", b"")
    assert ("<h2>Toy</h2>\n<table><tr><th>class</th><th>images</th></tr><tr><td>A</td><td>2</td>"
            "</tr><tr><td>B</td><td>1</td></tr><tr><td>total</td><td>3</td></tr></table>") in page
