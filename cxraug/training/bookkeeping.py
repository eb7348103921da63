"""What a training session keeps in its run folder beside the trainer's own checkpoint files:
log.txt and run.json (:class:`RunLog`), and the checkpoints it saves, listed in
``checkpoints/index.json`` (:class:`CheckpointBook`: numbered ones in the store's keep rotation,
the best one by realism outside it).

Only the chief of several processes writes (see :mod:`.cluster`); the others keep the same
names, so that every process reports the same checkpoint.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import numpy as np

from ..io_utils import write_text_atomic
from .protocol import Checkpoints, Trainer
from .run import BEST_PREFIX, CHECKPOINT_PREFIX, RunPaths, read_checkpoint_index, write_run_json

__all__ = ["CheckpointBook", "RunLog", "now"]


def now() -> str:
    """The time stamps of log.txt and run.json (UTC, to the second)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RunLog:
    """One training session's log.txt lines and run.json updates."""

    def __init__(self, paths: RunPaths, info: dict[str, Any], progress: bool,
                 chief: bool = True) -> None:
        self.paths = paths
        self.info = info
        self.progress = progress and chief
        self.chief = chief  # only the chief of several processes writes (see .cluster)
        self.bar: Any = None  # a progress bar while training runs

    def log(self, message: str, echo: bool = False, quiet: bool = False) -> None:
        """A line in the run's log.txt, and on the console when ``echo`` or in progress mode
        (never when ``quiet``: the CLI prints the line itself)."""
        if not self.chief:
            return
        with open(self.paths.log, "a", encoding="utf-8") as handle:
            handle.write(f"{now()} {message}\n")
        if (echo or self.progress) and not quiet:
            (self.bar.write if self.bar is not None else print)(message, file=sys.stderr)

    def save_info(self, **changes: Any) -> None:
        self.info.update(changes)
        if self.chief:
            write_run_json(self.paths.root, self.info)


class CheckpointBook:
    """Saves the run's checkpoints through the trainer's ``store`` and keeps
    ``checkpoints/index.json`` listing exactly the complete ones: the numbered checkpoints the
    store keeps (its rotation drops the oldest) and the one best checkpoint.

    Before each save the EMA generator's standing statistics are recomputed (``label_pool``:
    the labels they are drawn from) and the run's seconds so far (``run_seconds``) stored with
    the state, so a resume continues the time budget. :attr:`last` names the newest checkpoint
    (``None``: none saved yet), which a divergence keeps.
    """

    def __init__(self, trainer: Trainer, store: Checkpoints, paths: RunPaths, log: RunLog,
                 label_pool: np.ndarray[Any, Any], steps_per_epoch: int,
                 run_seconds: Callable[[], float], last: str | None = None) -> None:
        self.trainer, self.store, self.paths, self.log = trainer, store, paths, log
        self.label_pool = label_pool
        self.steps_per_epoch = steps_per_epoch
        self.run_seconds = run_seconds
        self.last = last

    def _index(self) -> list[dict[str, Any]]:
        return read_checkpoint_index(self.paths.root)

    def _write_index(self, entries: list[dict[str, Any]]) -> None:
        write_text_atomic(self.paths.checkpoint_index, json.dumps(entries, indent=2) + "\n")

    def save(self, reason: str) -> str:
        """A numbered checkpoint ``ckpt-<step>`` of the whole state, listed with ``reason``
        (epoch, budget, max_steps, interrupt); the index drops what the rotation removed.
        Returns its name."""
        trainer = self.trainer
        s, e = trainer.step_count(), trainer.epoch_count()
        if not trainer.is_chief:
            self.last = f"{CHECKPOINT_PREFIX}-{s}"
            return self.last
        trainer.standing_statistics(self.label_pool)
        trainer.set_run_seconds(self.run_seconds())
        name = self.store.save(s)
        kept = self.store.kept()
        entries = [x for x in self._index() if x["name"] != name
                   and (x["name"] in kept or x.get("reason") == "best")]
        entries.append({"name": name, "epoch": e, "step": s, "saved": now(), "reason": reason})
        self._write_index(entries)
        self.last = name
        self.log.save_info(last_checkpoint=name, epochs_done=e, step=s)
        return name

    def save_best(self, result: dict[str, float]) -> None:
        """The whole training state under best-<step> with its realism ``result``, then the
        older best removed (the index always names a complete checkpoint). The chief's only:
        realism is tracked there."""
        self.trainer.set_run_seconds(self.run_seconds())
        s = self.trainer.step_count()
        # epochs completed (the counter moves only once the epoch's row is written)
        e = s // self.steps_per_epoch
        name = f"{BEST_PREFIX}-{s}"
        self.store.write(name)
        old = [x for x in self._index() if x.get("reason") == "best"]
        entries = [x for x in self._index() if x.get("reason") != "best"]
        entries.append({"name": name, "epoch": e, "step": s, "saved": now(), "reason": "best",
                        **{k: (round(v, 5) if isinstance(v, float) else v)
                           for k, v in result.items()}})
        self._write_index(entries)
        for entry in old:
            if entry["name"] != name:
                for f in self.paths.checkpoints.glob(f"{entry['name']}.*"):
                    f.unlink(missing_ok=True)
        self.log.save_info(best_checkpoint=name, best=entries[-1])
