"""cxraug's default networks: chosen for label fidelity, small-data robustness and generation speed.

Generator (BigGAN-style, much slimmer): ``[z, embed(y)] -> Dense -> 4x4xC`` (6x6 at 48 or 96),
then one residual block per doubling up to ``S``::

    main: cBN(y) -> ReLU -> Upsample2x -> Conv3x3 -> cBN(y) -> ReLU -> Conv3x3
    skip: Upsample2x -> Conv1x1
    out = main + skip

halving the channels each block (never below 16), then ``BN -> ReLU -> Conv3x3 -> tanh``. Why:

* the label enters twice - in the latent code (an embedding as loud as ``z``: N(0, 1)) and as
  a class-conditional gain/bias in every normalization - which is what makes a label change the
  picture (the paper's label only enters once, as an extra input plane that the network can
  ignore);
* resize-then-convolve upsampling has no checkerboard artefacts and exports to one ONNX ``Resize``
  (``Conv2DTranspose`` does both badly), and the network is ~10x cheaper per image than the
  paper's (0.41 GFLOPs per image at 128x128 against 3.9). ``model.upsample = "bilinear"``
  interpolates instead of copying pixels: nearest-neighbour copies leave a faint 2-pixel pattern
  at the same place in every image, which is enough for a linear classifier to tell synthetic
  from real chest X-rays (benchmarks/real_small_data.py).

Discriminator (SNGAN-style with a projection head, Miyato & Koyama 2018): ``Conv3x3`` then one
``Conv4x4 / stride 2`` per halving down to 4x4, doubling channels from ``d_channels`` (capped
at ``8 * d_channels``), optionally a minibatch standard-deviation channel (``minibatch_std``), a
final ``Conv3x3``, all spectrally normalized with LeakyReLU(0.2); global
sum pooling gives ``h``; the logit is ``linear(h) + <embed(y), h>``. Spectral normalization and the
projection term keep D Lipschitz-bounded and force it to judge class membership, which both help
with a few hundred images. For multi-hot labels every embedding is a projection of the multi-hot
vector (the sum of the present classes' embeddings).

BatchNorm note for the training loop: the generator contains BatchNormalization layers whose moving
statistics are non-trainable weights. An EMA copy of the generator must average only the trainable
weights and copy the moving statistics (or refresh them with
:func:`cxraug.models.layers.refresh_batchnorm_statistics`). The exported generator runs in
inference mode and uses those moving statistics.
"""

from __future__ import annotations

import keras
from keras import layers

from ..model_options import MINIBATCH_STD_GROUP, CxraugOptions
from ..recipe import ModelConfig
from .layers import (
    ClassEmbedding,
    ConditionalBatchNorm,
    GlobalSumPooling2D,
    MinibatchStdDev,
    SNConv2D,
    SNDense,
    Upsample2x,
    label_input_tensor,
)


def base_resolution(image_size: int) -> tuple[int, int]:
    """``(b, n)`` with ``image_size = b * 2**n`` and ``4 <= b < 8``: 4x4 for powers of two, 6x6
    for 48 or 96, 5x5 for 80."""
    n = 0
    while image_size % (2 << n) == 0 and image_size // (2 << n) >= 4:
        n += 1
    return image_size >> n, n


def generator_widths(cfg: ModelConfig, options: CxraugOptions) -> list[int]:
    """Channels at b, 2b, ..., S (b = 4 for powers of two): ``g_channels`` halved per doubling,
    floored at ``g_min_channels``."""
    _, n_up = base_resolution(cfg.image_size)
    floor = min(options.g_min_channels, options.g_channels)
    return [max(options.g_channels >> i, floor) for i in range(n_up + 1)]


def discriminator_widths(cfg: ModelConfig, options: CxraugOptions) -> list[int]:
    """Channels at S, S/2, ..., b: ``d_channels`` doubled per halving, capped at 8x."""
    _, n_down = base_resolution(cfg.image_size)
    return [min(options.d_channels << i, 8 * options.d_channels) for i in range(n_down + 1)]


