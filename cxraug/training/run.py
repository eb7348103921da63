"""The run folder: its layout, its metadata, and loading a trained generator back from it.

A run folder tells the whole story of a run (see docs/ARCHITECTURE.md, "Run folder")::

    recipe.toml  run.json  metrics.csv  log.txt  grid_z.npy  tensorboard/  samples/  checkpoints/

``load_generator`` is what export and sampling use: it needs only the folder, because the resolved
recipe and the class names are stored in it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..contract import label_mode_of
from ..errors import CxrError
from ..io_utils import write_json_atomic
from ..recipe import Recipe, load_recipe

CHECKPOINT_PREFIX = "ckpt"
#: The checkpoint kept by train.eval_every: the most realistic one so far (``best-<step>``).
BEST_PREFIX = "best"


@dataclass(frozen=True)
class RunPaths:
    """Every path inside a run folder, in one place."""

    root: Path

    @property
    def recipe(self) -> Path:
        return self.root / "recipe.toml"

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def log(self) -> Path:
        return self.root / "log.txt"

    @property
    def grid_z(self) -> Path:
        return self.root / "grid_z.npy"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def checkpoint_index(self) -> Path:
        return self.checkpoints / "index.json"

    def sample(self, epoch: int) -> Path:
        return self.samples / f"epoch_{epoch:04d}.png"


def read_run_json(run_dir: str | Path) -> dict[str, Any]:
    paths = RunPaths(Path(run_dir))
    if not paths.run_json.is_file():
        raise CxrError(f"{run_dir} is not a cxraug run folder (no run.json); "
                       "give the --out folder of `cxraug train`")
    try:
        return json.loads(paths.run_json.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CxrError(f"{paths.run_json} is corrupt ({exc}); "
                       "the run folder cannot be used") from None


def write_run_json(run_dir: str | Path, info: dict[str, Any]) -> None:
    write_json_atomic(RunPaths(Path(run_dir)).run_json, info)


def read_checkpoint_index(run_dir: str | Path) -> list[dict[str, Any]]:
    """Saved checkpoints, oldest first: ``{"name", "path", "epoch", "step", "saved", "reason"}``."""
    path = RunPaths(Path(run_dir)).checkpoint_index
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CxrError(f"{path} is corrupt; the run's checkpoints cannot be listed "
                       "(restore it or start a new run)") from None
    from .jax_checkpoint import SUFFIX

    root = RunPaths(Path(run_dir)).checkpoints
    # a TensorFlow checkpoint (NAME.index + data) or a JAX one (NAME.npz)
    return [e for e in entries if (root / f"{e['name']}.index").is_file()
            or (root / f"{e['name']}{SUFFIX}").is_file()]


def latest_entry(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The checkpoint with the most steps (a regular one before a best one of the same step)."""
    return max(entries, key=lambda e: (e["step"], e.get("reason") != "best"))


def resolve_checkpoint(run_dir: str | Path, checkpoint: str | None = None) -> dict[str, Any]:
    """Pick a checkpoint: None (``best`` where the run measured realism, else the latest),
    ``best``, ``latest``, a name (``ckpt-120``), an epoch number, or a path."""
    run_dir = Path(run_dir)
    entries = read_checkpoint_index(run_dir)
    if not entries:
        raise CxrError(f"run {run_dir} has no checkpoint yet; train at least "
                       "train.checkpoint_every epochs (or stop it with Ctrl-C, which saves one)")
    best = [e for e in entries if e.get("reason") == "best"]
    if checkpoint in (None, "") and best:
        return best[-1]
    if checkpoint in (None, "", "latest"):
        return latest_entry(entries)
    if checkpoint == "best":
        if not best:
            raise CxrError(f"run {run_dir} has no best checkpoint (it was trained without "
                           "train.eval_every); leave out --checkpoint for the latest")
        return best[-1]
    text = str(checkpoint)
    for entry in entries:
        if text == entry["name"]:
            return entry
    if text.isdigit():
        done = [e for e in entries if e["epoch"] == int(text) and e.get("reason") != "interrupt"]
        if done:
            return done[-1]
    candidate = Path(text)
    for entry in entries:
        if candidate.name == entry["name"] and candidate.parent.resolve() == (
            RunPaths(run_dir).checkpoints.resolve()
        ):
            return entry
    names = ", ".join(f"{e['name']} (epoch {e['epoch']})" for e in entries)
    raise CxrError(f"checkpoint {checkpoint!r} not found in {run_dir}; available: {names}; "
                   "give a name, an epoch number or leave it out for the latest")


