"""The JAX trainer: ``jax.value_and_grad`` over Keras ``stateless_call``, the whole step jitted
(XLA), state as arrays carried from step to step, ``.npz`` checkpoints (their format:
:mod:`.jax_checkpoint`). No TensorFlow: this is the path that runs on a GPU machine with JAX only.

The state (:class:`StepState`: weights, batch-norm and spectral-norm statistics, optimizer
slots, EMA weights, the PRNG key, step, ADA's probability, the epoch's sums) lives on the device
between steps; the step is a pure jitted function ``(state, real, labels) -> (state, numbers)``
laid out like the TensorFlow step (D's update, G's, then EMA, ADA and the sums), each D update
taking D's part of the state (:class:`DParts`) and returning the next. The run driver reads
numbers back every few steps. Several devices of one machine: the weights are
replicated and each batch is split across the devices along its first axis (``jax.sharding``);
XLA then computes what one device computes on the whole batch (batch-norm statistics included),
so a run's numbers do not depend on the number of devices (to float rounding). Several
processes (``jax.distributed``, one per machine, see :mod:`.cluster`): the same, over all devices
of all processes; each process reads and feeds only its own share of every batch.

Differences from the TensorFlow step, on purpose: ``train.mixed_precision`` means bfloat16 here
(no loss scaling needed; float16 is TensorFlow's GPU path); in the paper's half-batch mode a
variable that a loss leaves out (the class head on the fake half) still gets Adam's update from
its moments, where TensorFlow skips it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import keras
import numpy as np

from ..diffaugment import KeyNoise
from ..losses import PenaltyInputs
from ..recipe import Recipe
from .jax_checkpoint import JaxCheckpoints, pack, unpack
from .trainer import STANDING_BATCHES, SUM_KEYS, DCall, TrainerBase, dtype_policy


def use_compilation_cache() -> None:
    """Keep XLA's compiled programs on disk between runs (``JAX_COMPILATION_CACHE_DIR``, else
    ``~/.cache/cxraug/jax``): building the networks and sampling run op by op, one compilation
    each, and a second run then starts in a third of the time (33 s -> 13 s for smoke-32 on
    2 cores)."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        folder = Path(os.environ["JAX_COMPILATION_CACHE_DIR"])
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        folder = base / "cxraug" / "jax"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return  # a read-only home: no cache, only slower
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


class StepState(NamedTuple):
    """Everything the step reads and writes, carried from step to step on the device (a
    pytree: the jitted step takes it and returns the next one). The lists are a network's or an
    optimizer's variables in Keras's order (:meth:`JaxTrainer._model_variables`); the
    checkpoint stores each field under its name (:mod:`.jax_checkpoint`)."""

    g: list[Any]  # G's trainable weights
    g_stats: list[Any]  # G's batch-norm and spectral-norm statistics
    d: list[Any]
    d_stats: list[Any]
    g_opt: list[Any]  # Adam's slots and counter
    d_opt: list[Any]
    ema: list[Any]  # the EMA generator's trainable weights (empty: no EMA)
    key: Any  # the PRNG key's data: every draw of noise
    step: Any
    aug_p: Any  # ADA's augmentation probability
    ada_acc: Any  # ADA's running sum and count of sign(D(real))
    sums: Any  # the epoch's running sums (SUM_KEYS)
    bad_step: Any  # the first step whose numbers were not finite (-1: none yet) ...
    bad_values: Any  # ... and those numbers


class DParts(NamedTuple):
    """D's part of the state as one update moves it: weights, statistics, Adam's slots, and
    the key its augmentation noise is drawn from."""

    weights: list[Any]
    stats: list[Any]
    opt: list[Any]
    key: Any


#: What a D objective returns: (loss, aux, D's statistics after it, the key after its noise).
DObjective = tuple[Any, Any, list[Any], Any]


class _DCall:
    """D in training mode as the objectives call it (:data:`.trainer.DCall`), inside the traced
    step: each call draws DiffAugment's noise from :attr:`key` and moves D's statistics; both
    are read back after the objective (:attr:`stats`, :attr:`key`), as the TensorFlow step's D
    call moves its variables and its generator's state."""

    def __init__(self, trainer: JaxTrainer, weights: list[Any], stats: list[Any], key: Any,
                 aug_p: Any) -> None:
        self.trainer, self.weights, self.stats, self.key = trainer, weights, stats, key
        self.aug_p = aug_p

    def __call__(self, images: Any, labels: Any) -> tuple[Any, Any]:
        noise = KeyNoise(self.key)
        inputs = self.trainer.d_inputs(images, labels, noise, self.aug_p)
        self.key = noise.key
        out, self.stats = self.trainer.discriminator.stateless_call(
            self.weights, self.stats, inputs, training=True)
        return self.trainer.split_d_output(out)


