"""The run driver's contract with a training backend: every method and attribute that
:mod:`.loop` (the one driver of both backends) uses of a trainer, and of its checkpoint store.

Written here, apart from :class:`.trainer.TrainerBase` (which implements it, and leaves to each
backend what only the backend can know, as abstract methods), so that the driver depends on
what it calls and nothing else; :func:`.backends.make_trainer` hands the driver one. Nothing
here imports Keras, TensorFlow or JAX: it is types only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np


class Checkpoints(Protocol):
    """A trainer's checkpoint store (:meth:`Trainer.checkpoints`): the whole training state
    (weights, optimizers, noise, counters, the epoch's sums) in the backend's own format, under
    a name in the run's ``checkpoints/`` folder. The driver keeps ``checkpoints/index.json``."""

    def save(self, number: int) -> str:
        """Write the numbered checkpoint ``<prefix>-<number>`` (the run's step), drop the
        numbered ones beyond the newest ``keep``; returns its name."""
        ...

    def kept(self) -> set[str]:
        """The names of the numbered checkpoints on disk (the index keeps only these)."""
        ...

    def restore(self, name: str) -> None:
        """Put the whole state back from checkpoint ``name`` (``--resume``)."""
        ...

    def write(self, name: str) -> None:
        """Write a checkpoint outside the numbered rotation (``best-<step>``)."""
        ...


class Trainer(Protocol):
    """One run's networks, optimizers, noise, counters and step on one backend, as the run
    driver uses them. Counters live with the state (on the device, or checkpointed beside it)
    so that a run stopped at any step and resumed continues exactly."""

    # ------------------------------------------------------------------ what the run is
    @property
    def backend_name(self) -> str:
        """``tensorflow`` or ``jax``: TensorBoard events are written on TensorFlow only."""
        ...

    @property
    def replicas(self) -> int:
        """Replicas of the step (run.json's sessions, the start line of log.txt)."""
        ...

    @property
    def mixed(self) -> bool:
        """``train.mixed_precision``: the driver warns when it is on without a GPU."""
        ...

    @property
    def label_mode(self) -> str:
        """The generator's label mode (``index``, ``multi-hot``, ``none``): sample grids."""
        ...

    @property
    def label_key(self) -> str:
        """The generator's label input: whether the label pool (standing statistics, realism
        tracking) is multi-hot rows or class indices."""
        ...

    def devices(self) -> list[str]:
        """The devices the step runs on, by name (run.json's sessions)."""
        ...

    # ---------------------------------------------------------------- several processes
    @property
    def process_index(self) -> int:
        """This process's rank among the processes that train together (:mod:`.cluster`)."""
        ...

    @property
    def process_count(self) -> int:
        """How many processes train together (1: this one alone)."""
        ...

    @property
    def is_chief(self) -> bool:
        """Rank 0: the one process that writes the run folder."""
        ...

    def agree(self, flag: bool) -> bool:
        """The chief's ``flag`` on every process: decisions taken from a process's own clock
        (``train.minutes``) so that every process stops at the same step."""
        ...

    def barrier(self, name: str) -> None:
        """Wait until every process got here (before the chief writes into the folder)."""
        ...

    # ------------------------------------------------------------- counters and checkpoints
    def step_count(self) -> int:
        """Steps taken over the whole run, resumed sessions included."""
        ...

    def epoch_count(self) -> int:
        """Epochs completed (moves only once an epoch's metrics row is written)."""
        ...

    def set_epoch(self, epoch: int) -> None:
        """Record ``epoch`` epochs as completed (checkpointed: a resume starts after it)."""
        ...

    def run_seconds(self) -> float:
        """Wall-clock seconds the run has trained so far over its sessions (``train.minutes``)."""
        ...

    def set_run_seconds(self, seconds: float) -> None:
        """Store the run's seconds before a checkpoint, so a resume continues the budget."""
        ...

    def add_epoch_wall(self, seconds: float) -> None:
        """Add this session's seconds of the current epoch (an epoch may span a resume)."""
        ...

    def epoch_wall_s(self) -> float:
        """Seconds the current epoch took, over sessions (metrics.csv ``wall_s``, img/s)."""
        ...

    def reset_epoch_sums(self) -> None:
        """Start an epoch: zero its running sums and its seconds."""
        ...

    def checkpoints(self, directory: Path, keep: int, prefix: str) -> Checkpoints:
        """The run's checkpoint store in ``directory``: numbered ``<prefix>-<step>`` ones (the
        newest ``keep`` kept) and named ones."""
        ...

    # ------------------------------------------------------------------------- the step
    def batches(self, dataset: Any, epoch: int, start_step: int) -> Any:
        """The batches of ``epoch`` from step ``start_step`` of it on, as :meth:`train_step`
        takes them (distributed, or this process's share)."""
        ...

    def train_step(self, real: Any, labels: Any) -> dict[str, Any]:
        """One full step (D, G, EMA, ADA, sums). Queued on the device: nothing is read back."""
        ...

    def last_losses(self) -> dict[str, float]:
        """The last step's numbers, read back (the progress bar, every few steps)."""
        ...

    def first_bad_step(self) -> tuple[int, dict[str, float]] | None:
        """The first step whose numbers were not finite and those numbers, or None (the step
        checks on the device; the driver reads this every few steps and before saving)."""
        ...

    def epoch_means(self) -> dict[str, float]:
        """The current epoch's mean numbers and ADA's probability (a metrics.csv row)."""
        ...

    # --------------------------------------------------------------------------- sampling
    def standing_statistics(self, label_pool: np.ndarray) -> None:
        """Recompute the EMA generator's batch-norm statistics for its averaged weights
        (before sampling, measuring realism or saving)."""
        ...

    @property
    def sample_generator(self) -> Any:
        """The Keras generator grids use (the EMA one where the run keeps an EMA)."""
        ...

    def generate(self, z: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Images ``[N, H, W, 1]`` in ``[-1, 1]`` from the sampled generator (realism
        tracking)."""
        ...
