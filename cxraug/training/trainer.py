"""What the TensorFlow and the JAX trainers share: the recipe's step settings, the objectives
(losses written once with ``keras.ops``), the noise, EMA and ADA arithmetic, sampling and
standing statistics. Each backend's module adds only its step and its state:
:mod:`.step_tf` (``tf.GradientTape``, ``tf.distribute``, ``tf.train.Checkpoint``) and
:mod:`.step_jax` (``jax.value_and_grad`` over ``stateless_call``, jitted; ``.npz`` checkpoints).

One step (both backends):

1. **D update.** Normally one Adam step on a batch of reals and an equally large batch of fakes.
   With ``train.d_half_batches`` (the paper) two Adam steps instead: one on half a batch of reals,
   then one on half a batch of fakes, exactly like its two ``train_on_batch`` calls.
2. **G update.** One Adam step on a full batch of fresh latent/label pairs, D fixed.
3. **EMA** of the generator's weights (``train.ema_decay`` > 0); **ADA** moves its probability.

Fake labels (``train.fake_labels``): ``uniform`` draws every class equally often (the paper);
``data`` reuses the real batch's labels in shuffled order, so real and fake label frequencies match
(multi-hot models always do this: there is no "uniform" over label combinations).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import ops

from ..contract import IMAGE, LABEL, Z, inputs_for, label_input, label_mode_of
from ..diffaugment import diff_augment
from ..errors import CxrError
from ..losses import LOSSES, PenaltyInputs, active_regularizers, class_loss
from ..recipe import Recipe
from .protocol import Checkpoints

#: ADA adjusts its augmentation probability every this many steps (StyleGAN2-ADA: 4).
ADA_INTERVAL = 4
#: Batches of latents over which the EMA generator's batch-norm statistics are recomputed.
STANDING_BATCHES = 16
#: Per-step numbers summed over an epoch on the device (the last one counts steps).
SUM_KEYS = ("d_loss", "g_loss", "d_acc_real", "d_acc_fake", "r_t", "steps")

# A D call: (images, labels) -> (real/fake logits [N, 1] float32, class logits [N, C] or None)
DCall = Callable[[Any, Any], tuple[Any, Any]]


@contextlib.contextmanager
def dtype_policy(name: str | None) -> Iterator[None]:
    """Build models under a mixed policy without leaving the process-wide policy changed."""
    previous = keras.mixed_precision.dtype_policy()
    if name:
        keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


class TrainerBase(ABC):
    """Settings of one run's step, and the backend-neutral pieces of it: a :class:`.Trainer`
    (the run driver's contract, :mod:`.protocol`) except for what only a backend knows, its
    state, its step and its checkpoints (the abstract methods below)."""

    backend_name = ""

    def __init__(self, recipe: Recipe, num_classes: int, replicas: int = 1) -> None:
        m, t = recipe.model, recipe.train
        self.recipe = recipe
        self.replicas = int(replicas)
        self.num_classes = int(num_classes)
        self.loss = LOSSES[t.loss]
        self.half = bool(t.d_half_batches)
        self.policies = list(t.diffaugment)
        self.ema_decay = float(t.ema_decay)
        self.aux_weight = float(t.aux_class_weight)
        # D's penalties (cxraug/losses.py REGULARIZERS) the recipe weighs above 0
        self.regularizers = active_regularizers(t)
        self.needs_real_grads = any(reg.needs_real_grads for reg, _ in self.regularizers)
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

    def _build_models(self) -> None:
        from .. import models

        m = self.recipe.model
        self.generator = models.build_generator(m, self.num_classes)
        self.discriminator = models.build_discriminator(
            m, self.num_classes, class_head=self.aux_weight > 0)
        self.ema_generator = (models.build_generator(m, self.num_classes)
                              if self.ema_decay > 0 else None)

    def _adam(self, lr: float) -> keras.optimizers.Optimizer:
        t = self.recipe.train
        return keras.optimizers.Adam(lr, beta_1=t.beta1, beta_2=t.beta2)

    # ----------------------------------------------------------------------------- sampling
    @property
    def sample_generator(self) -> keras.Model:
        """The generator grids and exports use: the EMA one where the run keeps an EMA."""
        return self.ema_generator if self.ema_generator is not None else self.generator

    def generate(self, z: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Images [N, H, W, 1] in [-1, 1] from the sampled generator, in inference mode."""
        inputs = inputs_for(self.label_mode, z, labels)
        return np.asarray(self.sample_generator(inputs, training=False), dtype=np.float32)

    def standing_statistics(self, label_pool: np.ndarray, batches: int = STANDING_BATCHES) -> None:
        """BigGAN's "standing statistics": recompute the EMA generator's batch-norm statistics
        from its own averaged weights, on fresh latents and labels drawn as in training (fixed
        by seed and step, so a resumed run gets the same numbers)."""
        if self.ema_generator is None:
            return
        rng = np.random.default_rng([self.recipe.train.seed, self.step_count(), 0xB17])
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

    # -------------------------------------------------------------------- step, neutral parts
    def noise(self, source: Any, n: int, real_labels: Any) -> tuple[Any, Any]:
        """Latent vectors and fake labels for ``n`` fakes, drawn from ``source``."""
        z = source.normal([n, self.recipe.model.latent_dim])
        if self.fake_labels == "uniform" and self.label_mode == "index":
            return z, source.uniform([n], 0, self.num_classes, dtype="int32")
        reps = -(-n // int(real_labels.shape[0]))
        pool = ops.concatenate([real_labels] * reps, axis=0)[:n]
        order = ops.argsort(source.uniform([n], 0.0, 1.0, dtype="float32"))
        return z, ops.take(pool, order, axis=0)

    def d_inputs(self, images: Any, labels: Any, source: Any, aug_p: Any) -> Any:
        """D's input for a batch: DiffAugment applied (ADA's probability when ADA is on)."""
        images = diff_augment(images, self.policies, source, aug_p if self.ada else None)
        return images if self.label_mode == "none" else {IMAGE: images, self.label_key: labels}

    def split_d_output(self, out: Any) -> tuple[Any, Any]:
        if self.aux_weight > 0:
            return ops.cast(out[0], "float32"), ops.cast(out[1], "float32")
        return ops.cast(out, "float32"), None

    def g_inputs(self, z: Any, labels: Any) -> Any:
        return inputs_for(self.label_mode, z, labels)

    @staticmethod
    def average(per_example: Any, global_batch: int) -> Any:
        """Sum over this replica's examples / the global batch (``compute_average_loss``)."""
        return ops.sum(ops.reshape(ops.cast(per_example, "float32"), (-1,))) / global_batch

    def _class_loss(self, class_logits: Any, labels: Any) -> Any:
        return class_loss(class_logits, labels, self.label_mode, self.aux_weight)

    def d_real_loss(self, d_call: DCall, real: Any, labels: Any) -> tuple[Any, Any]:
        logits, classes = d_call(real, labels)
        return self.average(self.loss.d_real(logits) + self._class_loss(classes, labels),
                            self.real_batch), logits

    def d_fake_loss(self, d_call: DCall, fake: Any, fake_labels: Any) -> tuple[Any, Any]:
        logits, _ = d_call(fake, fake_labels)
        return self.average(self.loss.d_fake(logits), self.real_batch), logits

    def d_full_loss(self, d_call: DCall, real: Any, labels: Any, fake: Any,
                    fake_labels: Any) -> tuple[Any, Any, Any]:
        """D's loss on reals and fakes in one call: (loss, real logits, fake logits)."""
        n_real = int(real.shape[0])
        logits, classes = d_call(ops.concatenate([real, fake], 0),
                                 ops.concatenate([labels, fake_labels], 0))
        real_logits, fake_logits = logits[:n_real], logits[n_real:]
        # the class head learns from reals only, so fakes cannot teach it their mistakes
        real_classes = None if classes is None else classes[:n_real]
        loss = 0.5 * (self.average(self.loss.d_real(real_logits)
                                   + self._class_loss(real_classes, labels), self.real_batch)
                      + self.average(self.loss.d_fake(fake_logits), self.real_batch))
        return loss, real_logits, fake_logits

    def d_penalty(self, inputs: PenaltyInputs) -> Any:
        """The sum of the active regularizers' penalties, each ``coefficient(weight)`` x the
        mean over the reals of its per-example values. Each backend fills ``inputs`` from its
        full-batch D step's forward pass (``real_grads`` from its own autodiff when
        :attr:`needs_real_grads`), so no extra augmentation noise is drawn."""
        total = None
        for reg, weight in self.regularizers:
            term = reg.coefficient(weight) * self.average(reg.per_example(inputs),
                                                          self.real_batch)
            total = term if total is None else total + term
        return total

    def g_loss(self, d_call: DCall, fake: Any, g_labels: Any) -> Any:
        logits, classes = d_call(fake, g_labels)
        return self.average(self.loss.g(logits) + self._class_loss(classes, g_labels),
                            self.batch_size)

    def d_stats(self, real_logits: Any, fake_logits: Any) -> tuple[Any, Any, Any]:
        """(accuracy on reals, r_t = ADA's overfitting signal, accuracy on fakes)."""
        acc_real = ops.sum(ops.cast(real_logits > 0, "float32")) / self.real_batch
        r_t = ops.sum(ops.sign(real_logits)) / self.real_batch
        acc_fake = ops.sum(ops.cast(fake_logits < 0, "float32")) / self.real_batch
        return acc_real, r_t, acc_fake

    def ema_decay_at(self, step: Any) -> Any:
        """The decay ramps up as min(decay, (1 + step) / (10 + step)), as in
        tf.train.ExponentialMovingAverage with num_updates, so a short run's EMA is not stuck
        near the random initial weights. Batch-norm statistics are not averaged:
        :meth:`standing_statistics` recomputes them for the averaged weights."""
        step = ops.cast(step, "float32")
        return ops.minimum(self.ema_decay, (1.0 + step) / (10.0 + step))

    def ada_update(self, aug_p: Any, ada_acc: Any, r_t: Any, step: Any) -> tuple[Any, Any]:
        """StyleGAN2-ADA's controller: every ADA_INTERVAL steps, move p by
        sign(mean r_t - target) * (images in the interval) / (ada_kimg * 1000), within [0, 1].
        Returns the new (p, accumulator)."""
        t = self.recipe.train
        acc = ada_acc + ops.stack([ops.cast(r_t, "float32"), ops.ones((), "float32")])
        due = ops.equal((step + 1) % ADA_INTERVAL, 0)
        mean_rt = acc[0] / ops.maximum(acc[1], 1.0)
        rate = self.batch_size * ADA_INTERVAL / (t.ada_kimg * 1000.0)
        moved = ops.clip(aug_p + ops.sign(mean_rt - t.ada_target) * rate, 0.0, 1.0)
        return ops.where(due, moved, aug_p), ops.where(due, ops.zeros((2,), "float32"), acc)

    # ------------------------------------------------------------- what the run driver uses
    # (documented in :class:`.protocol.Trainer`; what only a backend knows is abstract here)
    process_index = 0
    process_count = 1

    @property
    def is_chief(self) -> bool:
        return self.process_index == 0

    def agree(self, flag: bool) -> bool:
        return flag  # one process: its own flag

    def barrier(self, name: str) -> None:
        return None  # one process: nothing to wait for

    def epoch_means(self) -> dict[str, float]:
        sums, aug_p = self._sums_and_p()
        d_loss, g_loss, acc_real, acc_fake, r_t, steps = (float(v) for v in sums)
        steps = max(steps, 1.0)
        return {"d_acc_fake": acc_fake / steps, "d_acc_real": acc_real / steps,
                "d_loss": d_loss / steps, "g_loss": g_loss / steps, "r_t": r_t / steps,
                "aug_p": aug_p}

    # each backend's trainer implements these: its state, its checkpoints, its step
    @abstractmethod
    def _sums_and_p(self) -> tuple[np.ndarray, float]:
        """The epoch's running sums (:data:`SUM_KEYS`) and ADA's probability, read back."""

    @abstractmethod
    def step_count(self) -> int: ...

    @abstractmethod
    def epoch_count(self) -> int: ...

    @abstractmethod
    def set_epoch(self, epoch: int) -> None: ...

    @abstractmethod
    def run_seconds(self) -> float: ...

    @abstractmethod
    def set_run_seconds(self, seconds: float) -> None: ...

    @abstractmethod
    def add_epoch_wall(self, seconds: float) -> None: ...

    @abstractmethod
    def epoch_wall_s(self) -> float: ...

    @abstractmethod
    def reset_epoch_sums(self) -> None: ...

    @abstractmethod
    def devices(self) -> list[str]: ...

    @abstractmethod
    def checkpoints(self, directory: Path, keep: int, prefix: str) -> Checkpoints: ...

    @abstractmethod
    def batches(self, dataset: Any, epoch: int, start_step: int) -> Any: ...

    @abstractmethod
    def train_step(self, real: Any, labels: Any) -> dict[str, Any]: ...

    @abstractmethod
    def last_losses(self) -> dict[str, float]: ...

    @abstractmethod
    def first_bad_step(self) -> tuple[int, dict[str, float]] | None: ...
