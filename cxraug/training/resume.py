"""What ``cxraug train --resume`` checks before a run folder is continued, and the restore.

A run continues only in a folder that holds one (run.json, recipe.toml), on the backend whose
checkpoints it holds, with the recipe it was trained with (up to :data:`RESUMABLE_CHANGES`), on
the cache it was trained on, from a checkpoint that fits that cache's steps per epoch. Each
check is one function, called by the run driver (:mod:`.loop`) where it has what the check
reads; every refusal is one :class:`.CxrError` line that says what to do instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import CxrError
from ..recipe import Recipe, load_recipe
from .protocol import Checkpoints
from .run import RunPaths, latest_entry, read_checkpoint_index, read_run_json

#: Recipe fields that may change on --resume: they do not change what is computed.
RESUMABLE_CHANGES = ("train.epochs", "train.kimg", "train.minutes", "train.checkpoint_every",
                     "train.sample_every", "train.keep_checkpoints", "train.eval_every",
                     "train.eval_images")

__all__ = ["RESUMABLE_CHANGES", "check_data", "check_folder", "check_position",
           "recipe_changes", "resumable_changes", "restore_latest"]


def resumable_changes() -> str:
    """The refusal's list of what may change, from :data:`RESUMABLE_CHANGES` (read when called,
    so the message follows the tuple)."""
    keys = list(RESUMABLE_CHANGES)
    listed = keys[0] if len(keys) == 1 else f"{', '.join(keys[:-1])} and {keys[-1]}"
    return f"only {listed} may change"


def _flatten(recipe: Recipe) -> dict[str, Any]:
    return {f"{section}.{key}": value for section in ("model", "train", "data")
            for key, value in recipe.to_dict()[section].items()}


def recipe_changes(old: Recipe, new: Recipe) -> list[str]:
    """``key old -> new`` for every recipe field that differs and may not change on resume."""
    a, b = _flatten(old), _flatten(new)
    return [f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES]


def check_folder(paths: RunPaths, resume: bool, backend: str,
                 recipe: Recipe) -> dict[str, Any] | None:
    """The run folder ``paths.root`` fits the request: empty (or absent) for a new run; for
    ``resume`` a run of this ``backend`` trained with ``recipe``. Returns the run's run.json
    (``None``: a new run)."""
    out = paths.root
    not_empty = out.exists() and (not out.is_dir() or any(out.iterdir()))
    if not_empty and not resume:
        raise CxrError(f"run folder {out} is not empty; add --resume to continue the run in it, "
                       "or choose a new --out")
    if not resume:
        return None
    if not paths.run_json.is_file():
        if not_empty:
            raise CxrError(f"--resume: {out} is not a cxraug run folder (no run.json)")
        raise CxrError(f"--resume: {out} holds no run to continue; leave out --resume to "
                       "start one")
    previous = read_run_json(out)
    if not paths.recipe.is_file():
        raise CxrError(f"--resume: {out} has run.json but no recipe.toml (files were removed "
                       "from it); start a new run with another --out")
    ran_on = previous.get("backend", "tensorflow")
    if ran_on != backend:
        raise CxrError(f"--resume: run {out} was trained on {ran_on} and its checkpoints are "
                       f"{ran_on}'s; set KERAS_BACKEND={ran_on} to continue it (export-onnx "
                       "reads either)")
    changes = recipe_changes(load_recipe(paths.recipe), recipe)
    if changes:
        raise CxrError(f"--resume: the recipe differs from the run's ({'; '.join(changes)}); "
                       f"pass --recipe {paths.recipe} ({resumable_changes()})")
    return previous


def check_data(previous: dict[str, Any], data: Path, out: Path, fingerprint: str) -> None:
    """The cache ``data`` (its ``fingerprint``) is the one the run in ``out`` was trained on."""
    old_fp = previous.get("data", {}).get("fingerprint")
    if old_fp != fingerprint:
        raise CxrError(f"--resume: cache {data} (fingerprint {fingerprint[:12]}) is "
                       f"not the one run {out} was trained on ({str(old_fp)[:12]}, "
                       f"{previous.get('data', {}).get('path')}); pass that cache as --data")


def restore_latest(store: Checkpoints, out: Path) -> dict[str, Any] | None:
    """The whole training state back from the run's newest checkpoint; returns its index entry
    (``None``: the run saved none yet, and starts from its first step)."""
    index = read_checkpoint_index(out)
    if not index:
        return None
    restored = latest_entry(index)
    store.restore(restored["name"])
    return restored


def check_position(step: int, epochs_done: int, steps_per_epoch: int) -> int:
    """The step within its epoch that the restored state is at. It may equal
    ``steps_per_epoch``: stopped after an epoch's last step, before its metrics row was
    written."""
    in_epoch = step - epochs_done * steps_per_epoch
    if in_epoch < 0 or in_epoch > steps_per_epoch:
        raise CxrError(f"--resume: checkpoint step {step} does not fit {steps_per_epoch} steps "
                       "per epoch; the run folder does not match this cache or batch size")
    return in_epoch
