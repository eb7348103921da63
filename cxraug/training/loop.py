"""The run driver of ``cxraug train``: run folders, budgets, checkpoints, resume, metrics.

It is the same for both backends; the step and the state are the trainer's, used only through
:class:`.protocol.Trainer` (made by :func:`.backends.make_trainer`: :mod:`.step_tf` on
TensorFlow, the default, :mod:`.step_jax` with ``KERAS_BACKEND=jax``). The input
order is a pure function of (seed, epoch) (see ``dataset.py``) and all noise is in the
checkpointed state, so a run stopped at any step and resumed continues exactly as if it had never
stopped. Numbers are read back from the device every :data:`FETCH_EVERY` steps and at every
epoch end (the step itself checks them for non-finite values), not after every step.

What ``--resume`` checks, and the restore, are :mod:`.resume`'s; the checkpoints saved,
checkpoints/index.json, log.txt and run.json are kept by :mod:`.bookkeeping`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import platform
import shlex
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np

from .. import __version__
from ..contract import LABELS
from ..errors import CxrError
from ..io_utils import write_text_atomic
from ..metrics_csv import read_metrics
from ..progress import progress_bar
from ..recipe import Recipe
from .backends import backend, make_trainer
from .bookkeeping import CheckpointBook, RunLog, now
from .cluster import Cluster, join
from .dataset import CacheDataset
from .protocol import Trainer
from .resume import RESUMABLE_CHANGES, check_data, check_folder, check_position, restore_latest
from .run import CHECKPOINT_PREFIX, RunPaths, read_checkpoint_index
from .sampling import draw_grid, generate_grid, grid_latents, save_png
from .tensorboard import event_writer
from .tracking import REALISM_COLUMNS, RealismTracker, realism_line

METRIC_COLUMNS = ("epoch", "step", "kimg", "d_acc_fake", "d_acc_real", "d_loss", "g_loss",
                  "r_t", "aug_p", "wall_s", "img_per_s", *REALISM_COLUMNS)
#: Steps between reads of the losses (progress bar) and of the device's finiteness check.
FETCH_EVERY = 10

__all__ = ["FETCH_EVERY", "RESUMABLE_CHANGES", "TrainResult", "train"]


# -------------------------------------------------------------------------------- the run
@dataclass
class TrainResult:
    """What ``cxraug train`` reports."""

    run_dir: Path
    status: str
    epochs_done: int
    epochs: int
    step: int
    metrics: list[dict[str, float]] = field(default_factory=list)
    wall_s: float = 0.0
    checkpoint: str | None = None
    end_step: int = 0
    batch_size: int = 0
    process: tuple[int, int] = (0, 1)  # (rank, processes) of a run across machines

    def summary(self) -> str:
        kimg = self.step * self.batch_size / 1000.0
        if self.process[0] > 0:
            return (f"process {self.process[0]} of {self.process[1]}: {self.status} at step "
                    f"{self.step}/{self.end_step} ({kimg:.1f} kimg); process 0 wrote run "
                    f"{self.run_dir}")
        lines = [f"run {self.run_dir}: {self.status}, step {self.step}/{self.end_step} "
                 f"({kimg:.1f} kimg, {self.epochs_done}/{self.epochs} epochs), "
                 f"{self.wall_s:.1f} s this session"]
        if self.metrics:
            m = self.metrics[-1]
            lines.append(f"  epoch {int(m['epoch'])}: d_loss {m['d_loss']:.3f}  g_loss "
                         f"{m['g_loss']:.3f}  D accuracy real {m['d_acc_real']:.2f} fake "
                         f"{m['d_acc_fake']:.2f}  {m['img_per_s']:.1f} img/s")
        if self.checkpoint:
            lines.append(f"  checkpoint: {self.checkpoint}")
        best = [e for e in read_checkpoint_index(self.run_dir) if e.get("reason") == "best"]
        if best:
            b = best[-1]
            lines.append(f"  best checkpoint (what export uses): {b['name']} at "
                         f"{b['step'] * self.batch_size / 1000:.1f} kimg: {realism_line(b)}")
        samples = sorted((self.run_dir / "samples").glob("epoch_*.png"))
        if samples:
            lines.append(f"  samples: {samples[-1]}")
        lines.append(f"  next: cxraug export-onnx --run {self.run_dir} --out generator.onnx")
        return "\n".join(lines)


class _Diverged(Exception):
    pass


def _versions() -> dict[str, str]:
    found = {"cxraug": __version__, "python": platform.python_version(),
             "keras": keras.__version__, "backend": backend(), "numpy": np.__version__,
             "h5py": h5py.__version__}
    for name in ("tensorflow", "jax"):
        module = sys.modules.get(name)
        if module is not None:
            found[name] = str(getattr(module, "__version__", "?"))
    return found


def _read_metrics(path: Path, up_to_epoch: int) -> list[dict[str, float]]:
    """The rows a resumed run keeps (its empty cells stay empty when rewritten)."""
    if not path.is_file():
        return []
    rows = [{k: v for k, v in row.items() if not math.isnan(v)} for row in read_metrics(path)]
    return [r for r in rows if r["epoch"] <= up_to_epoch]


def _write_metrics(path: Path, rows: list[dict[str, float]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if k not in row else int(row[k]) if k in ("epoch", "step")
                             else f"{row[k]:.6g}") for k in METRIC_COLUMNS})
    write_text_atomic(path, buffer.getvalue())


@contextlib.contextmanager
def _op_determinism(enabled: bool) -> Iterator[None]:
    """Deterministic kernels for the duration of a run, then the process setting as it was.

    The setting is process-wide; restoring it keeps other work in the same process (tests, a
    notebook) from inheriting it. TensorFlow only: XLA on CPU (JAX) is deterministic already.
    """
    if not enabled or backend() != "tensorflow":
        yield
        return
    from tensorflow.python.framework import config as tf_config

    was = tf_config.is_op_determinism_enabled()
    if enabled and not was:
        tf_config.enable_op_determinism()
    try:
        yield
    finally:
        if enabled and not was:
            tf_config.disable_op_determinism()


def train(
    recipe: Recipe,
    data: str | Path,
    out: str | Path,
    resume: bool = False,
    progress: bool = True,
    max_steps: int | None = None,
    devices: int | None = None,
    cluster: Cluster | None = None,
) -> TrainResult:
    """Train ``recipe`` on the cache ``data`` into the run folder ``out`` (``cxraug train``).

    ``max_steps`` stops after that many steps in total (saving a checkpoint), for tests and
    benchmarks; the run can be resumed like an interrupted one. On CPU, kernels run
    deterministically so that ``--seed`` reproduces a run exactly. ``devices``: use the first N
    accelerators (default: all; of each process). ``cluster``: train with the other processes of
    a ``jax.distributed`` cluster, one per machine (:mod:`.cluster`; process 0 writes the run).
    """
    if cluster is not None:
        join(cluster, backend())
    on_gpu = _on_gpu()
    with _op_determinism(not on_gpu):
        return _train(recipe, data, out, resume, progress, max_steps, on_gpu, devices)


def _on_gpu() -> bool:
    if backend() == "jax":
        import jax

        return jax.devices()[0].platform != "cpu"
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


class _Clock:
    """The run's training seconds over its sessions (this one's from construction on), and its
    ``train.minutes`` budget."""

    def __init__(self, trainer: Trainer, minutes: float) -> None:
        self.trainer, self.minutes = trainer, minutes
        self.start = time.perf_counter()
        self.before = trainer.run_seconds()

    def session_seconds(self) -> float:
        return time.perf_counter() - self.start

    def run_seconds(self) -> float:
        return self.before + self.session_seconds()

    def out_of_time(self, check: bool = True) -> bool:
        """The ``train.minutes`` budget is spent (several processes: the chief's clock decides,
        read only where ``check``, so that every process stops at the same step)."""
        if self.minutes <= 0 or not check:
            return False
        return self.trainer.agree(self.run_seconds() >= 60.0 * self.minutes)


def _open_dataset(recipe: Recipe, data: Path) -> CacheDataset:
    t = recipe.train
    half_real = t.batch_size // 2 if t.d_half_batches else t.batch_size
    return CacheDataset(
        data, split=recipe.data.split, batch_size=half_real, seed=t.seed,
        class_balanced=t.class_balanced, label_mode=recipe.model.label_mode,
        steps_per_epoch=t.steps_per_epoch, step_batch=t.batch_size)


def _run_info(previous: dict[str, Any] | None, recipe: Recipe, data: Path,
              dataset: CacheDataset, trainer: Trainer,
              restored: dict[str, Any] | None) -> dict[str, Any]:
    """run.json: a new run's description (or the resumed run's), with this session added."""
    t = recipe.train
    if previous is None:
        info: dict[str, Any] = {
            "format": "cxraug-run-1", "recipe_name": recipe.name, "arch": recipe.model.arch,
            "class_names": dataset.class_names,
            "data": {"path": str(data.resolve()), "fingerprint": dataset.fingerprint,
                     "split": recipe.data.split, "images": dataset.n, "view": dataset.view,
                     "class_counts": dataset.class_counts.tolist(),
                     "skipped_multi_label": dataset.dropped_multi_label},
            "steps_per_epoch": dataset.steps_per_epoch, "batch_size": t.batch_size,
            "backend": backend(), "versions": _versions(), "started": now(), "sessions": [],
        }
    else:
        info = dict(previous)
    info["sessions"] = list(info.get("sessions", [])) + [{
        "started": now(), "command": shlex.join(sys.argv), "resumed_from":
        restored["name"] if restored else None, "replicas": trainer.replicas,
        "devices": trainer.devices(), "processes": trainer.process_count,
        "versions": _versions()}]
    return info


def _write_run_files(paths: RunPaths, recipe: Recipe) -> np.ndarray:
    """The chief's: recipe.toml, and the sample grids' latents (kept over sessions); returns
    those latents."""
    write_text_atomic(paths.recipe, recipe.to_toml())
    if not paths.grid_z.is_file():
        with open(paths.grid_z, "wb") as handle:
            t = recipe.train
            np.save(handle, grid_latents(recipe.model.latent_dim, t.grid_columns, t.seed))
    return np.load(paths.grid_z)


def _log_start(run: RunLog, recipe: Recipe, dataset: CacheDataset, trainer: Trainer,
               restored: dict[str, Any] | None, on_gpu: bool) -> None:
    run.log(f"{'resumed from ' + restored['name'] if restored else 'started'}: recipe "
            f"{recipe.name}, {dataset.n} images of {dataset.num_classes} classes, "
            f"{dataset.steps_per_epoch} steps/epoch, {trainer.replicas} replica(s)")
    if trainer.mixed and not on_gpu:
        run.log("note: train.mixed_precision is meant for GPUs; on CPU float16 runs slower",
                echo=True)
    if dataset.dropped_multi_label:
        run.log(f"note: {dataset.dropped_multi_label} multi-label images skipped "
                "(label_mode index)")


def _realism_tracker(recipe: Recipe, data: Path, label_pool: np.ndarray,
                     out: Path) -> RealismTracker:
    """The realism probes of ``train.eval_every``, the best so far read from the index."""
    t = recipe.train
    tracker = RealismTracker(data, label_pool, recipe.model.latent_dim, t.eval_images, t.seed)
    bests = [e for e in read_checkpoint_index(out) if e.get("reason") == "best"]
    # a best checkpoint chosen by an older rule (no realism_gap) is measured again
    tracker.best = bests[-1].get("realism_gap") if bests else None
    return tracker


def _train(recipe: Recipe, data: str | Path, out: str | Path, resume: bool, progress: bool,
           max_steps: int | None, on_gpu: bool, devices: int | None) -> TrainResult:
    out, data = Path(out), Path(data)
    paths = RunPaths(out)
    t = recipe.train
    # 1. The folder, the recipe and the cache fit the request (resume: see .resume).
    previous = check_folder(paths, resume, backend(), recipe)
    dataset = _open_dataset(recipe, data)
    if previous is not None:
        check_data(previous, data, out, dataset.fingerprint)

    # 2. The trainer, its state restored on --resume. Reproducibility: seeded weights, seeded
    # noise, and deterministic kernels on CPU.
    keras.utils.set_random_seed(t.seed)
    trainer: Trainer = make_trainer(recipe, dataset.num_classes, devices)
    chief = trainer.is_chief
    # every process has checked the folder (above) before the chief writes into it
    trainer.barrier("run-checks")
    if chief:
        out.mkdir(parents=True, exist_ok=True)
        paths.samples.mkdir(exist_ok=True)
        paths.checkpoints.mkdir(exist_ok=True)
    store = trainer.checkpoints(paths.checkpoints, t.keep_checkpoints, CHECKPOINT_PREFIX)
    restored = restore_latest(store, out) if resume else None

    # 3. This session in the run folder: run.json, recipe.toml, grid latents, log.txt.
    run = RunLog(paths, _run_info(previous, recipe, data, dataset, trainer, restored), progress,
                 chief)
    grid_z = _write_run_files(paths, recipe) if chief else None
    run.save_info(status="running", ended=None, epochs=t.epochs, error=None)
    _log_start(run, recipe, dataset, trainer, restored, on_gpu)

    # 4. Where the run stands, and what the epochs report to.
    spe = dataset.steps_per_epoch
    end_step = planned_steps(t, spe)
    n_epochs = -(-end_step // spe)
    epochs_done = trainer.epoch_count()
    step = trainer.step_count()
    in_epoch = check_position(step, epochs_done, spe)
    label_pool = dataset.multi_hot.astype(np.float32) if trainer.label_key == LABELS else \
        dataset.labels.astype(np.int32)
    tracker = _realism_tracker(recipe, data, label_pool, out) if t.eval_every and chief \
        else None
    metrics = _read_metrics(paths.metrics, epochs_done)
    writer = event_writer(paths.tensorboard, trainer.backend_name if chief else "")
    if trainer.backend_name != "tensorflow":
        run.log(f"note: no TensorBoard events on {trainer.backend_name} (metrics.csv and "
                "samples/ hold the numbers and grids)")
    clock = _Clock(trainer, t.minutes)
    book = CheckpointBook(trainer, store, paths, run, label_pool, spe, clock.run_seconds,
                          last=restored["name"] if restored else None)
    status = "running"

    # 5. The epochs.
    run.bar = progress_bar(total=end_step, initial=step, disable=not progress, unit="step",
                           file=sys.stderr, dynamic_ncols=True, desc=recipe.name)
    limit = end_step if max_steps is None else min(end_step, max_steps)
    try:
        if step >= end_step or clock.out_of_time():
            status = "finished"  # a resumed run whose budget is already spent
        for epoch in range(epochs_done, n_epochs if status == "running" else 0):
            if in_epoch == 0:
                trainer.reset_epoch_sums()
            tick = time.perf_counter()
            for real, labels in trainer.batches(dataset, epoch, in_epoch):
                trainer.train_step(real, labels)  # queued on the device; nothing read back
                step += 1
                run.bar.update(1)
                # several processes agree on the clock only where they fetch numbers anyway
                stopping = step >= limit or clock.out_of_time(
                    trainer.process_count == 1 or step % FETCH_EVERY == 0)
                if step % FETCH_EVERY == 0 or stopping:
                    _check_finite(trainer, spe)
                    losses = trainer.last_losses()
                    run.bar.set_postfix(epoch=epoch + 1, d=f"{losses['d_loss']:.3f}",
                                        g=f"{losses['g_loss']:.3f}", refresh=False)
                if stopping:
                    break
            _check_finite(trainer, spe)  # before anything of this epoch is saved
            trainer.add_epoch_wall(time.perf_counter() - tick)
            complete = step == (epoch + 1) * spe
            budget_spent = step >= end_step or clock.out_of_time()
            if not complete and not budget_spent:  # max_steps inside an epoch
                book.save("max_steps")
                status = "stopped"
                break
            row = _epoch_row(trainer, epoch, step, spe, t.batch_size)
            last = budget_spent
            if chief and ((epoch + 1) % t.sample_every == 0 or last):
                assert grid_z is not None  # written by the chief
                _sample(trainer, label_pool, grid_z, dataset.class_names, paths, writer,
                        epoch, step)
            if tracker is not None and ((epoch + 1) % t.eval_every == 0 or last):
                _measure(tracker, trainer, label_pool, book, run, row)
            metrics.append(row)
            if chief:
                _write_metrics(paths.metrics, metrics)
            if complete:  # only now: a Ctrl-C before this point redoes the row on --resume
                trainer.set_epoch(epoch + 1)
                in_epoch = 0
            writer.scalars(step, {k: row[k] for k in METRIC_COLUMNS[3:] if k in row})
            run.log(_epoch_line(row, epoch, n_epochs))
            stop = max_steps is not None and step >= max_steps
            if (epoch + 1) % t.checkpoint_every == 0 or last or stop:
                book.save("budget" if last and not complete else "epoch")
            if last:
                if step < end_step:
                    run.log(f"time budget of {t.minutes:g} min reached at step {step}",
                            echo=True)
                status = "finished"
                break
            if stop:
                status = "stopped"
                break
        else:
            if status == "running":
                status = "finished"
    except KeyboardInterrupt:
        _interrupted(run, trainer, book, spe, paths)
        raise
    except _Diverged as exc:
        run.bar.close()
        _diverged(run, exc, book.last, paths)
    except BaseException as exc:
        run.bar.close()
        # a user error is printed once, by the CLI, as its `error:` line
        run.log(f"failed: {type(exc).__name__}: {exc}", quiet=isinstance(exc, CxrError))
        run.save_info(status="failed", ended=now(), error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        writer.close()

    # 6. The session's end in run.json and log.txt.
    run.bar.close()
    wall = clock.session_seconds()
    step = trainer.step_count()
    run.save_info(status=status, ended=now(), epochs_done=trainer.epoch_count(), step=step,
                  kimg=step * t.batch_size / 1000.0, run_seconds=clock.run_seconds())
    run.log(f"{status}: step {step}/{end_step} ({step * t.batch_size / 1000:.1f} kimg) in "
            f"{wall:.1f} s")
    return TrainResult(run_dir=out, status=status, epochs_done=trainer.epoch_count(),
                       epochs=n_epochs, step=step, metrics=metrics,
                       wall_s=wall, checkpoint=book.last, end_step=end_step,
                       batch_size=t.batch_size, process=(trainer.process_index,
                                                         trainer.process_count))


def _epoch_row(trainer: Trainer, epoch: int, step: int, steps_per_epoch: int,
               batch_size: int) -> dict[str, float]:
    """The epoch's metrics.csv row (realism columns added where measured)."""
    wall = trainer.epoch_wall_s()
    done_in_epoch = step - epoch * steps_per_epoch
    return {"epoch": epoch + 1, "step": step, "kimg": step * batch_size / 1000.0,
            **trainer.epoch_means(), "wall_s": wall,
            "img_per_s": done_in_epoch * batch_size / max(wall, 1e-9)}