def build_cxraug_generator(cfg: ModelConfig, options: CxraugOptions,
                           num_classes: int) -> keras.Model:
    """Inputs ``z`` and ``label`` (or ``labels``); output ``image`` [N, S, S, 1] in [-1, 1]."""
    multi_hot = cfg.label_mode == "multi-hot"
    widths = generator_widths(cfg, options)
    z = keras.Input(shape=(cfg.latent_dim,), dtype="float32", name="z")
    label = label_input_tensor(cfg.label_mode, num_classes)
    # N(0, 1) like z: with Keras' default N(0, 0.05) the label is 20x quieter than the noise in
    # the first layer and a CPU-length run learns to ignore it (benchmarks/conditioning.py)
    e = ClassEmbedding(num_classes, cfg.embedding_dim, multi_hot=multi_hot,
                       initializer=keras.initializers.RandomNormal(stddev=1.0),
                       name="label_embedding")(label)
    h = layers.Concatenate(name="z_label")([z, e])
    base, _ = base_resolution(cfg.image_size)
    method = "bilinear" if options.upsample == "bilinear" else "resize"
    h = layers.Dense(base * base * widths[0], name="seed_dense")(h)
    x = layers.Reshape((base, base, widths[0]), name="seed_grid")(h)
    for i, cout in enumerate(widths[1:]):
        res = (2 * base) << i
        p = f"g{res}"
        m = ConditionalBatchNorm(num_classes, multi_hot, name=f"{p}_cbn1")([x, label])
        m = layers.ReLU(name=f"{p}_relu1")(m)
        m = Upsample2x(method, name=f"{p}_up")(m)
        m = layers.Conv2D(cout, 3, padding="same", name=f"{p}_conv1")(m)
        m = ConditionalBatchNorm(num_classes, multi_hot, name=f"{p}_cbn2")([m, label])
        m = layers.ReLU(name=f"{p}_relu2")(m)
        m = layers.Conv2D(cout, 3, padding="same", name=f"{p}_conv2")(m)
        s = Upsample2x(method, name=f"{p}_skip_up")(x)
        s = layers.Conv2D(cout, 1, name=f"{p}_skip_conv")(s)
        x = layers.Add(name=f"{p}_add")([m, s])
    x = layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name="out_bn")(x)
    x = layers.ReLU(name="out_relu")(x)
    x = layers.Conv2D(1, 3, padding="same", name="out_conv")(x)
    image = layers.Activation("tanh", dtype="float32", name="image")(x)
    return keras.Model([z, label], image, name="cxraug_generator")


def build_cxraug_discriminator(cfg: ModelConfig, options: CxraugOptions, num_classes: int,
                               class_head: bool = False) -> keras.Model:
    """Inputs ``image`` and ``label``/``labels``; output logits [N, 1] (projection D).

    ``class_head``: a second output, class logits [N, C] from the same pooled features (the
    auxiliary classifier of ``train.aux_class_weight``); it sees the image only, never the label.
    """
    sn = options.spectral_norm
    multi_hot = cfg.label_mode == "multi-hot"
    widths = discriminator_widths(cfg, options)
    s = cfg.image_size
    image = keras.Input(shape=(s, s, 1), dtype="float32", name="image")
    label = label_input_tensor(cfg.label_mode, num_classes)
    x = SNConv2D(widths[0], 3, padding="same", spectral_norm=sn, name=f"d{s}_conv")(image)
    x = layers.LeakyReLU(negative_slope=0.2, name=f"d{s}_lrelu")(x)
    for i, cout in enumerate(widths[1:]):
        res = s >> (i + 1)
        x = SNConv2D(cout, 4, strides=2, padding="same", spectral_norm=sn,
                     name=f"d{res}_down")(x)
        x = layers.LeakyReLU(negative_slope=0.2, name=f"d{res}_lrelu")(x)
    if options.minibatch_std:
        x = MinibatchStdDev(MINIBATCH_STD_GROUP, name="minibatch_std")(x)
    x = SNConv2D(widths[-1], 3, padding="same", spectral_norm=sn, name="dlast_conv")(x)
    x = layers.LeakyReLU(negative_slope=0.2, name="dlast_lrelu")(x)
    h = GlobalSumPooling2D(dtype="float32", name="sum_pool")(x)
    linear = SNDense(1, spectral_norm=sn, name="linear")(h)
    e = ClassEmbedding(num_classes, widths[-1], multi_hot=multi_hot, spectral_norm=sn,
                       name="projection_embedding")(label)
    proj = layers.Dot(axes=1, name="projection")([e, h])
    logits = layers.Add(dtype="float32", name="logits")([linear, proj])
    if class_head:
        classes = SNDense(num_classes, spectral_norm=sn, dtype="float32",
                          name="class_logits")(h)
        return keras.Model([image, label], [logits, classes], name="cxraug_discriminator")
    return keras.Model([image, label], logits, name="cxraug_discriminator")
