"""GAN losses registered by name (``train.loss``), written with ``keras.ops`` so that the
TensorFlow and the JAX training steps compute them with the same code.

A loss is three per-example functions of D's real/fake logits ``[N, 1]``: D's loss on reals, D's
loss on fakes, G's loss. Adding one is one :class:`GanLoss` entry of :data:`LOSSES` in this file
(recipes validate ``train.loss`` against it).

A regularizer of D (a gradient penalty such as R1) sees more than logits: the reals, D's logits
of them and, when it asks for it, D's gradient with respect to them, all from the D step's own
forward pass (:class:`PenaltyInputs`, which each backend fills with its own autodiff), and D
itself for a penalty that needs another pass. Adding one is one :class:`Regularizer` entry of
:data:`REGULARIZERS` plus the ``[train]`` field that weighs it (0: off); both backends' D steps
and the recipe checks read the registry.

Keras is imported when a loss is computed, not when this module is imported: recipes import it,
and they stay free of any framework.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def _ops() -> Any:
    from keras import ops

    return ops


@dataclass(frozen=True)
class GanLoss:
    """Per-example losses of logits (target "real" for ``d_real`` and ``g``)."""

    name: str
    doc: str
    d_real: Callable[[Any], Any]
    d_fake: Callable[[Any], Any]
    g: Callable[[Any], Any]


LOSSES: dict[str, GanLoss] = {
    "bce": GanLoss(
        "bce", "non-saturating binary cross-entropy (Goodfellow et al.; the paper)",
        d_real=lambda x: _ops().softplus(-x), d_fake=lambda x: _ops().softplus(x),
        g=lambda x: _ops().softplus(-x)),
    "hinge": GanLoss(
        "hinge", "hinge loss for D, -D(G(z)) for G (Miyato et al., BigGAN)",
        d_real=lambda x: _ops().relu(1.0 - x), d_fake=lambda x: _ops().relu(1.0 + x),
        g=lambda x: -x),
}


@dataclass(frozen=True)
class PenaltyInputs:
    """What a regularizer sees, from the full-batch D step's own forward pass (so a penalty
    draws no extra augmentation noise and moves no extra batch-norm statistics)."""

    real: Any  # the reals [N, H, W, 1] as given to D's loss (before DiffAugment)
    labels: Any  # their labels
    real_logits: Any  # D's real/fake logits of the reals [N, 1], float32
    real_grads: Any  # d sum(real_logits) / d real [N, H, W, 1]; None unless asked for
    d_call: Callable[[Any, Any], tuple[Any, Any]]  # D in training mode, for another pass


@dataclass(frozen=True)
class Regularizer:
    """A penalty added to D's loss: ``coefficient(weight) * mean over reals of per_example``,
    ``weight`` read from the ``[train]`` field named ``weight`` (0: off)."""

    name: str
    weight: str  # the TrainConfig field that weighs it, e.g. "r1_gamma"
    doc: str
    per_example: Callable[[PenaltyInputs], Any]  # [N] (or [N, 1]) float32
    coefficient: Callable[[float], float] = lambda weight: weight
    needs_real_grads: bool = False  # the backend must fill PenaltyInputs.real_grads


def _r1(inputs: PenaltyInputs) -> Any:
    ops = _ops()
    return ops.sum(ops.square(ops.cast(inputs.real_grads, "float32")), axis=(1, 2, 3))


REGULARIZERS: dict[str, Regularizer] = {
    "r1": Regularizer(
        "r1", "r1_gamma", "R1 (Mescheder et al. 2018): gamma / 2 x |d D(real) / d real|^2",
        per_example=_r1, coefficient=lambda gamma: 0.5 * gamma, needs_real_grads=True),
}


def active_regularizers(train: Any) -> list[tuple[Regularizer, float]]:
    """The registered regularizers a ``[train]`` table turns on (weight > 0), with weights."""
    return [(reg, float(getattr(train, reg.weight))) for reg in REGULARIZERS.values()
            if getattr(train, reg.weight) > 0]


def class_loss(class_logits: Any, labels: Any, label_mode: str, weight: float) -> Any:
    """Per-example auxiliary class loss ``[N, 1]`` (shaped like the GAN loss of logits ``[N, 1]``,
    so the two add per example): softmax cross-entropy for index labels, per-finding sigmoid
    cross-entropy summed over findings for multi-hot; zeros without the class head."""
    ops = _ops()
    if class_logits is None:
        return ops.zeros((ops.shape(labels)[0], 1), "float32")
    if label_mode == "multi-hot":
        x, y = class_logits, ops.cast(labels, "float32")
        # log(1 + e^-|x|) + max(x, 0) - x*y: the stable form of sigmoid cross-entropy
        bce = ops.relu(x) - x * y + ops.log1p(ops.exp(-ops.abs(x)))
        return weight * ops.sum(bce, axis=1, keepdims=True)
    logp = ops.log_softmax(class_logits, axis=-1)
    picked = ops.take_along_axis(logp, ops.cast(labels, "int32")[:, None], axis=1)
    return -weight * picked