def _epoch_line(row: dict[str, float], epoch: int, n_epochs: int) -> str:
    return (f"epoch {epoch + 1}/{n_epochs} step {int(row['step'])} ({row['kimg']:.1f} kimg): "
            f"d_loss {row['d_loss']:.4f} g_loss {row['g_loss']:.4f} d_acc_real "
            f"{row['d_acc_real']:.3f} d_acc_fake {row['d_acc_fake']:.3f} r_t "
            f"{row['r_t']:.2f} p {row['aug_p']:.3f} {row['img_per_s']:.1f} img/s")


def _sample(trainer: Trainer, label_pool: np.ndarray, grid_z: np.ndarray,
            class_names: list[str], paths: RunPaths, writer: Any, epoch: int,
            step: int) -> None:
    """The epoch's sample grid (samples/ and TensorBoard), from the fixed grid latents."""
    trainer.standing_statistics(label_pool)
    images, names = generate_grid(trainer.sample_generator, grid_z, class_names,
                                  trainer.label_mode)
    grid = draw_grid(images, names)
    save_png(grid, paths.sample(epoch + 1))
    writer.image(step, "samples", grid)


def _measure(tracker: RealismTracker, trainer: Trainer, label_pool: np.ndarray,
             book: CheckpointBook, run: RunLog, row: dict[str, float]) -> None:
    """Realism at the epoch's end into its ``row``; a new best is saved as best-<step>."""
    trainer.standing_statistics(label_pool)
    result = tracker.measure(trainer.generate)
    row.update({k: result[k] for k in REALISM_COLUMNS})
    best = tracker.is_best(result)
    if best:
        book.save_best(result)
    run.log(f"realism at {row['kimg']:.1f} kimg: {realism_line(result)}"
            f"{' (best so far)' if best else ''}")


