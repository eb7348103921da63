"""The networks: one builder pair for every architecture in a recipe (TensorFlow).

``build_generator(cfg, num_classes)`` and ``build_discriminator(cfg, num_classes)`` call the
family's builders with its options (``cfg.options``). They follow the contract in
docs/ARCHITECTURE.md ("Models"): generator inputs ``z`` and ``label`` (int32 [N]) or ``labels``
(float32 multi-hot [N, C]), none for ``paper-dcgan``; output float32 [N, S, S, 1] in [-1, 1].
Discriminator inputs ``image`` and ``label``/``labels``; output logits [N, 1].
"""

from __future__ import annotations

from typing import Any

import keras

from ..architectures import architecture
from ..contract import label_input, label_mode_of
from ..errors import CxrError
from ..recipe import ModelConfig, validate_model
from . import layers as _layers  # noqa: F401  (registers the custom layers for load_model)
from .layers import FastGradConv2D, refresh_batchnorm_statistics

__all__ = [
    "build_generator",
    "build_discriminator",
    "generator_flops",
    "model_flops",
    "label_input_name",
    "refresh_batchnorm_statistics",
    "FastGradConv2D",
]


def _check(cfg: ModelConfig, num_classes: int) -> None:
    """The recipe's model checks (configs can be made in code) and the class count."""
    validate_model(cfg, "model config")
    if architecture(cfg.arch).conditional and num_classes < 1:
        raise CxrError(f"a conditional model needs at least one class, got {num_classes}")


def build_generator(cfg: ModelConfig, num_classes: int) -> keras.Model:
    """The generator of the family ``cfg.arch`` (weights from Keras' global seed)."""
    _check(cfg, num_classes)
    return architecture(cfg.arch).builder("generator")(cfg, cfg.options, num_classes)


def build_discriminator(cfg: ModelConfig, num_classes: int,
                        class_head: bool = False) -> keras.Model:
    """The discriminator of ``cfg.arch``; it returns logits, never probabilities.

    ``class_head`` (families registered with ``class_head=True``) adds a second output, class
    logits [N, C].
    """
    _check(cfg, num_classes)
    family = architecture(cfg.arch)
    if class_head and not family.class_head:
        raise CxrError(f"the {cfg.arch} discriminator has no class head; use model.arch cxraug")
    build = family.builder("discriminator")
    if class_head:
        return build(cfg, cfg.options, num_classes, class_head=True)
    return build(cfg, cfg.options, num_classes)


def label_input_name(cfg: ModelConfig) -> str | None:
    """``"label"`` (int index), ``"labels"`` (multi-hot) or ``None`` (unconditional)."""
    return label_input(label_mode_of(cfg))


def _layer_flops(layer: keras.layers.Layer) -> int:
    """Multiply-adds x 2 of one call of a conv/dense layer; 0 for cheap element-wise layers."""
    try:
        in_shape = tuple(layer.input.shape)
        out_shape = tuple(layer.output.shape)
    except (AttributeError, ValueError):
        return 0
    if isinstance(in_shape[0], (tuple, list)) or not isinstance(out_shape[-1], int):
        return 0
    if isinstance(layer, keras.layers.Conv2DTranspose):
        kh, kw = layer.kernel_size
        return 2 * in_shape[1] * in_shape[2] * kh * kw * in_shape[-1] * layer.filters
    if isinstance(layer, keras.layers.Conv2D):
        kh, kw = layer.kernel_size
        return 2 * out_shape[1] * out_shape[2] * kh * kw * in_shape[-1] * layer.filters
    if isinstance(layer, keras.layers.Dense):
        rows = 1
        for d in in_shape[1:-1]:
            rows *= d
        return 2 * rows * in_shape[-1] * layer.units
    return 0


def model_flops(model: keras.Model) -> int:
    """Floating-point operations (2 x multiply-adds) of convolutions and dense layers, per image.

    A static count for benchmarks and model cards; normalization, activations and resizing are
    left out (they are a few percent).
    """
    return int(sum(_layer_flops(layer) for layer in model.layers))


def generator_flops(model: keras.Model) -> int:
    """FLOPs of one generated image (alias of :func:`model_flops`, for readability)."""
    return model_flops(model)


def describe(model: keras.Model) -> dict[str, Any]:
    """Parameter counts and FLOPs per image, for logs and benchmarks."""
    return {"name": model.name, "params": int(model.count_params()),
            "trainable_params": int(sum(int(v.numpy().size) for v in model.trainable_weights)),
            "flops_per_image": model_flops(model)}
