"""The run driver of ``cxraug train``: run folders, budgets, checkpoints, resume, metrics.

It is the same for both backends; the step and the state are the trainer's, used only through
:class:`.protocol.Trainer` (made by :func:`.backends.make_trainer`: :mod:`.step_tf` on
TensorFlow, the default, :mod:`.step_jax` with ``KERAS_BACKEND=jax``). The input
order is a pure function of (seed, epoch) (see ``dataset.py``) and all noise is in the
checkpointed state, so a run stopped at any step and resumed continues exactly as if it had never
stopped. Numbers are read back from the device every :data:`FETCH_EVERY` steps and at every
epoch end (the step itself checks them for non-finite values), not after every step.
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
from datetime import datetime, timezone
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
from ..recipe import Recipe, load_recipe
from .backends import backend, make_trainer
from .cluster import Cluster, join
from .dataset import CacheDataset
from .protocol import Trainer
from .run import (
    BEST_PREFIX,
    CHECKPOINT_PREFIX,
    RunPaths,
    latest_entry,
    read_checkpoint_index,
    read_run_json,
    write_run_json,
)
from .sampling import draw_grid, generate_grid, grid_latents, save_png
from .tensorboard import event_writer
from .tracking import REALISM_COLUMNS, RealismTracker, realism_line

METRIC_COLUMNS = ("epoch", "step", "kimg", "d_acc_fake", "d_acc_real", "d_loss", "g_loss",
                  "r_t", "aug_p", "wall_s", "img_per_s", *REALISM_COLUMNS)
# Recipe fields that may change on --resume: they do not change what is computed.
RESUMABLE_CHANGES = ("train.epochs", "train.kimg", "train.minutes", "train.checkpoint_every",
                     "train.sample_every", "train.keep_checkpoints", "train.eval_every",
                     "train.eval_images")
#: Steps between reads of the losses (progress bar) and of the device's finiteness check.
FETCH_EVERY = 10

__all__ = ["FETCH_EVERY", "TrainResult", "train"]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------- DiffAugment
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


def _flatten(recipe: Recipe) -> dict[str, Any]:
    return {f"{section}.{key}": value for section in ("model", "train", "data")
            for key, value in recipe.to_dict()[section].items()}


def _recipe_changes(old: Recipe, new: Recipe) -> list[str]:
    a, b = _flatten(old), _flatten(new)
    return [f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES]


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


class _Run:
    """Bookkeeping of one training session in a run folder (logs, metrics, checkpoints)."""

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
            handle.write(f"{_now()} {message}\n")
        if (echo or self.progress) and not quiet:
            (self.bar.write if self.bar is not None else print)(message, file=sys.stderr)

    def save_info(self, **changes: Any) -> None:
        self.info.update(changes)
        if self.chief:
            write_run_json(self.paths.root, self.info)


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


def _train(recipe: Recipe, data: str | Path, out: str | Path, resume: bool, progress: bool,
           max_steps: int | None, on_gpu: bool, devices: int | None) -> TrainResult:
    out, data = Path(out), Path(data)
    paths = RunPaths(out)
    t = recipe.train
    not_empty = out.exists() and (not out.is_dir() or any(out.iterdir()))
    if not_empty and not resume:
        raise CxrError(f"run folder {out} is not empty; add --resume to continue the run in it, "
                       "or choose a new --out")
    previous: dict[str, Any] | None = None
    if resume:
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
        if ran_on != backend():
            raise CxrError(f"--resume: run {out} was trained on {ran_on} and its checkpoints are "
                           f"{ran_on}'s; set KERAS_BACKEND={ran_on} to continue it (export-onnx "
                           "reads either)")
        old_recipe = load_recipe(paths.recipe)
        changes = _recipe_changes(old_recipe, recipe)
        if changes:
            raise CxrError(f"--resume: the recipe differs from the run's ({'; '.join(changes)}); "
                           f"pass --recipe {paths.recipe} (only train.epochs, checkpoint_every, "
                           "sample_every and keep_checkpoints may change)")

    half_real = t.batch_size // 2 if t.d_half_batches else t.batch_size
    dataset = CacheDataset(
        data, split=recipe.data.split, batch_size=half_real, seed=t.seed,
        class_balanced=t.class_balanced, label_mode=recipe.model.label_mode,
        steps_per_epoch=t.steps_per_epoch, step_batch=t.batch_size)
    if previous is not None:
        old_fp = previous.get("data", {}).get("fingerprint")
        if old_fp != dataset.fingerprint:
            raise CxrError(f"--resume: cache {data} (fingerprint {dataset.fingerprint[:12]}) is "
                           f"not the one run {out} was trained on ({str(old_fp)[:12]}, "
                           f"{previous.get('data', {}).get('path')}); pass that cache as --data")

    # Reproducibility: seeded weights, seeded noise, and deterministic kernels on CPU.
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
    index = read_checkpoint_index(out)
    restored = None
    if resume and index:
        restored = latest_entry(index)
        store.restore(restored["name"])

    if previous is None:
        info: dict[str, Any] = {
            "format": "cxraug-run-1", "recipe_name": recipe.name, "arch": recipe.model.arch,
            "class_names": dataset.class_names,
            "data": {"path": str(data.resolve()), "fingerprint": dataset.fingerprint,
                     "split": recipe.data.split, "images": dataset.n, "view": dataset.view,
                     "class_counts": dataset.class_counts.tolist(),
                     "skipped_multi_label": dataset.dropped_multi_label},
            "steps_per_epoch": dataset.steps_per_epoch, "batch_size": t.batch_size,
            "backend": backend(), "versions": _versions(), "started": _now(), "sessions": [],
        }
    else:
        info = dict(previous)
    info["sessions"] = list(info.get("sessions", [])) + [{
        "started": _now(), "command": shlex.join(sys.argv), "resumed_from":
        restored["name"] if restored else None, "replicas": trainer.replicas,
        "devices": trainer.devices(), "processes": trainer.process_count,
        "versions": _versions()}]
    run = _Run(paths, info, progress, chief)
    if chief:
        write_text_atomic(paths.recipe, recipe.to_toml())
        if not paths.grid_z.is_file():
            with open(paths.grid_z, "wb") as handle:
                np.save(handle, grid_latents(recipe.model.latent_dim, t.grid_columns, t.seed))
    grid_z = np.load(paths.grid_z) if chief else None
    run.save_info(status="running", ended=None, epochs=t.epochs, error=None)
    run.log(f"{'resumed from ' + restored['name'] if restored else 'started'}: recipe "
            f"{recipe.name}, {dataset.n} images of {dataset.num_classes} classes, "
            f"{dataset.steps_per_epoch} steps/epoch, {trainer.replicas} replica(s)")
    if trainer.mixed and not on_gpu:
        run.log("note: train.mixed_precision is meant for GPUs; on CPU float16 runs slower",
                echo=True)
    if dataset.dropped_multi_label:
        run.log(f"note: {dataset.dropped_multi_label} multi-label images skipped "
                "(label_mode index)")

    spe = dataset.steps_per_epoch
    end_step = planned_steps(t, spe)
    n_epochs = -(-end_step // spe)
    epochs_done = trainer.epoch_count()
    step = trainer.step_count()
    in_epoch = step - epochs_done * spe
    # in_epoch == spe: stopped after an epoch's last step, before its metrics row was written
    if in_epoch < 0 or in_epoch > spe:
        raise CxrError(f"--resume: checkpoint step {step} does not fit {spe} steps per epoch; "
                       "the run folder does not match this cache or batch size")
    label_pool = dataset.multi_hot.astype(np.float32) if trainer.label_key == LABELS else \
        dataset.labels.astype(np.int32)
    tracker = None
    if t.eval_every and chief:
        tracker = RealismTracker(data, label_pool, recipe.model.latent_dim, t.eval_images,
                                 t.seed)
        bests = [e for e in read_checkpoint_index(out) if e.get("reason") == "best"]
        # a best checkpoint chosen by an older rule (no realism_gap) is measured again
        tracker.best = bests[-1].get("realism_gap") if bests else None
    metrics = _read_metrics(paths.metrics, epochs_done)
    writer = event_writer(paths.tensorboard, trainer.backend_name if chief else "")
    if trainer.backend_name != "tensorflow":
        run.log(f"note: no TensorBoard events on {trainer.backend_name} (metrics.csv and "
                "samples/ hold the numbers and grids)")
    session_start = time.perf_counter()
    seconds_before = trainer.run_seconds()
    last_ckpt = restored["name"] if restored else None
    status = "running"

    def run_seconds() -> float:
        return seconds_before + time.perf_counter() - session_start

    def out_of_time(check: bool = True) -> bool:
        """The ``train.minutes`` budget is spent (several processes: the chief's clock decides,
        read only where ``check``, so that every process stops at the same step)."""
        if t.minutes <= 0 or not check:
            return False
        return trainer.agree(run_seconds() >= 60.0 * t.minutes)

    def write_index(entries: list[dict[str, Any]]) -> None:
        write_text_atomic(paths.checkpoint_index, _json(entries))

    def save_checkpoint(reason: str) -> str:
        nonlocal last_ckpt
        s, e = trainer.step_count(), trainer.epoch_count()
        if not chief:
            last_ckpt = f"{CHECKPOINT_PREFIX}-{s}"
            return last_ckpt
        trainer.standing_statistics(label_pool)
        trainer.set_run_seconds(run_seconds())
        name = store.save(s)
        kept = store.kept()
        entries = [x for x in read_checkpoint_index(out) if x["name"] != name
                   and (x["name"] in kept or x.get("reason") == "best")]
        entries.append({"name": name, "epoch": e, "step": s, "saved": _now(), "reason": reason})
        write_index(entries)
        last_ckpt = name
        run.save_info(last_checkpoint=name, epochs_done=e, step=s)
        return name

    def save_best(result: dict[str, float]) -> None:
        """The whole training state under best-<step>, then the older best removed (the index
        always names a complete checkpoint)."""
        trainer.set_run_seconds(run_seconds())
        s = trainer.step_count()
        e = s // spe  # epochs completed (the counter moves only once the epoch's row is written)
        name = f"{BEST_PREFIX}-{s}"
        store.write(name)
        old = [x for x in read_checkpoint_index(out) if x.get("reason") == "best"]
        entries = [x for x in read_checkpoint_index(out) if x.get("reason") != "best"]
        entries.append({"name": name, "epoch": e, "step": s, "saved": _now(), "reason": "best",
                        **{k: (round(v, 5) if isinstance(v, float) else v)
                           for k, v in result.items()}})
        write_index(entries)
        for entry in old:
            if entry["name"] != name:
                for f in paths.checkpoints.glob(f"{entry['name']}.*"):
                    f.unlink(missing_ok=True)
        run.save_info(best_checkpoint=name, best=entries[-1])

    run.bar = progress_bar(total=end_step, initial=step, disable=not progress, unit="step",
                   file=sys.stderr, dynamic_ncols=True, desc=recipe.name)
    limit = end_step if max_steps is None else min(end_step, max_steps)
    try:
        if step >= end_step or out_of_time():
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
                stopping = step >= limit or out_of_time(
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
            budget_spent = step >= end_step or out_of_time()
            if not complete and not budget_spent:  # max_steps inside an epoch
                save_checkpoint("max_steps")
                status = "stopped"
                break
            wall = trainer.epoch_wall_s()
            done_in_epoch = step - epoch * spe
            row = {"epoch": epoch + 1, "step": step, "kimg": step * t.batch_size / 1000.0,
                   **trainer.epoch_means(), "wall_s": wall,
                   "img_per_s": done_in_epoch * t.batch_size / max(wall, 1e-9)}
            last = budget_spent
            if chief and ((epoch + 1) % t.sample_every == 0 or last):
                trainer.standing_statistics(label_pool)
                assert grid_z is not None  # loaded on the chief
                images, names = generate_grid(trainer.sample_generator, grid_z,
                                              dataset.class_names, trainer.label_mode)
                grid = draw_grid(images, names)
                save_png(grid, paths.sample(epoch + 1))
                writer.image(step, "samples", grid)
            if tracker is not None and ((epoch + 1) % t.eval_every == 0 or last):
                trainer.standing_statistics(label_pool)
                result = tracker.measure(trainer.generate)
                row.update({k: result[k] for k in REALISM_COLUMNS})
                best = tracker.is_best(result)
                if best:
                    save_best(result)
                run.log(f"realism at {row['kimg']:.1f} kimg: {realism_line(result)}"
                        f"{' (best so far)' if best else ''}")
            metrics.append(row)
            if chief:
                _write_metrics(paths.metrics, metrics)
            if complete:  # only now: a Ctrl-C before this point redoes the row on --resume
                trainer.set_epoch(epoch + 1)
                in_epoch = 0
            writer.scalars(step, {k: row[k] for k in METRIC_COLUMNS[3:] if k in row})
            run.log(f"epoch {epoch + 1}/{n_epochs} step {step} ({row['kimg']:.1f} kimg): "
                    f"d_loss {row['d_loss']:.4f} g_loss {row['g_loss']:.4f} d_acc_real "
                    f"{row['d_acc_real']:.3f} d_acc_fake {row['d_acc_fake']:.3f} r_t "
                    f"{row['r_t']:.2f} p {row['aug_p']:.3f} {row['img_per_s']:.1f} img/s")
            stop = max_steps is not None and step >= max_steps
            if (epoch + 1) % t.checkpoint_every == 0 or last or stop:
                save_checkpoint("budget" if last and not complete else "epoch")
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
        run.bar.close()
        try:  # a divergence in the steps since the last check must not be saved
            _check_finite(trainer, spe)
        except _Diverged as exc:
            _diverged(run, exc, last_ckpt, paths)
        name = save_checkpoint("interrupt")
        run.log(f"interrupted at step {trainer.step_count()}; saved {name}", echo=True)
        run.save_info(status="interrupted", ended=_now())
        raise
    except _Diverged as exc:
        run.bar.close()
        _diverged(run, exc, last_ckpt, paths)
    except BaseException as exc:
        run.bar.close()
        # a user error is printed once, by the CLI, as its `error:` line
        run.log(f"failed: {type(exc).__name__}: {exc}", quiet=isinstance(exc, CxrError))
        run.save_info(status="failed", ended=_now(), error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        writer.close()
    run.bar.close()
    wall = time.perf_counter() - session_start
    step = trainer.step_count()
    run.save_info(status=status, ended=_now(), epochs_done=trainer.epoch_count(), step=step,
                  kimg=step * t.batch_size / 1000.0, run_seconds=run_seconds())
    run.log(f"{status}: step {step}/{end_step} ({step * t.batch_size / 1000:.1f} kimg) in "
            f"{wall:.1f} s")
    return TrainResult(run_dir=out, status=status, epochs_done=trainer.epoch_count(),
                       epochs=n_epochs, step=step, metrics=metrics,
                       wall_s=wall, checkpoint=last_ckpt, end_step=end_step,
                       batch_size=t.batch_size, process=(trainer.process_index,
                                                         trainer.process_count))


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


def _diverged(run: _Run, exc: _Diverged, last_ckpt: str | None, paths: RunPaths) -> None:
    keep = (f"the last good checkpoint {last_ckpt} is kept" if last_ckpt
            else "no checkpoint had been saved yet")
    message = (f"{exc}; nothing from this step on was saved and {keep} in "
               f"{paths.checkpoints}; start a new run with lower train.d_lr/train.g_lr "
               "(--set train.d_lr=1e-4) or train.loss=\"hinge\"")
    run.log(message)
    run.save_info(status="failed", ended=_now(), error=str(exc))
    raise CxrError(message) from None


def planned_steps(t: Any, steps_per_epoch: int) -> int:
    """Steps of the whole run: ``train.kimg`` thousand images when set, else ``train.epochs``."""
    if t.kimg > 0:
        return max(1, math.ceil(t.kimg * 1000.0 / t.batch_size))
    return t.epochs * steps_per_epoch


def _json(obj: Any) -> str:
    import json

    return json.dumps(obj, indent=2) + "\n"
