"""The paper's networks (Ng & Gubbi), layer for layer, with sizes taken from the ModelConfig.

At 128x128 with 7 classes these are exactly the published models: the conditional generator has
1,704,799 parameters and the discriminator 2,079,839 (as built in Keras 3), and the unconditional
DCGAN 1,364,481 and 1,031,745. Scaling to other sizes keeps the paper's shape: the latent grid is
``S/16`` (8x8 at 128), four stride-2 transposed convolutions reach ``S``, and the final convolution
has an ``S/8`` kernel (16x16 at 128).

Two deliberate departures that change nothing the model computes:

* The discriminator returns **logits**; the paper's final sigmoid is folded into the loss
  (``sigmoid_cross_entropy_with_logits`` is the same function, computed stably).
* With ``fast_conv_grad`` the final convolution is a :class:`FastGradConv2D`: the same weights and
  forward op as ``Conv2D``, with a gradient that does not take minutes on CPU.

``label_mode = "multi-hot"`` (not in the paper) replaces each label ``Embedding`` by a bias-free
``Dense`` of the same size, i.e. the sum of the present classes' embeddings.
"""

from __future__ import annotations

import keras
from keras import layers

from ..contract import IMAGE, Z
from ..model_options import PaperOptions
from ..recipe import ModelConfig
from .layers import FastGradConv2D, label_input_tensor


def _label_embedding(cfg: ModelConfig, num_classes: int, label: keras.KerasTensor,
                     name: str) -> keras.KerasTensor:
    if cfg.label_mode == "multi-hot":
        return layers.Dense(cfg.embedding_dim, use_bias=False, name=name)(label)
    return layers.Embedding(num_classes, cfg.embedding_dim, name=name)(label)


def _final_conv(cfg: ModelConfig, options: PaperOptions) -> layers.Conv2D:
    """``Conv2D(1, S/8, same, tanh)``, with the fast gradient when configured."""
    kernel = cfg.image_size // 8
    kwargs = dict(filters=1, kernel_size=kernel, padding="same", activation="tanh",
                  name="final_conv")
    if options.fast_conv_grad:
        return FastGradConv2D(**kwargs)
    return layers.Conv2D(**kwargs)


def _upsampling_trunk(x: keras.KerasTensor, cfg: ModelConfig,
                      options: PaperOptions) -> keras.KerasTensor:
    for i in range(4):
        x = layers.Conv2DTranspose(options.filters, 4, strides=2, padding="same",
                                   name=f"up{i + 1}")(x)
        x = layers.LeakyReLU(negative_slope=0.2, name=f"up{i + 1}_lrelu")(x)
    x = _final_conv(cfg, options)(x)
    # a float32 identity, so the output is float32 under a mixed-precision policy too (no weights)
    return layers.Activation("linear", dtype="float32", name=IMAGE)(x)


def seed_channels(options: PaperOptions) -> int:
    """Channels of the latent grid: 64 at the paper's 128 filters."""
    return max(1, options.filters // 2)


def build_paper_generator(cfg: ModelConfig, options: PaperOptions,
                          num_classes: int) -> keras.Model:
    """z + label -> the paper's conditional generator."""
    return _generator(cfg, options, num_classes, conditional=True)


def build_dcgan_generator(cfg: ModelConfig, options: PaperOptions,
                          num_classes: int) -> keras.Model:
    """z -> the paper's unconditional DCGAN generator (``paper-dcgan``)."""
    return _generator(cfg, options, num_classes, conditional=False)


def build_paper_discriminator(cfg: ModelConfig, options: PaperOptions,
                              num_classes: int) -> keras.Model:
    """(image, label) -> logits [N, 1]; the paper's sigmoid lives in the loss."""
    return _discriminator(cfg, options, num_classes, conditional=True)


def build_dcgan_discriminator(cfg: ModelConfig, options: PaperOptions,
                              num_classes: int) -> keras.Model:
    """image -> logits [N, 1], the paper's unconditional discriminator."""
    return _discriminator(cfg, options, num_classes, conditional=False)


def _generator(cfg: ModelConfig, options: PaperOptions, num_classes: int,
               conditional: bool) -> keras.Model:
    grid = cfg.image_size // 16
    seed = seed_channels(options)
    z = keras.Input(shape=(cfg.latent_dim,), dtype="float32", name=Z)
    x = layers.Dense(grid * grid * seed, name="z_dense")(z)
    x = layers.LeakyReLU(negative_slope=0.2, name="z_lrelu")(x)
    x = layers.Reshape((grid, grid, seed), name="z_grid")(x)
    if not conditional:
        return keras.Model(z, _upsampling_trunk(x, cfg, options), name="paper_dcgan_generator")
    label = label_input_tensor(cfg.label_mode, num_classes)
    e = _label_embedding(cfg, num_classes, label, "label_embedding")
    e = layers.Dense(grid * grid * seed, name="label_dense")(e)
    e = layers.Reshape((grid, grid, seed), name="label_grid")(e)
    x = layers.Concatenate(name="merge")([x, e])
    return keras.Model([z, label], _upsampling_trunk(x, cfg, options), name="paper_generator")


def _discriminator(cfg: ModelConfig, options: PaperOptions, num_classes: int,
                   conditional: bool) -> keras.Model:
    s = cfg.image_size
    image = keras.Input(shape=(s, s, 1), dtype="float32", name=IMAGE)
    if not conditional:
        # the paper's unconditional discriminator: its last convolution has half the filters
        widths = [options.filters] * 3 + [seed_channels(options)]
        x, inputs = image, image
    else:
        widths = [options.filters] * 4
        label = label_input_tensor(cfg.label_mode, num_classes)
        e = _label_embedding(cfg, num_classes, label, "label_embedding")
        e = layers.Dense(s * s, name="label_dense")(e)
        e = layers.Reshape((s, s, 1), name="label_channel")(e)
        x = layers.Concatenate(name="merge")([image, e])
        inputs = [image, label]
    for i, width in enumerate(widths):
        x = layers.Conv2D(width, 5, strides=2, padding="same", name=f"down{i + 1}")(x)
        x = layers.LeakyReLU(negative_slope=0.2, name=f"down{i + 1}_lrelu")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dropout(0.4, name="dropout")(x)
    logits = layers.Dense(1, dtype="float32", name="logits")(x)  # float32 under mixed precision
    name = "paper_discriminator" if conditional else "paper_dcgan_discriminator"
    return keras.Model(inputs, logits, name=name)
