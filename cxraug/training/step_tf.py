"""The TensorFlow trainer: a ``tf.GradientTape`` step under a ``tf.distribute`` strategy
(MirroredStrategy across GPUs), state in ``tf.Variable``s, ``tf.train.Checkpoint`` files.

All noise (latent vectors, fake labels, DiffAugment parameters) comes from one
``tf.random.Generator`` whose state is checkpointed with the weights, the optimizers, the step and
the epoch's running sums, so a run stopped at any step and resumed continues exactly. This module
is the one owner of that checkpoint format: :func:`load_generator_weights` reads a generator back
from it for export and sampling (:func:`.run.load_generator`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ..losses import PenaltyInputs
from ..recipe import Recipe
from .trainer import SUM_KEYS, TrainerBase, dtype_policy


def pick_strategy(devices: int | None = None) -> tf.distribute.Strategy:
    """Every visible GPU (or the first ``devices``) through MirroredStrategy when there are
    several; else the default strategy. Several machines (``TF_CONFIG`` with more than one
    worker) are refused: every worker would write the same run folder."""
    import json
    import os

    from ..errors import CxrError

    cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
    if len(cluster.get("worker", [])) + len(cluster.get("chief", [])) > 1:
        raise CxrError("TF_CONFIG names several workers: cxraug trains across machines on "
                       "JAX, not with TensorFlow's MultiWorkerMirroredStrategy; unset TF_CONFIG "
                       "and run KERAS_BACKEND=jax cxraug train ... --coordinator host:port "
                       "(README: Training on a cluster)")
    gpus = tf.config.list_logical_devices("GPU")[:devices]
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy([g.name for g in gpus])
    return tf.distribute.get_strategy()


def load_generator_weights(generator: keras.Model, prefix: str, use_ema: bool,
                           where: str) -> None:
    """The generator's weights from a TensorFlow run's checkpoint ``prefix`` (the objects
    :class:`TFTrainer` names ``generator`` and ``ema_generator``) into the Keras ``generator``
    (the EMA ones where ``use_ema``), for export and sampling."""
    from ..errors import CxrError

    objects: dict[str, Any] = {"generator": generator}
    if use_ema:
        objects["ema_generator"] = generator
        objects.pop("generator")
    ckpt = tf.train.Checkpoint(**objects)
    try:
        # read (not restore): a best-<step> checkpoint written before the first regular save has
        # no save counter, which restore() would create and then miss
        status = ckpt.read(prefix).expect_partial()
        status.assert_existing_objects_matched()
    except (tf.errors.OpError, ValueError, AssertionError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CxrError(f"cannot restore {where}: {first}; "
                       "the checkpoint does not match the run's recipe.toml") from None


class TFTrainer(TrainerBase):
    """Networks, optimizers, noise and the compiled step of one run on TensorFlow."""

    backend_name = "tensorflow"

    def __init__(self, recipe: Recipe, num_classes: int,
                 strategy: tf.distribute.Strategy | None = None) -> None:
        self.strategy = strategy or pick_strategy()
        super().__init__(recipe, num_classes, int(self.strategy.num_replicas_in_sync))
        t = recipe.train
        with dtype_policy("mixed_float16" if self.mixed else None), self.strategy.scope():
            self._build_models()
            self.g_optimizer = self._optimizer(t.g_lr, "g_adam")
            self.d_optimizer = self._optimizer(t.d_lr, "d_adam")
            self.g_optimizer.build(self.generator.trainable_variables)
            self.d_optimizer.build(self.discriminator.trainable_variables)
            self.rng = tf.random.Generator.from_seed(t.seed)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
            self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
            # Running sums of the current epoch (SUM_KEYS).
            self.sums = tf.Variable(tf.zeros([6], tf.float64), trainable=False, name="sums")
            self.epoch_wall = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="wall")
            # Wall-clock seconds of the run so far (train.minutes), over resumed sessions.
            self.run_seconds_var = tf.Variable(0.0, dtype=tf.float64, trainable=False,
                                               name="run_seconds")
            # ADA: augmentation probability, and the running sum/count of sign(D(real)).
            self.aug_p = tf.Variable(0.0 if self.ada else 1.0, dtype=tf.float32,
                                     trainable=False, name="aug_p")
            self.ada_acc = tf.Variable(tf.zeros([2], tf.float32), trainable=False,
                                       name="ada_acc")
            # Not checkpointed: the first step whose numbers were not finite, and those numbers
            # (checked on the device; the driver reads it every few steps, not every step).
            self.bad_step = tf.Variable(-1, dtype=tf.int64, trainable=False, name="bad_step")
            self.bad_values = tf.Variable(tf.zeros([5], tf.float32), trainable=False,
                                          name="bad_values")
        if self.ema_generator is not None:
            self.ema_generator.set_weights(self.generator.get_weights())
        objects: dict[str, Any] = dict(
            generator=self.generator, discriminator=self.discriminator,
            g_optimizer=self.g_optimizer, d_optimizer=self.d_optimizer, rng=self.rng,
            step=self.step, epoch=self.epoch, sums=self.sums, epoch_wall=self.epoch_wall,
            run_seconds=self.run_seconds_var, aug_p=self.aug_p, ada_acc=self.ada_acc)
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
        self._last: dict[str, tf.Tensor] = {}

    def _optimizer(self, lr: float, name: str) -> keras.optimizers.Optimizer:
        t = self.recipe.train
        opt = keras.optimizers.Adam(lr, beta_1=t.beta1, beta_2=t.beta2, name=name)
        return keras.optimizers.LossScaleOptimizer(opt) if self.mixed else opt

    # ------------------------------------------------------------------------------ the step
    def _g(self, z: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        return tf.cast(self.generator(self.g_inputs(z, labels), training=True), tf.float32)

    def _d(self, images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor | None]:
        out = self.discriminator(self.d_inputs(images, labels, self.rng, self.aug_p),
                                 training=True)
        return self.split_d_output(out)

    def _apply(self, opt: keras.optimizers.Optimizer, tape: tf.GradientTape, loss: tf.Tensor,
               variables: list[Any]) -> None:
        grads = tape.gradient(loss, variables)
        # a loss may leave some variables out (the class head on the fake half-batch): skip them
        # rather than have Keras warn that their gradients do not exist
        opt.apply_gradients([(g, v) for g, v in zip(grads, variables, strict=True)
                             if g is not None])

    def _replica_step(self, real: tf.Tensor, labels: tf.Tensor) -> dict[str, tf.Tensor]:
        g_vars = self.generator.trainable_variables
        d_vars = self.discriminator.trainable_variables
        # 1. Discriminator.
        z, fake_labels = self.noise(self.rng, int(real.shape[0]), labels)
        fake = tf.stop_gradient(self._g(z, fake_labels))
        if self.half:
            with tf.GradientTape() as tape:
                loss_real, real_logits = self.d_real_loss(self._d, real, labels)
                scaled = self.d_optimizer.scale_loss(loss_real)
            self._apply(self.d_optimizer, tape, scaled, d_vars)
            with tf.GradientTape() as tape:
                loss_fake, fake_logits = self.d_fake_loss(self._d, fake, fake_labels)
                scaled = self.d_optimizer.scale_loss(loss_fake)
            self._apply(self.d_optimizer, tape, scaled, d_vars)
            d_loss = 0.5 * (loss_real + loss_fake)
        else:
            with tf.GradientTape() as tape:
                with tf.GradientTape(watch_accessed_variables=False) as on_reals:
                    on_reals.watch(real)
                    d_loss, real_logits, fake_logits = self.d_full_loss(
                        self._d, real, labels, fake, fake_labels)
                    real_sum = tf.reduce_sum(real_logits)
                if self.regularizers:  # penalties on the same forward pass
                    grads = (on_reals.gradient(real_sum, real) if self.needs_real_grads
                             else None)
                    d_loss += self.d_penalty(PenaltyInputs(real, labels, real_logits, grads,
                                                           self._d))
                scaled = self.d_optimizer.scale_loss(d_loss)
            self._apply(self.d_optimizer, tape, scaled, d_vars)
        acc_real, r_t, acc_fake = self.d_stats(real_logits, fake_logits)
        # 2. Generator, on a full batch of fresh latent/label pairs.
        z, g_labels = self.noise(self.rng, self.local_batch, labels)
        with tf.GradientTape() as tape:
            g_loss = self.g_loss(self._d, self._g(z, g_labels), g_labels)
            scaled = self.g_optimizer.scale_loss(g_loss)
        self._apply(self.g_optimizer, tape, scaled, g_vars)
        return {"d_loss": d_loss, "g_loss": g_loss, "d_acc_real": acc_real,
                "d_acc_fake": acc_fake, "r_t": r_t}

    def _distributed_step(self, real: Any, labels: Any) -> dict[str, tf.Tensor]:
        per_replica = self.strategy.run(self._replica_fn, args=(real, labels))
        out = {k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
               for k, v in per_replica.items()}
        if self.ema_generator is not None:
            decay = self.ema_decay_at(self.step)
            for ema, w in zip(self.ema_generator.trainable_variables,
                              self.generator.trainable_variables, strict=True):
                ema.assign(decay * ema + (1.0 - decay) * tf.cast(w, ema.dtype))
        if self.ada:
            p, acc = self.ada_update(self.aug_p, self.ada_acc, out["r_t"], self.step)
            self.aug_p.assign(p)
            self.ada_acc.assign(acc)
        values = tf.cast(tf.stack([out[k] for k in SUM_KEYS[:5]]), tf.float32)
        finite = tf.reduce_all(tf.math.is_finite(values))
        first = (self.bad_step < 0) & tf.logical_not(finite)
        self.bad_step.assign(tf.where(first, self.step + 1, self.bad_step))
        self.bad_values.assign(tf.where(first, values, self.bad_values))
        self.step.assign_add(1)
        self.sums.assign_add(tf.concat([tf.cast(values, tf.float64), [1.0]], 0))
        return out

    def train_step(self, real: Any, labels: Any) -> dict[str, Any]:
        """One full step (D then G then EMA/ADA) on a (distributed) batch of reals. Returns the
        step's numbers as device tensors; nothing is read back (see :meth:`first_bad_step`)."""
        self._last = self._step_fn(real, labels)
        return self._last

    # ------------------------------------------------------------- what the run driver uses
    def batches(self, dataset: Any, epoch: int, start_step: int) -> Any:
        return self.strategy.experimental_distribute_dataset(dataset.dataset(epoch, start_step))

    def last_losses(self) -> dict[str, float]:
        return {k: float(v) for k, v in self._last.items()}

    def first_bad_step(self) -> tuple[int, dict[str, float]] | None:
        step = int(self.bad_step.numpy())
        if step < 0:
            return None
        return step, dict(zip(SUM_KEYS[:5], (float(v) for v in self.bad_values.numpy()),
                              strict=True))

    def step_count(self) -> int:
        return int(self.step.numpy())

    def epoch_count(self) -> int:
        return int(self.epoch.numpy())

    def set_epoch(self, epoch: int) -> None:
        self.epoch.assign(epoch)

    def run_seconds(self) -> float:
        return float(self.run_seconds_var.numpy())

    def set_run_seconds(self, seconds: float) -> None:
        self.run_seconds_var.assign(seconds)

    def add_epoch_wall(self, seconds: float) -> None:
        self.epoch_wall.assign_add(seconds)

    def epoch_wall_s(self) -> float:
        return float(self.epoch_wall.numpy())

    def reset_epoch_sums(self) -> None:
        self.sums.assign(tf.zeros([6], tf.float64))
        self.epoch_wall.assign(0.0)

    def _sums_and_p(self) -> tuple[np.ndarray, float]:
        return self.sums.numpy(), float(self.aug_p.numpy())

    def devices(self) -> list[str]:
        return [d.name for d in tf.config.list_logical_devices()]

    def checkpoints(self, directory: Path, keep: int, prefix: str) -> TFCheckpoints:
        return TFCheckpoints(self.checkpoint, directory, keep, prefix)


class TFCheckpoints:
    """``tf.train.Checkpoint`` files of a run: numbered ones (the newest ``keep`` kept) and
    named ones written outside that rotation (best-<step>)."""

    def __init__(self, checkpoint: tf.train.Checkpoint, directory: Path, keep: int,
                 prefix: str) -> None:
        self.checkpoint, self.directory = checkpoint, directory
        self.manager = tf.train.CheckpointManager(checkpoint, str(directory), max_to_keep=keep,
                                                  checkpoint_name=prefix)

    def save(self, number: int) -> str:
        return Path(self.manager.save(checkpoint_number=number)).name

    def kept(self) -> set[str]:
        return {Path(p).name for p in self.manager.checkpoints}

    def restore(self, name: str) -> None:
        self.checkpoint.restore(str(self.directory / name)).assert_consumed()

    def write(self, name: str) -> None:
        self.checkpoint.write(str(self.directory / name))
