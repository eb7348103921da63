"""The networks: one builder pair for every architecture in a recipe (TensorFlow).

``build_generator(cfg, num_classes)`` and ``build_discriminator(cfg, num_classes)`` follow the
contract in docs/ARCHITECTURE.md ("Models"): generator inputs ``z`` and ``label`` (int32 [N]) or
``labels`` (float32 multi-hot [N, C]), none for ``paper-dcgan``; output float32 [N, S, S, 1] in
[-1, 1]. Discriminator inputs ``image`` and ``label``/``labels``; output logits [N, 1].
"""

from __future__ import annotations

from typing import Any

import keras

from ..errors import CxrError
from ..training.recipe import ARCHS, ModelConfig
from . import layers as _layers  # noqa: F401  (registers the custom layers for load_model)
from .cxraug_net import build_cxraug_discriminator, build_cxraug_generator
from .layers import FastGradConv2D, refresh_batchnorm_statistics
from .paper import build_paper_discriminator, build_paper_generator

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
    if cfg.arch not in ARCHS:
        raise CxrError(f"model.arch must be one of {', '.join(ARCHS)}, got {cfg.arch!r}")
    if not (32 <= cfg.image_size <= 1024 and cfg.image_size % 16 == 0):
        raise CxrError(f"model.image_size must be a multiple of 16 between 32 and 1024, "
                       f"got {cfg.image_size}")
    if cfg.arch != "paper-dcgan" and num_classes < 1:
        raise CxrError(f"a conditional model needs at least one class, got {num_classes}")


def build_generator(cfg: ModelConfig, num_classes: int) -> keras.Model:
    """The generator for ``cfg.arch`` (weights freshly initialized from Keras' global seed)."""
    _check(cfg, num_classes)
    if cfg.arch == "cxraug":
        return build_cxraug_generator(cfg, num_classes)
    return build_paper_generator(cfg, num_classes)


def build_discriminator(cfg: ModelConfig, num_classes: int,
                        class_head: bool = False) -> keras.Model:
    """The discriminator for ``cfg.arch``; it returns logits, never probabilities.

    ``class_head`` (cxraug only) adds a second output, class logits [N, C].
    """
    _check(cfg, num_classes)
    if cfg.arch == "cxraug":
        return build_cxraug_discriminator(cfg, num_classes, class_head=class_head)
    if class_head:
        raise CxrError(f"the {cfg.arch} discriminator has no class head; use model.arch cxraug")
    return build_paper_discriminator(cfg, num_classes)


def label_input_name(cfg: ModelConfig) -> str | None:
    """``"label"`` (int index), ``"labels"`` (multi-hot) or ``None`` (unconditional DCGAN)."""
    if cfg.arch == "paper-dcgan":
        return None
    return "labels" if cfg.label_mode == "multi-hot" else "label"


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
