"""Train the downstream classifier on a mix of image pools (real, synthetic, extra real).

``downstream`` compares ways of adding synthetic images to real ones. Each way is a list of
:class:`Pool` objects (images, labels, a loss weight, a share of every batch) trained for the same
number of optimizer steps by :func:`fit_mix`, so arms differ only in what they see, not in how long
they train. The recipe (:class:`ClassifierRecipe`) is what a careful user would train on a few
hundred 64x64 chest X-rays: shifts/contrast augmentation, AdamW with a cosine schedule over a
fixed step budget (chosen by cross-validation over training patients,
``benchmarks/downstream_classifier.py``, instead of early stopping on a val split of a few dozen
images), and positive-class weights so rare labels are not ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import CxrError
from .classifier import augment_batch, build_classifier, to_unit_range

#: Largest weight a rare class's positives get over its negatives.
MAX_POS_WEIGHT = 10.0


@dataclass(frozen=True)
class ClassifierRecipe:
    """How every downstream arm trains (the same for all arms of one run)."""

    steps: int = 300
    batch_size: int = 32
    lr: float = 4e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 30
    dropout: float = 0.3
    #: filters of the first conv block (doubling per block up to 192)
    width: int = 16
    #: standardize each image (mean 0, std 1) inside the network
    standardize: bool = False
    #: weight positives of class c by sqrt(negatives / positives), capped at MAX_POS_WEIGHT
    class_weights: bool = True

    def validate(self) -> None:
        if self.steps < 1:
            raise CxrError(f"classifier steps must be at least 1, got {self.steps}")
        if self.batch_size < 2:
            raise CxrError(f"classifier batch size must be at least 2, got {self.batch_size}")


@dataclass
class Pool:
    """Images of one kind in a training mix.

    ``share``: the fraction of every batch drawn from this pool (``None`` on every pool: draw from
    all images together, each image equally likely). ``weight``: its images' loss weight.
    """

    name: str
    images: np.ndarray
    labels: np.ndarray
    weight: float = 1.0
    share: float | None = None
    synthetic: bool = False

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class MixFit:
    """A trained model and what it was trained on (image counts per pool and the batch plan)."""

    model: Any
    seen: dict[str, int] = field(default_factory=dict)
    distinct: dict[str, int] = field(default_factory=dict)
    pos_weight: list[float] = field(default_factory=list)


def batch_counts(pools: list[Pool], batch_size: int) -> list[int]:
    """Images per batch from each pool: its share of ``batch_size``, rounded so they add up."""
    shares = [p.share for p in pools]
    if all(s is None for s in shares):
        sizes = np.array([len(p) for p in pools], dtype=np.float64)
        fractions = sizes / sizes.sum()
    elif any(s is None for s in shares):
        raise CxrError("give every pool a share, or none")
    else:
        fractions = np.array(shares, dtype=np.float64)
        if np.any(fractions < 0) or not np.isclose(fractions.sum(), 1.0):
            raise CxrError(f"pool shares must be >= 0 and add up to 1, got {shares}")
    exact = fractions * batch_size
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts))[: batch_size - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def positive_weights(pools: list[Pool], counts: list[int]) -> np.ndarray:
    """sqrt(negative / positive) per class for the mix as batches will see it, in [1, MAX]."""
    total = sum(counts)
    rate = sum(c / total * p.labels.mean(axis=0) for p, c in zip(pools, counts, strict=True)
               if c and len(p))
    rate = np.clip(np.asarray(rate, dtype=np.float64), 1e-3, 1.0)
    return np.clip(np.sqrt((1.0 - rate) / rate), 1.0, MAX_POS_WEIGHT)


class _Cycler:
    """Draws indices of one pool without replacement, reshuffling each time it runs out."""

    def __init__(self, n: int, rng: np.random.Generator):
        self.n, self.rng = n, rng
        self.order = rng.permutation(n)
        self.pos = 0

    def take(self, k: int) -> np.ndarray:
        out = []
        while k > 0:
            if self.pos == self.n:
                self.order, self.pos = self.rng.permutation(self.n), 0
            got = self.order[self.pos:self.pos + k]
            self.pos += len(got)
            k -= len(got)
            out.append(got)
        return np.concatenate(out) if out else np.zeros(0, np.int64)


def fit_mix(pools: list[Pool], recipe: ClassifierRecipe, seed: int, init: Any = None,
            progress: bool = True, desc: str = "classifier") -> MixFit:
    """Train for ``recipe.steps`` batches drawn from ``pools`` (see :class:`Pool`); ``init``:
    a model to continue from (pre-training then fine-tuning), else a new one from ``seed``."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    from ..progress import progress_bar

    recipe.validate()
    pools = [p for p in pools if len(p)]
    if not pools:
        raise CxrError("nothing to train the classifier on (every pool is empty)")
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    counts = batch_counts(pools, recipe.batch_size)
    if init is None:
        size, n_classes = pools[0].images.shape[1], pools[0].labels.shape[1]
        model = build_classifier(size, n_classes, dropout=recipe.dropout, width=recipe.width,
                                 standardize=recipe.standardize)
    else:
        model = init
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0 if recipe.warmup_steps else recipe.lr, recipe.steps,
        warmup_target=recipe.lr if recipe.warmup_steps else None,
        warmup_steps=recipe.warmup_steps)
    optimizer = keras.optimizers.AdamW(schedule, weight_decay=recipe.weight_decay)
    pos_weight = (positive_weights(pools, counts) if recipe.class_weights
                  else np.ones(pools[0].labels.shape[1]))
    pos_w = tf.constant(pos_weight[None, :], tf.float32)

    @tf.function(reduce_retracing=True)
    def step(x: Any, y: Any, w: Any) -> Any:
        with tf.GradientTape() as tape:
            p = tf.clip_by_value(model(x, training=True)["probs"], 1e-6, 1 - 1e-6)
            bce = -(pos_w * y * tf.math.log(p) + (1.0 - y) * tf.math.log(1.0 - p))
            loss = tf.reduce_sum(tf.reduce_mean(bce, axis=1) * w) / tf.reduce_sum(w)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    cyclers = [_Cycler(len(p), rng) for p in pools]
    natural = all(p.share is None for p in pools)
    offsets = np.cumsum([0] + [len(p) for p in pools])
    joint = _Cycler(int(offsets[-1]), rng) if natural else None
    seen = {p.name: 0 for p in pools}
    touched = {p.name: np.zeros(len(p), bool) for p in pools}
    bar = progress_bar(total=recipe.steps, desc=desc, unit="step", disable=not progress,
                       leave=False)
    for _ in range(recipe.steps):
        xs, ys, ws = [], [], []
        if joint is not None:
            flat = joint.take(recipe.batch_size)
            picks = [flat[(flat >= offsets[i]) & (flat < offsets[i + 1])] - offsets[i]
                     for i in range(len(pools))]
        else:
            picks = [c.take(k) for c, k in zip(cyclers, counts, strict=True)]
        for pool, idx in zip(pools, picks, strict=True):
            if not len(idx):
                continue
            idx = np.sort(idx)
            xs.append(pool.images[idx])
            ys.append(pool.labels[idx])
            ws.append(np.full(len(idx), pool.weight, np.float32))
            seen[pool.name] += len(idx)
            touched[pool.name][idx] = True
        x = augment_batch(to_unit_range(np.concatenate(xs)), rng)[..., None]
        loss = step(tf.constant(x), tf.constant(np.concatenate(ys).astype(np.float32)),
                    tf.constant(np.concatenate(ws)))
        bar.update(1)
        if bar.n % 50 == 0:
            bar.set_postfix(loss=f"{float(loss):.3f}")
    bar.close()
    return MixFit(model=model, seen=seen,
                  distinct={name: int(t.sum()) for name, t in touched.items()},
                  pos_weight=[round(float(v), 4) for v in pos_weight])
