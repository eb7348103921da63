"""The JAX trainer's checkpoint format, in one place: ``NAME.npz`` files in a run's
``checkpoints/`` folder, written complete or not at all. numpy only (no JAX): a machine without
JAX still reads a JAX run's generator (:func:`load_generator_weights`, for export and sampling).

Layout (``format`` = :data:`FORMAT`): every list of the trainer's state (``g``, ``g_stats``,
``d``, ``d_stats``, ``g_opt``, ``d_opt``, ``ema``: a network's or an optimizer's variables in
Keras's order) as ``<list>/0000``, ``<list>/0001``, ... and ``<list>/count``; every array of it
(``key``, ``step``, ``aug_p``, ...) under its name; the host-side counters as ``host/<name>``;
the EMA generator's batch-norm statistics (standing statistics, not part of the step's state)
as ``ema_stats/<i>`` and ``ema_stats/count``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import CxrError

#: Checkpoint format written by this module (``format`` entry of the ``.npz``).
FORMAT = "cxraug-jax-checkpoint-1"
SUFFIX = ".npz"
#: The state's lists that hold the generator: (trainable, batch-norm statistics), as trained
#: and as averaged (EMA).
GENERATOR = ("g", "g_stats")
EMA_GENERATOR = ("ema", "ema_stats")


def _item(name: str, i: int) -> str:
    return f"{name}/{i:04d}"


def _count(name: str) -> str:
    return f"{name}/count"


def pack(state: Mapping[str, Any], host: Mapping[str, Any],
         ema_stats: list[Any] | None) -> dict[str, np.ndarray]:
    """Everything a resume needs, as named numpy arrays: the state (lists and arrays), the host
    counters and the EMA generator's statistics (``None``: the run keeps no EMA)."""
    out: dict[str, np.ndarray] = {"format": np.asarray(FORMAT)}
    for name, value in state.items():
        if isinstance(value, list):
            for i, v in enumerate(value):
                out[_item(name, i)] = np.asarray(v)
            out[_count(name)] = np.asarray(len(value))
        else:
            out[name] = np.asarray(value)
    for name, value in host.items():
        out[f"host/{name}"] = np.asarray(value)
    if ema_stats is not None:  # its batch-norm statistics: standing statistics
        for i, v in enumerate(ema_stats):
            out[_item(EMA_GENERATOR[1], i)] = np.asarray(v)
        out[_count(EMA_GENERATOR[1])] = np.asarray(len(ema_stats))
    return out


def unpack(data: Any, like: Mapping[str, Any], host: Mapping[str, Any], ema_stats: int | None,
           where: str) -> tuple[dict[str, Any], dict[str, Any], list[np.ndarray]]:
    """Saved arrays back as ``(state, host, ema_stats)`` shaped like the trainer's ``like``
    state (lists of arrays, arrays) and ``host`` counters; ``ema_stats`` arrays of that count
    (``None``: no EMA, none read). Counts and shapes are checked: a recipe change cannot slip
    in. The state's arrays are numpy; the trainer puts them on its devices in its dtypes."""
    if str(data.get("format", "")) != FORMAT:
        raise CxrError(f"{where} is not a cxraug JAX checkpoint")
    state: dict[str, Any] = {}
    for name, value in like.items():
        if isinstance(value, list):
            count = int(data[_count(name)])
            if count != len(value):
                raise CxrError(f"{where}: {name} has {count} arrays, the recipe's networks "
                               f"{len(value)}; the checkpoint does not match the recipe")
            arrays = [data[_item(name, i)] for i in range(count)]
            for a, v in zip(arrays, value, strict=True):
                if tuple(a.shape) != tuple(v.shape):
                    raise CxrError(f"{where}: {name} holds shape {a.shape} where the "
                                   f"recipe's network has {v.shape}")
            state[name] = arrays
        else:
            state[name] = data[name]
    counters = {k: (int if k == "epoch" else float)(data[f"host/{k}"]) for k in host}
    stats = [data[_item(EMA_GENERATOR[1], i)] for i in range(ema_stats or 0)]
    return state, counters, stats


def load_generator_weights(generator: Any, path: Path, use_ema: bool) -> None:
    """The generator's weights from a JAX run's checkpoint ``path`` into the Keras
    ``generator`` (EMA ones where ``use_ema``): the same networks list their variables in the
    same order on every backend; counts and shapes are checked."""
    trainable, stats = EMA_GENERATOR if use_ema else GENERATOR
    try:
        with np.load(path, allow_pickle=False) as data:
            counts = (int(data[_count(trainable)]), int(data[_count(stats)]))
            if counts != (len(generator.trainable_variables),
                          len(generator.non_trainable_variables)):
                raise ValueError(f"it holds {counts[0]} + {counts[1]} generator arrays, the "
                                 f"recipe's generator {len(generator.trainable_variables)} + "
                                 f"{len(generator.non_trainable_variables)}")
            pairs = [(v, data[_item(trainable, i)])
                     for i, v in enumerate(generator.trainable_variables)]
            pairs += [(v, data[_item(stats, i)])
                      for i, v in enumerate(generator.non_trainable_variables)]
    except (OSError, KeyError, ValueError) as exc:
        raise CxrError(f"cannot restore {path}: {exc}; the checkpoint does not match the run's "
                       "recipe.toml") from None
    for var, value in pairs:
        if tuple(var.shape) != tuple(value.shape):
            raise CxrError(f"cannot restore {path}: {var.path} has shape {tuple(var.shape)}, the "
                           f"checkpoint {value.shape}; it does not match the run's recipe.toml")
        var.assign(value)


class Saved(Protocol):
    """What :class:`JaxCheckpoints` needs of the trainer: its state as arrays, and back."""

    def sync_models(self) -> None: ...

    def arrays(self) -> dict[str, np.ndarray]: ...

    def load_arrays(self, data: Any, where: str) -> None: ...


class JaxCheckpoints:
    """``NAME.npz`` files of a run: numbered ones (the newest ``keep`` kept) and named ones
    outside that rotation (best-<step>). Written to a temporary file and renamed: a checkpoint
    is complete or absent."""

    def __init__(self, trainer: Saved, directory: Path, keep: int, prefix: str) -> None:
        self.trainer, self.directory, self.keep, self.prefix = trainer, directory, keep, prefix

    def _numbered(self) -> list[tuple[int, str]]:
        found = []
        for p in self.directory.glob(f"{self.prefix}-*{SUFFIX}"):
            number = p.stem[len(self.prefix) + 1:]
            if number.isdigit():
                found.append((int(number), p.stem))
        return sorted(found)

    def write(self, name: str) -> None:
        self.trainer.sync_models()
        tmp = self.directory / f".{name}.{os.getpid()}.tmp{SUFFIX}"
        # typed loosely: numpy's stub would match the names against savez's own keywords
        arrays: dict[str, Any] = self.trainer.arrays()
        np.savez(tmp, **arrays)
        os.replace(tmp, self.directory / f"{name}{SUFFIX}")

    def save(self, number: int) -> str:
        name = f"{self.prefix}-{number}"
        self.write(name)
        for _, old in self._numbered()[:-self.keep] if self.keep > 0 else []:
            (self.directory / f"{old}{SUFFIX}").unlink(missing_ok=True)
        return name

    def kept(self) -> set[str]:
        return {name for _, name in self._numbered()}

    def restore(self, name: str) -> None:
        path = self.directory / f"{name}{SUFFIX}"
        with np.load(path, allow_pickle=False) as data:
            self.trainer.load_arrays(data, str(path))