def checkpoint_prefix(run_dir: str | Path, entry: dict[str, Any]) -> str:
    return str(RunPaths(Path(run_dir)).checkpoints / entry["name"])


@dataclass
class LoadedGenerator:
    """A generator restored from a run: the EMA weights where the run keeps an EMA."""

    model: Any  # keras.Model; typed loosely so importing this module stays cheap
    recipe: Recipe
    class_names: list[str]
    epoch: int
    step: int
    data_fingerprint: str
    checkpoint: str
    ema: bool
    run_dir: Path
    view: str = ""  # View Position of the training images ("" when unknown)
    n_images: int = 0  # training images

    @property
    def label_mode(self) -> str:
        return label_mode_of(self.recipe.model)


def load_run_recipe(run_dir: str | Path) -> Recipe:
    paths = RunPaths(Path(run_dir))
    if not paths.recipe.is_file():
        raise CxrError(f"{run_dir} is not a cxraug run folder (no recipe.toml)")
    return load_recipe(paths.recipe)


def load_generator(run_dir: str | Path, checkpoint: str | None = None) -> LoadedGenerator:
    """Rebuild the run's generator and restore its weights (EMA when the run has one), on the
    backend this process runs, whichever backend trained the run."""
    from .. import models

    run_dir = Path(run_dir)
    info = read_run_json(run_dir)
    recipe = load_run_recipe(run_dir)
    entry = resolve_checkpoint(run_dir, checkpoint)
    class_names = list(info["class_names"])
    use_ema = recipe.train.ema_decay > 0
    # Always float32 here: mixed-precision runs keep float32 master weights, and export/sampling
    # want float32 graphs.
    generator = models.build_generator(recipe.model, len(class_names))
    from .jax_checkpoint import SUFFIX, load_generator_weights

    npz = Path(checkpoint_prefix(run_dir, entry) + SUFFIX)
    if npz.is_file():  # a JAX run's (its format: jax_checkpoint.py)
        load_generator_weights(generator, npz, use_ema)
    else:  # a TensorFlow run's (its format: step_tf.py)
        from .step_tf import load_generator_weights as load_tf_generator

        load_tf_generator(generator, checkpoint_prefix(run_dir, entry), use_ema,
                          f"{entry['name']} from {run_dir}")
    return LoadedGenerator(
        model=generator, recipe=recipe, class_names=class_names, epoch=int(entry["epoch"]),
        step=int(entry["step"]), data_fingerprint=str(info.get("data", {}).get("fingerprint", "")),
        checkpoint=entry["name"], ema=use_ema, run_dir=run_dir, view=_training_view(info),
        n_images=int(info.get("data", {}).get("images", 0) or 0),
    )


def _training_view(info: dict[str, Any]) -> str:
    """The run's recorded view; runs that predate it ask their cache, when it is still there."""
    data = info.get("data", {})
    if "view" in data:
        return str(data["view"] or "")
    path = Path(str(data.get("path", "")))
    if not data.get("path") or not path.is_file():
        return ""
    from ..data.cache import CacheReader

    try:
        with CacheReader(path) as reader:
            return reader.view(str(data.get("split", "train")))
    except (CxrError, OSError):
        return ""
