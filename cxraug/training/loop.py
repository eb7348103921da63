"""The GAN training loop: a readable GradientTape step, run folders, checkpoints and resume.

One step, per replica (the same code runs under the default strategy on CPU and under
``tf.distribute.MirroredStrategy`` across GPUs):

1. **D update.** Normally one Adam step on a batch of reals and an equally large batch of fakes.
   With ``train.d_half_batches`` (the paper) two Adam steps instead: one on half a batch of reals,
   then one on half a batch of fakes, exactly like its two ``train_on_batch`` calls.
2. **G update.** One Adam step on a full batch of fresh latent/label pairs, D fixed.
3. **EMA** of the generator's weights (``train.ema_decay`` > 0), batch-norm statistics copied.

Fake labels (``train.fake_labels``): ``uniform`` draws every class equally often (the paper);
``data`` reuses the real batch's labels in shuffled order, so real and fake label frequencies match
(multi-hot models always do this: there is no "uniform" over label combinations).

All noise (latent vectors, fake labels, DiffAugment parameters) comes from one
``tf.random.Generator`` whose state is checkpointed with the weights, the optimizers, the step and
the epoch's running metrics, and the input order is a pure function of (seed, epoch) (see
``dataset.py``). A run stopped at any step and resumed therefore continues exactly as if it had
never stopped.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np
import tensorflow as tf

from .. import __version__
from ..contract import IMAGE, LABEL, LABELS, Z, inputs_for, label_input, label_mode_of
from ..errors import CxrError
from ..io_utils import write_text_atomic
from ..progress import progress_bar
from ..recipe import Recipe, load_recipe
from .dataset import CacheDataset
from .run import (
    BEST_PREFIX,
    CHECKPOINT_PREFIX,
    RunPaths,
    latest_entry,
    read_checkpoint_index,
    read_metrics,
    read_run_json,
    write_run_json,
)
from .sampling import draw_grid, generate_grid, grid_latents, save_png
from .tracking import REALISM_COLUMNS, RealismTracker

METRIC_COLUMNS = ("epoch", "step", "kimg", "d_acc_fake", "d_acc_real", "d_loss", "g_loss",
                  "r_t", "aug_p", "wall_s", "img_per_s", *REALISM_COLUMNS)
# Recipe fields that may change on --resume: they do not change what is computed.
RESUMABLE_CHANGES = ("train.epochs", "train.kimg", "train.minutes", "train.checkpoint_every",
                     "train.sample_every", "train.keep_checkpoints", "train.eval_every",
                     "train.eval_images")
#: ADA adjusts its augmentation probability every this many steps (StyleGAN2-ADA: 4).
ADA_INTERVAL = 4
#: Batches of latents over which the EMA generator's batch-norm statistics are recomputed.
STANDING_BATCHES = 16


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------- DiffAugment
def _translation(x: tf.Tensor, rng: tf.random.Generator, ratio: float = 0.125) -> tf.Tensor:
    """Shift each image by up to ``ratio`` of its side, filling with zeros (mid-gray)."""
    b, h, w = tf.shape(x)[0], x.shape[1], x.shape[2]
    sy, sx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = rng.uniform([b, 1], -sy, sy + 1, dtype=tf.int32)
    dx = rng.uniform([b, 1], -sx, sx + 1, dtype=tf.int32)
    rows = tf.range(h)[None, :] + dy
    cols = tf.range(w)[None, :] + dx
    x = tf.gather(x, tf.clip_by_value(rows, 0, h - 1), axis=1, batch_dims=1)
    x = tf.gather(x, tf.clip_by_value(cols, 0, w - 1), axis=2, batch_dims=1)
    inside = (tf.cast((rows >= 0) & (rows < h), x.dtype)[:, :, None, None]
              * tf.cast((cols >= 0) & (cols < w), x.dtype)[:, None, :, None])
    return x * inside


def _cutout(x: tf.Tensor, rng: tf.random.Generator, ratio: float = 0.5) -> tf.Tensor:
    """Zero a square of ``ratio`` of the side at a random place in each image."""
    b, h, w = tf.shape(x)[0], x.shape[1], x.shape[2]
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    oy = rng.uniform([b, 1], 0, h + (1 - ch % 2), dtype=tf.int32) - ch // 2
    ox = rng.uniform([b, 1], 0, w + (1 - cw % 2), dtype=tf.int32) - cw // 2
    ys = tf.range(h)[None, :] - oy
    xs = tf.range(w)[None, :] - ox
    in_y = tf.cast((ys >= 0) & (ys < ch), x.dtype)[:, :, None, None]
    in_x = tf.cast((xs >= 0) & (xs < cw), x.dtype)[:, None, :, None]
    return x * (1.0 - in_y * in_x)


def _brightness(x: tf.Tensor, rng: tf.random.Generator) -> tf.Tensor:
    return x + (rng.uniform([tf.shape(x)[0], 1, 1, 1], dtype=x.dtype) - 0.5)


def _contrast(x: tf.Tensor, rng: tf.random.Generator) -> tf.Tensor:
    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    return (x - mean) * (rng.uniform([tf.shape(x)[0], 1, 1, 1], dtype=x.dtype) + 0.5) + mean


AUGMENTS: dict[str, Callable[[tf.Tensor, tf.random.Generator], tf.Tensor]] = {
    "translation": _translation, "cutout": _cutout, "brightness": _brightness,
    "contrast": _contrast,
}


def diff_augment(x: tf.Tensor, policies: list[str], rng: tf.random.Generator,
                 p: tf.Tensor | None = None) -> tf.Tensor:
    """DiffAugment (Zhao et al. 2020): differentiable, so G learns through it.

    Reals and fakes go through the same policy with independently drawn parameters per image, so
    D cannot tell reals by how they were augmented. The order is fixed (colour first, then
    geometry) whatever order the recipe lists. With ``p`` (ADA), each policy is applied to each
    image with probability ``p``; without it, always.
    """
    for name in ("brightness", "contrast", "translation", "cutout"):
        if name in policies:
            augmented = AUGMENTS[name](x, rng)
            if p is not None:
                chosen = rng.uniform([tf.shape(x)[0], 1, 1, 1]) < tf.cast(p, tf.float32)
                augmented = tf.where(chosen, augmented, x)
            x = augmented
    return x


# ------------------------------------------------------------------------------------ losses
def d_loss_real(logits: tf.Tensor, loss: str) -> tf.Tensor:
    """Per-example D loss on reals (target "real")."""
    return tf.nn.relu(1.0 - logits) if loss == "hinge" else tf.nn.softplus(-logits)


def d_loss_fake(logits: tf.Tensor, loss: str) -> tf.Tensor:
    return tf.nn.relu(1.0 + logits) if loss == "hinge" else tf.nn.softplus(logits)


def g_loss_fn(logits: tf.Tensor, loss: str) -> tf.Tensor:
    """Per-example G loss: non-saturating (target "real", the paper) or hinge (-D(G(z)))."""
    return -logits if loss == "hinge" else tf.nn.softplus(-logits)


# ----------------------------------------------------------------------------------- trainer
def pick_strategy() -> tf.distribute.Strategy:
    """Every visible GPU through MirroredStrategy when there are several; else the default."""
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy([g.name for g in gpus])
    return tf.distribute.get_strategy()


@contextlib.contextmanager
def _dtype_policy(mixed: bool) -> Iterator[None]:
    """Build models under mixed_float16 without leaving the process-wide policy changed."""
    previous = keras.mixed_precision.dtype_policy()
    if mixed:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


class GANTrainer:
    """Networks, optimizers, noise and the compiled step of one training run."""

    def __init__(self, recipe: Recipe, num_classes: int,
                 strategy: tf.distribute.Strategy | None = None) -> None:
        from .. import models

        self.recipe = recipe
        m, t = recipe.model, recipe.train
        self.strategy = strategy or pick_strategy()
        self.replicas = int(self.strategy.num_replicas_in_sync)
        self.num_classes = int(num_classes)
        self.loss = t.loss
        self.half = bool(t.d_half_batches)
        self.policies = list(t.diffaugment)
        self.ema_decay = float(t.ema_decay)
        self.aux_weight = float(t.aux_class_weight)
        self.ada = t.ada_target > 0
        self.label_mode = label_mode_of(m)
        self.label_key = label_input(self.label_mode) or LABEL
        self.fake_labels = "data" if self.label_mode == "multi-hot" else t.fake_labels
        unit = 2 * self.replicas if self.half else self.replicas
        if t.batch_size % unit:
            raise CxrError(f"train.batch_size {t.batch_size} must be divisible by {unit} "
                           f"({self.replicas} replica(s){', half batches' if self.half else ''})")
        self.batch_size = int(t.batch_size)
        self.real_batch = self.batch_size // 2 if self.half else self.batch_size  # global reals
        self.local_batch = self.batch_size // self.replicas  # G batch per replica
        self.mixed = bool(t.mixed_precision)
        with _dtype_policy(self.mixed), self.strategy.scope():
            self.generator = models.build_generator(m, self.num_classes)
            self.discriminator = models.build_discriminator(
                m, self.num_classes, class_head=self.aux_weight > 0)
            self.ema_generator = (models.build_generator(m, self.num_classes)
                                  if self.ema_decay > 0 else None)
            self.g_optimizer = self._optimizer(t.g_lr, t, "g_adam")
            self.d_optimizer = self._optimizer(t.d_lr, t, "d_adam")
            self.g_optimizer.build(self.generator.trainable_variables)
            self.d_optimizer.build(self.discriminator.trainable_variables)
            self.rng = tf.random.Generator.from_seed(t.seed)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
            self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
            # Running sums of the current epoch: d_loss, g_loss, d_acc_real, d_acc_fake, r_t, steps.
            self.sums = tf.Variable(tf.zeros([6], tf.float64), trainable=False, name="sums")
            self.epoch_wall = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="wall")
            # Wall-clock seconds of the run so far (train.minutes), over resumed sessions.
            self.run_seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False,
                                           name="run_seconds")
            # ADA: augmentation probability, and the running sum/count of sign(D(real)).
            self.aug_p = tf.Variable(0.0 if self.ada else 1.0, dtype=tf.float32,
                                     trainable=False, name="aug_p")
            self.ada_acc = tf.Variable(tf.zeros([2], tf.float32), trainable=False,
                                       name="ada_acc")
        if self.ema_generator is not None:
            self.ema_generator.set_weights(self.generator.get_weights())
        objects: dict[str, Any] = dict(
            generator=self.generator, discriminator=self.discriminator,
            g_optimizer=self.g_optimizer, d_optimizer=self.d_optimizer, rng=self.rng,
            step=self.step, epoch=self.epoch, sums=self.sums, epoch_wall=self.epoch_wall,
            run_seconds=self.run_seconds, aug_p=self.aug_p, ada_acc=self.ada_acc)
        if self.ema_generator is not None:
            objects["ema_generator"] = self.ema_generator
        self.checkpoint = tf.train.Checkpoint(**objects)
        # autograph=False: the step has no tensor-dependent Python control flow, and converting
        # it (and Keras internals) took most of the tracing time.
        replica_fn = self._replica_step
        if t.xla:
            replica_fn = tf.function(replica_fn, jit_compile=True, autograph=False)
        self._replica_fn = replica_fn
        self._step_fn = tf.function(self._distributed_step, autograph=False)

    def _optimizer(self, lr: float, t: Any, name: str) -> keras.optimizers.Optimizer:
        opt = keras.optimizers.Adam(lr, beta_1=t.beta1, beta_2=t.beta2, name=name)
        return keras.optimizers.LossScaleOptimizer(opt) if self.mixed else opt

    @property
    def sample_generator(self) -> keras.Model:
        """The generator grids and exports use: the EMA one where the run keeps an EMA."""
        return self.ema_generator if self.ema_generator is not None else self.generator

    def generate(self, z: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Images [N, H, W, 1] in [-1, 1] from the sampled generator, in inference mode."""
        inputs = inputs_for(self.label_mode, z, labels)
        return np.asarray(self.sample_generator(inputs, training=False), dtype=np.float32)

    # ------------------------------------------------------------------------- model calls
    def _g(self, z: tf.Tensor, labels: tf.Tensor, training: bool = True) -> tf.Tensor:
        inputs = inputs_for(self.label_mode, z, labels)
        return tf.cast(self.generator(inputs, training=training), tf.float32)

    def _d(self, images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor | None]:
        """(real/fake logits [N, 1], class logits [N, C] or None without the class head)."""
        images = diff_augment(images, self.policies, self.rng,
                              self.aug_p if self.ada else None)
        inputs = images if self.label_mode == "none" else {IMAGE: images,
                                                            self.label_key: labels}
        out = self.discriminator(inputs, training=True)
        if self.aux_weight > 0:
            return tf.cast(out[0], tf.float32), tf.cast(out[1], tf.float32)
        return tf.cast(out, tf.float32), None

    def _class_loss(self, class_logits: tf.Tensor | None, labels: tf.Tensor) -> tf.Tensor:
        """Per-example auxiliary class loss [N, 1], shaped like the GAN loss of logits [N, 1] so
        the two add per example (0 without the head): softmax cross-entropy for index labels,
        per-finding sigmoid cross-entropy summed over findings for multi-hot."""
        if class_logits is None:
            return tf.zeros([tf.shape(labels)[0], 1], tf.float32)
        if self.label_mode == "multi-hot":
            bce = tf.nn.sigmoid_cross_entropy_with_logits(tf.cast(labels, tf.float32),
                                                          class_logits)
            return self.aux_weight * tf.reduce_sum(bce, axis=1, keepdims=True)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(tf.cast(labels, tf.int32),
                                                            class_logits)
        return self.aux_weight * ce[:, None]

    def _noise(self, n: int, real_labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Latent vectors and fake labels for ``n`` fakes."""
        z = self.rng.normal([n, self.recipe.model.latent_dim])
        if self.fake_labels == "uniform" and self.label_mode == "index":
            return z, self.rng.uniform([n], 0, self.num_classes, dtype=tf.int32)
        reps = -(-n // int(real_labels.shape[0]))
        pool = tf.concat([real_labels] * reps, axis=0)[:n]
        order = tf.argsort(self.rng.uniform([n]))
        return z, tf.gather(pool, order)

    def _apply(self, opt: keras.optimizers.Optimizer, tape: tf.GradientTape, loss: tf.Tensor,
               variables: list[Any]) -> None:
        grads = tape.gradient(loss, variables)
        # a loss may leave some variables out (the class head on the fake half-batch): skip them
        # rather than have Keras warn that their gradients do not exist
        opt.apply_gradients([(g, v) for g, v in zip(grads, variables, strict=True)
                             if g is not None])

    def _avg(self, per_example: tf.Tensor, global_batch: int) -> tf.Tensor:
        return tf.nn.compute_average_loss(tf.reshape(per_example, [-1]),
                                          global_batch_size=global_batch)

    # ------------------------------------------------------------------------------ the step
    def _replica_step(self, real: tf.Tensor, labels: tf.Tensor) -> dict[str, tf.Tensor]:
        n_real = int(real.shape[0])  # reals on this replica
        g_vars = self.generator.trainable_variables
        d_vars = self.discriminator.trainable_variables
        # 1. Discriminator.
        z, fake_labels = self._noise(n_real, labels)
        fake = tf.stop_gradient(self._g(z, fake_labels))
        if self.half:
            with tf.GradientTape() as tape:
                real_logits, real_classes = self._d(real, labels)
                loss_real = self._avg(d_loss_real(real_logits, self.loss)
                                      + self._class_loss(real_classes, labels), self.real_batch)
                scaled = self.d_optimizer.scale_loss(loss_real)
            self._apply(self.d_optimizer, tape, scaled, d_vars)
            with tf.GradientTape() as tape:
                fake_logits, _ = self._d(fake, fake_labels)
                loss_fake = self._avg(d_loss_fake(fake_logits, self.loss), self.real_batch)
                scaled = self.d_optimizer.scale_loss(loss_fake)
            self._apply(self.d_optimizer, tape, scaled, d_vars)
            d_loss = 0.5 * (loss_real + loss_fake)
        else:
            with tf.GradientTape() as tape:
                logits, classes = self._d(tf.concat([real, fake], 0),
                                          tf.concat([labels, fake_labels], 0))
                real_logits, fake_logits = logits[:n_real], logits[n_real:]
                # the class head learns from reals only, so fakes cannot teach it their mistakes
                real_classes = None if classes is None else classes[:n_real]
                d_loss = 0.5 * (self._avg(d_loss_real(real_logits, self.loss)
                                          + self._class_loss(real_classes, labels),
                                          self.real_batch)
                                + self._avg(d_loss_fake(fake_logits, self.loss), self.real_batch))
                scaled = self.d_optimizer.scale_loss(d_loss)
            self._apply(self.d_optimizer, tape, scaled, d_vars)
        acc_real = tf.reduce_sum(tf.cast(real_logits > 0, tf.float32)) / self.real_batch
        r_t = tf.reduce_sum(tf.sign(real_logits)) / self.real_batch  # ADA's overfitting signal
        acc_fake = tf.reduce_sum(tf.cast(fake_logits < 0, tf.float32)) / self.real_batch
        # 2. Generator, on a full batch of fresh latent/label pairs.
        z, g_labels = self._noise(self.local_batch, labels)
        with tf.GradientTape() as tape:
            logits, classes = self._d(self._g(z, g_labels), g_labels)
            g_loss = self._avg(g_loss_fn(logits, self.loss) + self._class_loss(classes, g_labels),
                               self.batch_size)
            scaled = self.g_optimizer.scale_loss(g_loss)
        self._apply(self.g_optimizer, tape, scaled, g_vars)
        return {"d_loss": d_loss, "g_loss": g_loss, "d_acc_real": acc_real,
                "d_acc_fake": acc_fake, "r_t": r_t}

    def _distributed_step(self, real: Any, labels: Any) -> dict[str, tf.Tensor]:
        per_replica = self.strategy.run(self._replica_fn, args=(real, labels))
        out = {k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
               for k, v in per_replica.items()}
        if self.ema_generator is not None:
            self._update_ema()
        if self.ada:
            self._update_ada(out["r_t"])
        self.step.assign_add(1)
        self.sums.assign_add(tf.cast(tf.stack([out["d_loss"], out["g_loss"], out["d_acc_real"],
                                               out["d_acc_fake"], out["r_t"], 1.0]), tf.float64))
        return out

    def _update_ema(self) -> None:
        """EMA of the trainable weights.

        The decay ramps up as min(decay, (1 + step) / (10 + step)), as in
        tf.train.ExponentialMovingAverage with num_updates, so a short run's EMA is not stuck
        near the random initial weights. Batch-norm statistics are not averaged or copied: they
        would belong to other weights. :meth:`standing_statistics` recomputes them for the
        averaged weights before the EMA generator is sampled or saved.
        """
        step = tf.cast(self.step, tf.float32)
        decay = tf.minimum(self.ema_decay, (1.0 + step) / (10.0 + step))
        for ema, w in zip(self.ema_generator.trainable_variables,
                          self.generator.trainable_variables, strict=True):
            ema.assign(decay * ema + (1.0 - decay) * tf.cast(w, ema.dtype))

    def _update_ada(self, r_t: tf.Tensor) -> None:
        """StyleGAN2-ADA's controller: every ADA_INTERVAL steps, move p by
        sign(mean r_t - target) * (images in the interval) / (ada_kimg * 1000), within [0, 1]."""
        t = self.recipe.train
        self.ada_acc.assign_add(tf.stack([tf.cast(r_t, tf.float32), 1.0]))
        due = tf.equal((self.step + 1) % ADA_INTERVAL, 0)
        mean_rt = self.ada_acc[0] / tf.maximum(self.ada_acc[1], 1.0)
        rate = self.batch_size * ADA_INTERVAL / (t.ada_kimg * 1000.0)
        moved = tf.clip_by_value(self.aug_p + tf.sign(mean_rt - t.ada_target) * rate, 0.0, 1.0)
        self.aug_p.assign(tf.where(due, moved, self.aug_p))
        self.ada_acc.assign(tf.where(due, tf.zeros([2]), self.ada_acc))

    def standing_statistics(self, label_pool: np.ndarray, batches: int = STANDING_BATCHES) -> None:
        """BigGAN's "standing statistics": recompute the EMA generator's batch-norm statistics
        from its own averaged weights, on fresh latents and labels drawn as in training (fixed
        by seed and step, so a resumed run gets the same numbers)."""
        if self.ema_generator is None:
            return
        rng = np.random.default_rng([self.recipe.train.seed, int(self.step.numpy()), 0xB17])
        n = self.batch_size
        latent = self.recipe.model.latent_dim

        def inputs() -> Iterator[Any]:
            for _ in range(batches):
                z = rng.standard_normal((n, latent)).astype(np.float32)
                if self.label_mode == "none":
                    yield z
                    continue
                if self.fake_labels == "uniform" and self.label_mode == "index":
                    labels = rng.integers(0, self.num_classes, n).astype(np.int32)
                else:
                    labels = label_pool[rng.integers(0, len(label_pool), n)]
                yield {Z: z, self.label_key: labels}

        from ..models import refresh_batchnorm_statistics

        refresh_batchnorm_statistics(self.ema_generator, inputs())

    def train_step(self, real: Any, labels: Any) -> dict[str, tf.Tensor]:
        """One full step (D then G then EMA) on a (distributed) batch of reals."""
        return self._step_fn(real, labels)

    def reset_epoch_sums(self) -> None:
        self.sums.assign(tf.zeros([6], tf.float64))
        self.epoch_wall.assign(0.0)

    def epoch_means(self) -> dict[str, float]:
        d_loss, g_loss, acc_real, acc_fake, r_t, steps = (float(v) for v in self.sums.numpy())
        steps = max(steps, 1.0)
        return {"d_acc_fake": acc_fake / steps, "d_acc_real": acc_real / steps,
                "d_loss": d_loss / steps, "g_loss": g_loss / steps, "r_t": r_t / steps,
                "aug_p": float(self.aug_p.numpy())}


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

    def summary(self) -> str:
        kimg = self.step * self.batch_size / 1000.0
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
                         f"{b['step'] * self.batch_size / 1000:.1f} kimg, two-sample accuracy "
                         f"vs val {b['c2st_val']:.3f}, near-copies {b['near_copy']:.1%}")
        samples = sorted((self.run_dir / "samples").glob("epoch_*.png"))
        if samples:
            lines.append(f"  samples: {samples[-1]}")
        lines.append(f"  next: cxraug export-onnx --run {self.run_dir} --out generator.onnx")
        return "\n".join(lines)


def _tb_metadata(plugin: str) -> bytes:
    from tensorflow.core.framework import summary_pb2

    return summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin)).SerializeToString()


def _tb_scalar(tag: str, value: float) -> None:
    """A TensorBoard scalar through the low-level tf.summary.write.

    ``tf.summary.scalar`` needs the tensorboard package, which is not a dependency; the event
    format (tensor + "scalars" plugin metadata) is what it would write.
    """
    tf.summary.write(tag, tf.constant(value, tf.float32), metadata=_tb_metadata("scalars"))


def _tb_image(tag: str, image: Any) -> None:
    """A TensorBoard image: [width, height, PNG bytes] with "images" plugin metadata."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    tensor = tf.constant([str(image.width).encode(), str(image.height).encode(),
                          buffer.getvalue()])
    tf.summary.write(tag, tensor, metadata=_tb_metadata("images"))