def _interrupted(run: RunLog, trainer: Trainer, book: CheckpointBook, steps_per_epoch: int,
                 paths: RunPaths) -> None:
    """Ctrl-C: the state so far saved as a checkpoint (unless it diverged since the last
    check: then the last good one stays and the run failed). The caller re-raises."""
    run.bar.close()
    try:  # a divergence in the steps since the last check must not be saved
        _check_finite(trainer, steps_per_epoch)
    except _Diverged as exc:
        _diverged(run, exc, book.last, paths)
    name = book.save("interrupt")
    run.log(f"interrupted at step {trainer.step_count()}; saved {name}", echo=True)
    run.save_info(status="interrupted", ended=now())


def _check_finite(trainer: Trainer, steps_per_epoch: int) -> None:
    """Raise :class:`_Diverged` naming the first step whose numbers were not finite (the step
    records it on the device; this reads one number)."""
    bad = trainer.first_bad_step()
    if bad is None:
        return
    step, values = bad
    names = ", ".join(f"{k}={v}" for k, v in values.items() if not math.isfinite(v))
    raise _Diverged(f"training diverged at epoch {(step - 1) // steps_per_epoch + 1}, step "
                    f"{step}: non-finite {names}")


def _diverged(run: RunLog, exc: _Diverged, last_ckpt: str | None, paths: RunPaths) -> None:
    keep = (f"the last good checkpoint {last_ckpt} is kept" if last_ckpt
            else "no checkpoint had been saved yet")
    message = (f"{exc}; nothing from this step on was saved and {keep} in "
               f"{paths.checkpoints}; start a new run with lower train.d_lr/train.g_lr "
               "(--set train.d_lr=1e-4) or train.loss=\"hinge\"")
    run.log(message)
    run.save_info(status="failed", ended=now(), error=str(exc))
    raise CxrError(message) from None


def planned_steps(t: Any, steps_per_epoch: int) -> int:
    """Steps of the whole run: ``train.kimg`` thousand images when set, else ``train.epochs``."""
    if t.kimg > 0:
        return max(1, math.ceil(t.kimg * 1000.0 / t.batch_size))
    return t.epochs * steps_per_epoch
