"""GAN losses registered by name (``train.loss``), written with ``keras.ops`` so that the
TensorFlow and the JAX training steps compute them with the same code.

A loss is three per-example functions of D's real/fake logits ``[N, 1]``: D's loss on reals, D's
loss on fakes, G's loss. Adding one is one :class:`GanLoss` entry of :data:`LOSSES` in this file
(recipes validate ``train.loss`` against it). Keras is imported when a loss is computed, not when
this module is imported: recipes import it, and they stay free of any framework.
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