class _Diverged(Exception):
    pass


def _versions() -> dict[str, str]:
    return {"cxraug": __version__, "python": platform.python_version(),
            "tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__,
            "h5py": h5py.__version__}


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

    def __init__(self, paths: RunPaths, info: dict[str, Any], progress: bool) -> None:
        self.paths = paths
        self.info = info
        self.progress = progress
        self.bar: Any = None  # a progress bar while training runs

    def log(self, message: str, echo: bool = False) -> None:
        with open(self.paths.log, "a", encoding="utf-8") as handle:
            handle.write(f"{_now()} {message}\n")
        if echo or self.progress:
            (self.bar.write if self.bar is not None else print)(message, file=sys.stderr)

    def save_info(self, **changes: Any) -> None:
        self.info.update(changes)
        write_run_json(self.paths.root, self.info)


@contextlib.contextmanager
def _op_determinism(enabled: bool) -> Iterator[None]:
    """Deterministic kernels for the duration of a run, then the process setting as it was.

    The setting is process-wide; restoring it keeps other work in the same process (tests, a
    notebook) from inheriting it.
    """
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
) -> TrainResult:
    """Train ``recipe`` on the cache ``data`` into the run folder ``out`` (``cxraug train``).

    ``max_steps`` stops after that many steps in total (saving a checkpoint), for tests and
    benchmarks; the run can be resumed like an interrupted one. On CPU, kernels run
    deterministically so that ``--seed`` reproduces a run exactly.
    """
    on_gpu = bool(tf.config.list_physical_devices("GPU"))
    with _op_determinism(not on_gpu):
        return _train(recipe, data, out, resume, progress, max_steps, on_gpu)