class JaxTrainer(TrainerBase):
    """Networks, optimizers, noise and the jitted step of one run on JAX."""

    backend_name = "jax"

    def __init__(self, recipe: Recipe, num_classes: int, devices: int | None = None) -> None:
        from ..errors import CxrError

        use_compilation_cache()
        super().__init__(recipe, num_classes, replicas=1)
        t = recipe.train
        self.process_index, self.process_count = jax.process_index(), jax.process_count()
        # the first `devices` of every process, process by process: each process's devices are
        # then one contiguous slice of the batch axis, the rows it reads (`batches`)
        chosen = [d for p in range(self.process_count) for d in sorted(
            (d for d in jax.devices() if d.process_index == p), key=lambda d: d.id)[:devices]]
        self.mesh = None
        if len(chosen) > 1:
            unit = 2 * len(chosen) if self.half else len(chosen)
            if t.batch_size % unit:
                where = (f"{len(chosen)} devices of {self.process_count} processes"
                         if self.process_count > 1 else f"{len(chosen)} devices")
                raise CxrError(f"train.batch_size {t.batch_size} must be divisible by {unit} "
                               f"({where}{', half batches' if self.half else ''})")
            self.mesh = jax.sharding.Mesh(np.array(chosen), ("batch",))
        with dtype_policy("mixed_bfloat16" if self.mixed else None):
            self._build_models()
        self.g_optimizer = self._adam(t.g_lr)
        self.d_optimizer = self._adam(t.d_lr)
        self.g_optimizer.build(self.generator.trainable_variables)
        self.d_optimizer.build(self.discriminator.trainable_variables)
        if self.ema_generator is not None:
            self.ema_generator.set_weights(self.generator.get_weights())
        self.state = StepState(
            **{key: [v.value for v in variables]
               for key, variables in self._model_variables().items()},
            key=jax.random.key_data(jax.random.key(t.seed)),
            step=jnp.zeros((), jnp.int32),
            aug_p=jnp.asarray(0.0 if self.ada else 1.0, jnp.float32),
            ada_acc=jnp.zeros((2,), jnp.float32),
            sums=jnp.zeros((6,), jnp.float32),
            bad_step=jnp.asarray(-1, jnp.int32),
            bad_values=jnp.zeros((5,), jnp.float32),
        )
        # several processes: they meet through the coordination service, not gloo (cluster.py)
        from .cluster import meetings

        self.meetings = meetings() if self.process_count > 1 else None
        self._meetings_held = 0
        self._compiled = self.meetings is None
        self.state = self._replicate(self.state)
        # host-side counters, checkpointed with the state
        self.host = {"epoch": 0, "epoch_wall": 0.0, "run_seconds": 0.0}
        # jitted, then (first train_step) compiled ahead: two jax.stages types, called alike
        self._step: Any = jax.jit(self._pure_step, donate_argnums=(0,))
        self._last: dict[str, Any] = {}
        self._synced = True

    # ------------------------------------------------------------------------------ the step
    def _g(self, g_vars: list[Any], g_stats: list[Any], z: Any, labels: Any,
           ) -> tuple[Any, list[Any]]:
        """G in training mode: (images as float32, its new statistics)."""
        out, g_stats = self.generator.stateless_call(g_vars, g_stats, self.g_inputs(z, labels),
                                                     training=True)
        return out.astype(jnp.float32), g_stats

    def _d_objective(self, d_vars: list[Any], d_stats: list[Any], key: Any, aug_p: Any,
                     loss_of: Callable[[DCall], tuple[Any, Any]]) -> DObjective:
        """``loss_of`` (one of the objectives, given a D call) on D's weights ``d_vars``:
        ``(loss, aux, D's statistics after it, the key after its noise)``."""
        call = _DCall(self, d_vars, d_stats, key, aug_p)
        loss, aux = loss_of(call)
        return loss, aux, call.stats, call.key

    def _d_full_penalized(self, d_vars: list[Any], d_stats: list[Any], key: Any, aug_p: Any,
                          real: Any, labels: Any, fake: Any, fake_labels: Any) -> DObjective:
        """D's loss on reals and fakes + the active regularizers' penalties (:meth:`d_penalty`),
        the gradient wrt the reals, when one asks for it, taken through the same forward pass
        (D's statistics and key leave the inner gradient as its aux)."""
        def on_reals(images: Any) -> tuple[Any, Any]:
            loss, logits, stats, key_after = self._d_objective(
                d_vars, d_stats, key, aug_p, partial(self._d_full, images, labels, fake,
                                                     fake_labels))
            return jnp.sum(logits[0]), (loss, logits, stats, key_after)

        if self.needs_real_grads:
            grads, (loss, logits, stats, key_after) = jax.grad(on_reals, has_aux=True)(real)
        else:
            grads, (_, (loss, logits, stats, key_after)) = None, on_reals(real)
        # a penalty that calls D again continues from the pass's statistics and key
        call = _DCall(self, d_vars, stats, key_after, aug_p)
        penalty = self.d_penalty(PenaltyInputs(real, labels, logits[0], grads, call))
        return loss + penalty, logits, call.stats, call.key

    def _d_full(self, real: Any, labels: Any, fake: Any, fake_labels: Any,
                call: DCall) -> tuple[Any, Any]:
        """D's loss on reals and fakes in one call, (real logits, fake logits) as its aux."""
        loss, real_logits, fake_logits = self.d_full_loss(call, real, labels, fake, fake_labels)
        return loss, (real_logits, fake_logits)

    def _d_update(self, d: DParts, objective: Callable[[list[Any], list[Any], Any], DObjective],
                  ) -> tuple[DParts, Any, Any]:
        """One Adam step of D on ``objective`` (of D's weights, statistics and key): returns
        D's new (weights, statistics, optimizer slots, key), the loss and the objective's aux."""
        d_vars, d_stats, d_opt, key = d

        def loss(dv: list[Any]) -> tuple[Any, Any]:
            value, aux, stats, key_after = objective(dv, d_stats, key)
            return value, (aux, stats, key_after)

        (value, (aux, d_stats, key)), grads = jax.value_and_grad(loss, has_aux=True)(d_vars)
        d_vars, d_opt = self.d_optimizer.stateless_apply(d_opt, grads, d_vars)
        return DParts(d_vars, d_stats, d_opt, key), value, aux

    def _g_objective(self, g_vars: list[Any], g_stats: list[Any], d_vars: list[Any],
                     d_stats: list[Any], key: Any, aug_p: Any, z: Any, labels: Any,
                     ) -> tuple[Any, tuple[list[Any], list[Any], Any]]:
        """G's loss on fresh fakes through D (fixed: its statistics still move, as in the
        TensorFlow step, where D runs in training mode here too); aux: (G's statistics, D's
        statistics, the key)."""
        images, g_stats = self._g(g_vars, g_stats, z, labels)
        call = _DCall(self, d_vars, d_stats, key, aug_p)
        loss = self.g_loss(call, images, labels)
        return loss, (g_stats, call.stats, call.key)

    def _pure_step(self, state: StepState, real: Any, labels: Any,
                   ) -> tuple[StepState, dict[str, Any]]:
        """One full step, a pure function of the state (jitted): the new state and the step's
        numbers (:data:`SUM_KEYS`)."""
        aug_p = state.aug_p  # D's augmentation probability during this step
        # 1. Discriminator.
        noise = KeyNoise(jax.random.wrap_key_data(state.key))
        z, fake_labels = self.noise(noise, int(real.shape[0]), labels)
        fake, g_stats = self._g(state.g, state.g_stats, z, fake_labels)
        fake = jax.lax.stop_gradient(fake)
        d = DParts(state.d, state.d_stats, state.d_opt, noise.key)
        if self.half:
            d, loss_real, real_logits = self._d_update(d, partial(
                self._d_objective, aug_p=aug_p,
                loss_of=partial(self.d_real_loss, real=real, labels=labels)))
            d, loss_fake, fake_logits = self._d_update(d, partial(
                self._d_objective, aug_p=aug_p,
                loss_of=partial(self.d_fake_loss, fake=fake, fake_labels=fake_labels)))
            d_loss = 0.5 * (loss_real + loss_fake)
        elif self.regularizers:
            d, d_loss, (real_logits, fake_logits) = self._d_update(d, partial(
                self._d_full_penalized, aug_p=aug_p, real=real, labels=labels, fake=fake,
                fake_labels=fake_labels))
        else:
            d, d_loss, (real_logits, fake_logits) = self._d_update(d, partial(
                self._d_objective, aug_p=aug_p,
                loss_of=partial(self._d_full, real, labels, fake, fake_labels)))
        acc_real, r_t, acc_fake = self.d_stats(real_logits, fake_logits)
        # 2. Generator, on a full batch of fresh latent/label pairs; D fixed.
        noise = KeyNoise(d.key)
        z, g_labels = self.noise(noise, self.local_batch, labels)
        (g_loss, (g_stats, d_stats, key)), grads = jax.value_and_grad(
            self._g_objective, has_aux=True)(state.g, g_stats, d.weights, d.stats, noise.key,
                                             aug_p, z, g_labels)
        g_vars, g_opt = self.g_optimizer.stateless_apply(state.g_opt, grads, state.g)
        # 3. EMA, ADA, sums, the device-side finiteness check.
        step = state.step
        ema = state.ema
        if self.ema_generator is not None:
            decay = self.ema_decay_at(step)
            ema = [decay * e + (1.0 - decay) * w.astype(e.dtype) for e, w in
                   zip(ema, g_vars, strict=True)]
        aug_p, ada_acc = state.aug_p, state.ada_acc
        if self.ada:
            aug_p, ada_acc = self.ada_update(aug_p, ada_acc, r_t, step)
        values = jnp.stack([d_loss, g_loss, acc_real, acc_fake, r_t]).astype(jnp.float32)
        first = (state.bad_step < 0) & ~jnp.all(jnp.isfinite(values))
        new_state = StepState(
            g=g_vars, g_stats=g_stats, d=d.weights, d_stats=d_stats, g_opt=g_opt, d_opt=d.opt,
            ema=ema, key=jax.random.key_data(key), step=step + 1, aug_p=aug_p,
            ada_acc=ada_acc,
            sums=state.sums + jnp.concatenate([values, jnp.ones((1,), jnp.float32)]),
            bad_step=jnp.where(first, step + 1, state.bad_step),
            bad_values=jnp.where(first, values, state.bad_values),
        )
        return new_state, dict(zip(SUM_KEYS[:5], values, strict=True))

    def _place(self, batch: np.ndarray) -> Any:
        """A batch as the step takes it: split across the devices along its first axis. With
        several processes ``batch`` is this process's share, and the step sees the whole."""
        if self.mesh is None:
            return batch
        split = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec("batch"))
        if self.process_count == 1:
            return jax.device_put(batch, split)
        return jax.make_array_from_process_local_data(
            split, batch, (batch.shape[0] * self.process_count, *batch.shape[1:]))

    def _replicate(self, tree: Any) -> Any:
        """State on every device of the mesh (every process holds the same values)."""
        if self.mesh is None:
            return tree
        if self.meetings is not None:
            # JAX checks that every process puts the same values (an all-gather over gloo, whose
            # group is made at its first use): the processes get there together first
            self.meetings.meet(self._meeting("shared-state"))
        return jax.device_put(tree, jax.sharding.NamedSharding(
            self.mesh, jax.sharding.PartitionSpec()))

    @staticmethod
    def _local(value: Any) -> Any:
        """This process's copy of a replicated array (the Keras models run on one device)."""
        if getattr(value, "is_fully_addressable", True):
            return value
        return value.addressable_data(0)

    def _meeting(self, name: str) -> str:
        self._meetings_held += 1
        return f"{name}-{self._meetings_held}"

    def agree(self, flag: bool) -> bool:
        if self.meetings is None:
            return flag
        return self.meetings.share(self._meeting("agree"), "1" if flag else "0") == "1"

    def barrier(self, name: str) -> None:
        if self.meetings is not None:
            self.meetings.meet(self._meeting(name))

    def train_step(self, real: Any, labels: Any) -> dict[str, Any]:
        """One full step. Returns the step's numbers as device arrays; nothing is read back.

        With several processes the first call compiles the step ahead, then waits for the other
        processes (up to the cluster's timeout), so that they enter its collectives together:
        a process that compiles slower, loads later or shares its machine is waited for."""
        real, labels = self._place(real), self._place(labels)
        if not self._compiled:
            assert self.meetings is not None
            self.meetings.check()  # a process that was held up learns at once that the run stopped
            self._step = self._step.lower(self.state, real, labels).compile()
            self._compiled = True
            self.meetings.meet(self._meeting("first-step"))
        self.state, self._last = self._step(self.state, real, labels)
        self._synced = False
        return self._last

    # ------------------------------------------------------- Keras models <-> the state
    def sync_models(self) -> None:
        """Write the state into the Keras models (before sampling, standing statistics or a
        checkpoint: they read the models)."""
        if self._synced:
            return
        for key, variables in self._model_variables().items():
            for var, value in zip(variables, getattr(self.state, key), strict=True):
                var.assign(self._local(value))
        self._synced = True

    def state_from_models(self) -> None:
        """Take the Keras models' current values as the state: after weights were put into the
        models outside the step (``load_weights``, a transfer from another run)."""
        self.state = self.state._replace(**self._replicate(
            {key: [v.value for v in variables]
             for key, variables in self._model_variables().items()}))

    def _model_variables(self) -> dict[str, list[Any]]:
        """The Keras variables behind each list of the state."""
        ema = [] if self.ema_generator is None else self.ema_generator.trainable_variables
        return {"g": self.generator.trainable_variables,
                "g_stats": self.generator.non_trainable_variables,
                "d": self.discriminator.trainable_variables,
                "d_stats": self.discriminator.non_trainable_variables,
                "g_opt": self.g_optimizer.variables, "d_opt": self.d_optimizer.variables,
                "ema": ema}

    def generate(self, z: np.ndarray, labels: np.ndarray) -> np.ndarray:
        self.sync_models()
        return super().generate(z, labels)

    @property
    def sample_generator(self) -> keras.Model:
        self.sync_models()
        return super().sample_generator

    def standing_statistics(self, label_pool: np.ndarray,
                            batches: int = STANDING_BATCHES) -> None:
        self.sync_models()
        super().standing_statistics(label_pool, batches)

    # ------------------------------------------------------------- what the run driver uses
    def batches(self, dataset: Any, epoch: int, start_step: int) -> Any:
        return dataset.numpy_batches(epoch, start_step,
                                     part=(self.process_index, self.process_count))

    def last_losses(self) -> dict[str, float]:
        return {k: float(v) for k, v in self._last.items()}

    def first_bad_step(self) -> tuple[int, dict[str, float]] | None:
        step = int(self.state.bad_step)
        if step < 0:
            return None
        return step, dict(zip(SUM_KEYS[:5], (float(v) for v in np.asarray(
            self.state.bad_values)), strict=True))

    def step_count(self) -> int:
        return int(self.state.step)

    def epoch_count(self) -> int:
        return int(self.host["epoch"])

    def set_epoch(self, epoch: int) -> None:
        self.host["epoch"] = int(epoch)

    def run_seconds(self) -> float:
        return float(self.host["run_seconds"])

    def set_run_seconds(self, seconds: float) -> None:
        self.host["run_seconds"] = float(seconds)

    def add_epoch_wall(self, seconds: float) -> None:
        self.host["epoch_wall"] += float(seconds)

    def epoch_wall_s(self) -> float:
        return float(self.host["epoch_wall"])

    def reset_epoch_sums(self) -> None:
        self.state = self.state._replace(sums=self._replicate(jnp.zeros((6,), jnp.float32)))
        self.host["epoch_wall"] = 0.0

    def _sums_and_p(self) -> tuple[np.ndarray, float]:
        return np.asarray(self.state.sums, np.float64), float(self.state.aug_p)

    def devices(self) -> list[str]:
        return ([str(d) for d in self.mesh.devices.flat] if self.mesh is not None
                else [str(jax.devices()[0])])

    def checkpoints(self, directory: Path, keep: int, prefix: str) -> JaxCheckpoints:
        return JaxCheckpoints(self, directory, keep, prefix)

    # ------------------------------------------------------------------------ checkpoints
    # (their layout and files: :mod:`.jax_checkpoint`)
    def arrays(self) -> dict[str, np.ndarray]:
        """Everything a resume needs, as named numpy arrays."""
        ema_stats = (None if self.ema_generator is None else
                     [v.value for v in self.ema_generator.non_trainable_variables])
        # by name, as the files have always listed them (a dict state came out of the jitted
        # step with its keys sorted): the same .npz as before, entry for entry
        return pack(dict(sorted(self.state._asdict().items())), self.host, ema_stats)

    def load_arrays(self, data: Any, where: str) -> None:
        """Put saved arrays back (shapes and counts checked: a recipe change cannot slip in)."""
        ema = self.ema_generator
        saved, self.host, ema_stats = unpack(
            data, self.state._asdict(), self.host,
            None if ema is None else len(ema.non_trainable_variables), where)
        state: dict[str, Any] = {}
        for name, value in self.state._asdict().items():
            if isinstance(value, list):
                state[name] = [jnp.asarray(a, dtype=v.dtype)
                               for a, v in zip(saved[name], value, strict=True)]
            else:
                state[name] = jnp.asarray(saved[name], dtype=value.dtype)
        self.state = self._replicate(StepState(**state))
        self._synced = False
        self.sync_models()
        if ema is not None:
            for v, value in zip(ema.non_trainable_variables, ema_stats, strict=True):
                v.assign(value)