def _train(recipe: Recipe, data: str | Path, out: str | Path, resume: bool, progress: bool,
           max_steps: int | None, on_gpu: bool) -> TrainResult:
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
    strategy = pick_strategy()
    trainer = GANTrainer(recipe, dataset.num_classes, strategy=strategy)

    out.mkdir(parents=True, exist_ok=True)
    paths.samples.mkdir(exist_ok=True)
    paths.checkpoints.mkdir(exist_ok=True)
    manager = tf.train.CheckpointManager(trainer.checkpoint, str(paths.checkpoints),
                                         max_to_keep=t.keep_checkpoints,
                                         checkpoint_name=CHECKPOINT_PREFIX)
    index = read_checkpoint_index(out)
    restored = None
    if resume and index:
        restored = latest_entry(index)
        trainer.checkpoint.restore(str(paths.checkpoints / restored["name"])).assert_consumed()

    if previous is None:
        info: dict[str, Any] = {
            "format": "cxraug-run-1", "recipe_name": recipe.name, "arch": recipe.model.arch,
            "class_names": dataset.class_names,
            "data": {"path": str(data.resolve()), "fingerprint": dataset.fingerprint,
                     "split": recipe.data.split, "images": dataset.n, "view": dataset.view,
                     "class_counts": dataset.class_counts.tolist(),
                     "skipped_multi_label": dataset.dropped_multi_label},
            "steps_per_epoch": dataset.steps_per_epoch, "batch_size": t.batch_size,
            "versions": _versions(), "started": _now(), "sessions": [],
        }
    else:
        info = dict(previous)
    info["sessions"] = list(info.get("sessions", [])) + [{
        "started": _now(), "command": shlex.join(sys.argv), "resumed_from":
        restored["name"] if restored else None, "replicas": trainer.replicas,
        "devices": [d.name for d in tf.config.list_logical_devices()], "versions": _versions()}]
    run = _Run(paths, info, progress)
    write_text_atomic(paths.recipe, recipe.to_toml())
    run.save_info(status="running", ended=None, epochs=t.epochs, error=None)
    if not paths.grid_z.is_file():
        with open(paths.grid_z, "wb") as handle:
            np.save(handle, grid_latents(recipe.model.latent_dim, t.grid_columns, t.seed))
    grid_z = np.load(paths.grid_z)
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
    epochs_done = int(trainer.epoch.numpy())
    step = int(trainer.step.numpy())
    in_epoch = step - epochs_done * spe
    # in_epoch == spe: stopped after an epoch's last step, before its metrics row was written
    if in_epoch < 0 or in_epoch > spe:
        raise CxrError(f"--resume: checkpoint step {step} does not fit {spe} steps per epoch; "
                       "the run folder does not match this cache or batch size")
    label_pool = dataset.multi_hot.astype(np.float32) if trainer.label_key == LABELS else \
        dataset.labels.astype(np.int32)
    tracker = None
    if t.eval_every:
        tracker = RealismTracker(data, label_pool, recipe.model.latent_dim, t.eval_images,
                                 t.seed)
        best = [e for e in read_checkpoint_index(out) if e.get("reason") == "best"]
        tracker.best = best[-1]["c2st_val"] if best else None
    metrics = _read_metrics(paths.metrics, epochs_done)
    writer = tf.summary.create_file_writer(str(paths.tensorboard))
    session_start = time.perf_counter()
    seconds_before = float(trainer.run_seconds.numpy())
    last_ckpt = restored["name"] if restored else None
    status = "running"

    def run_seconds() -> float:
        return seconds_before + time.perf_counter() - session_start

    def out_of_time() -> bool:
        return t.minutes > 0 and run_seconds() >= 60.0 * t.minutes

    def write_index(entries: list[dict[str, Any]]) -> None:
        write_text_atomic(paths.checkpoint_index, _json(entries))

    def save_checkpoint(reason: str) -> str:
        nonlocal last_ckpt
        trainer.standing_statistics(label_pool)
        trainer.run_seconds.assign(run_seconds())
        s, e = int(trainer.step.numpy()), int(trainer.epoch.numpy())
        prefix = manager.save(checkpoint_number=s)
        name = Path(prefix).name
        kept = {Path(p).name for p in manager.checkpoints}
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
        trainer.run_seconds.assign(run_seconds())
        s = int(trainer.step.numpy())
        e = s // spe  # epochs completed (the counter moves only once the epoch's row is written)
        name = f"{BEST_PREFIX}-{s}"
        trainer.checkpoint.write(str(paths.checkpoints / name))
        old = [x for x in read_checkpoint_index(out) if x.get("reason") == "best"]
        entries = [x for x in read_checkpoint_index(out) if x.get("reason") != "best"]
        entries.append({"name": name, "epoch": e, "step": s, "saved": _now(), "reason": "best",
                        **{k: round(v, 5) for k, v in result.items()}})
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
            batches = strategy.experimental_distribute_dataset(dataset.dataset(epoch, in_epoch))
            tick = time.perf_counter()
            for real, labels in batches:
                values = trainer.train_step(real, labels)
                losses = {k: float(v) for k, v in values.items()}
                step = int(trainer.step.numpy())
                if not all(math.isfinite(v) for v in losses.values()):
                    bad = ", ".join(f"{k}={v}" for k, v in losses.items() if not math.isfinite(v))
                    raise _Diverged(f"training diverged at epoch {epoch + 1}, step {step}: "
                                    f"non-finite {bad}")
                run.bar.update(1)
                run.bar.set_postfix(epoch=epoch + 1, d=f"{losses['d_loss']:.3f}",
                                    g=f"{losses['g_loss']:.3f}", refresh=False)
                if step >= limit or out_of_time():
                    break
            trainer.epoch_wall.assign_add(time.perf_counter() - tick)
            complete = step == (epoch + 1) * spe
            budget_spent = step >= end_step or out_of_time()
            if not complete and not budget_spent:  # max_steps inside an epoch
                save_checkpoint("max_steps")
                status = "stopped"
                break
            wall = float(trainer.epoch_wall.numpy())
            done_in_epoch = step - epoch * spe
            row = {"epoch": epoch + 1, "step": step, "kimg": step * t.batch_size / 1000.0,
                   **trainer.epoch_means(), "wall_s": wall,
                   "img_per_s": done_in_epoch * t.batch_size / max(wall, 1e-9)}
            last = budget_spent
            if (epoch + 1) % t.sample_every == 0 or last:
                trainer.standing_statistics(label_pool)
                images, names = generate_grid(trainer.sample_generator, grid_z,
                                              dataset.class_names, trainer.label_mode)
                grid = draw_grid(images, names)
                save_png(grid, paths.sample(epoch + 1))
                with writer.as_default(step=step):
                    _tb_image("samples", grid)
            if tracker is not None and ((epoch + 1) % t.eval_every == 0 or last):
                trainer.standing_statistics(label_pool)
                result = tracker.measure(trainer.generate)
                row.update(result)
                best = tracker.is_best(result)
                if best:
                    save_best(result)
                run.log(f"realism at {row['kimg']:.1f} kimg: two-sample accuracy vs val "
                        f"{result['c2st_val']:.3f}, near-copies {result['near_copy']:.1%}, "
                        f"diversity {result['diversity']:.2f}{' (best so far)' if best else ''}")
            metrics.append(row)
            _write_metrics(paths.metrics, metrics)
            if complete:  # only now: a Ctrl-C before this point redoes the row on --resume
                trainer.epoch.assign(epoch + 1)
                in_epoch = 0
            with writer.as_default(step=step):
                for key in METRIC_COLUMNS[3:]:
                    if key in row:
                        _tb_scalar(key, row[key])
            run.log(f"epoch {epoch + 1}/{n_epochs} step {step} ({row['kimg']:.1f} kimg): "
                    f"d_loss {row['d_loss']:.4f} g_loss {row['g_loss']:.4f} d_acc_real "
                    f"{row['d_acc_real']:.3f} d_acc_fake {row['d_acc_fake']:.3f} r_t "
                    f"{row['r_t']:.2f} p {row['aug_p']:.3f} {row['img_per_s']:.1f} img/s")
            stop = max_steps is not None and step >= max_steps
            if (epoch + 1) % t.checkpoint_every == 0 or last or stop:
                save_checkpoint("budget" if last and not complete else "epoch")
            if last:
                if out_of_time() and step < end_step:
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
        name = save_checkpoint("interrupt")
        run.log(f"interrupted at step {int(trainer.step.numpy())}; saved {name}", echo=True)
        run.save_info(status="interrupted", ended=_now())
        raise
    except _Diverged as exc:
        run.bar.close()
        keep = (f"the last good checkpoint {last_ckpt} is kept" if last_ckpt
                else "no checkpoint had been saved yet")
        message = (f"{exc}; nothing from this step on was saved and {keep} in "
                   f"{paths.checkpoints}; start a new run with lower train.d_lr/train.g_lr "
                   "(--set train.d_lr=1e-4) or train.loss=\"hinge\"")
        run.log(message)
        run.save_info(status="failed", ended=_now(), error=str(exc))
        raise CxrError(message) from None
    except BaseException as exc:
        run.bar.close()
        run.log(f"failed: {type(exc).__name__}: {exc}")
        run.save_info(status="failed", ended=_now(), error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        writer.close()
    run.bar.close()
    wall = time.perf_counter() - session_start
    run.save_info(status=status, ended=_now(), epochs_done=int(trainer.epoch.numpy()),
                  step=int(trainer.step.numpy()), kimg=int(trainer.step.numpy()) * t.batch_size
                  / 1000.0, run_seconds=run_seconds())
    run.log(f"{status}: step {int(trainer.step.numpy())}/{end_step} "
            f"({int(trainer.step.numpy()) * t.batch_size / 1000:.1f} kimg) in {wall:.1f} s")
    return TrainResult(run_dir=out, status=status, epochs_done=int(trainer.epoch.numpy()),
                       epochs=n_epochs, step=int(trainer.step.numpy()), metrics=metrics,
                       wall_s=wall, checkpoint=last_ckpt, end_step=end_step,
                       batch_size=t.batch_size)


def planned_steps(t: Any, steps_per_epoch: int) -> int:
    """Steps of the whole run: ``train.kimg`` thousand images when set, else ``train.epochs``."""
    if t.kimg > 0:
        return max(1, math.ceil(t.kimg * 1000.0 / t.batch_size))
    return t.epochs * steps_per_epoch


def _json(obj: Any) -> str:
    import json

    return json.dumps(obj, indent=2) + "\n"
