"""Custom Keras layers shared by the architectures.

* :class:`FastGradConv2D` - a ``Conv2D`` with the same weights and forward pass whose gradient is
  computed by fast, mathematically identical means. TensorFlow's CPU ``Conv2DBackpropFilter`` takes
  minutes for the paper's final 16x16 convolution (and ``Conv2DBackpropInput`` ~15 s); the kernel
  gradient is a correlation of the padded input with the output gradient, which an FFT computes in
  about a second, and the input gradient is a convolution with the flipped kernel.
* :class:`SNConv2D`, :class:`SNDense` and :class:`ClassEmbedding` (``spectral_norm=True``) -
  spectral normalization (Miyato et al. 2018) by one power iteration per training call, with the
  gradient flowing through sigma. ``keras.layers.SpectralNormalization`` is not used: it overwrites
  the layer's kernel variable with ``W / sigma`` on every training call, so no gradient flows
  through sigma and the stored weights change behind the optimizer's back (awkward for an EMA copy
  and for ``MirroredStrategy``).
* :class:`ConditionalBatchNorm` - batch normalization whose gain and bias come from the label
  (an embedding of a class index, or a projection of a multi-hot vector).
* :class:`Upsample2x` - x2 upsampling (nearest-neighbour, or bilinear), the single place where
  the project upsamples, so the ONNX export can pick the op that runs fastest in onnxruntime.

Backends: every layer builds and trains under ``KERAS_BACKEND=tensorflow`` and ``jax``. The two
TensorFlow-specific pieces (the fast kernel gradient and the explicit nearest-upsampling gradient,
both fixes for TensorFlow) are used only under TensorFlow; elsewhere the layers use ``keras.ops``,
whose gradients JAX/XLA computes well.

All layers are registered with ``keras.saving.register_keras_serializable(package="cxraug")``, so
``keras.models.load_model`` restores them without ``custom_objects``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import keras
from keras import ops

if TYPE_CHECKING:
    import tensorflow as tf

PACKAGE = "cxraug"


def on_tensorflow() -> bool:
    """Whether Keras runs on TensorFlow (the TensorFlow-only fixes below apply)."""
    return keras.backend.backend() == "tensorflow"

#: ``model.upsample`` -> method: "resize" (nearest neighbour, one ONNX ``Resize``) or "bilinear".
UPSAMPLE_METHODS = ("resize", "bilinear")


# ----------------------------------------------------------------------------- fast conv gradient
def same_padding(kernel_size: int) -> tuple[int, int]:
    """TensorFlow's 'same' padding for stride 1: k-1 in total, the smaller half before."""
    before = (kernel_size - 1) // 2
    return before, kernel_size - 1 - before


def conv2d_filter_grad_fft(x: tf.Tensor, dy: tf.Tensor, kernel_hw: tuple[int, int],
                           pads: tuple[tuple[int, int], tuple[int, int]]) -> tf.Tensor:
    """Kernel gradient of a stride-1 NHWC convolution as an FFT cross-correlation.

    ``dK[i, j, c, o] = sum_{n,h,w} xpad[n, h+i, w+j, c] * dy[n, h, w, o]``. With both signals on a
    grid of the padded input's size, the circular correlation never wraps for the ``kh x kw``
    window we keep, so the result is exact up to float rounding. Computed in float32 whatever
    the compute dtype (float16 FFTs are not supported and would lose precision).
    """
    import tensorflow as tf

    kh, kw = kernel_hw
    (pt, pb), (pl, pr) = pads
    x32 = tf.cast(x, tf.float32)
    dy32 = tf.cast(dy, tf.float32)
    xpad = tf.pad(x32, [[0, 0], [pt, pb], [pl, pr], [0, 0]])
    hp = tf.shape(xpad)[1]
    wp = tf.shape(xpad)[2]
    # channels-first for the FFT over the two trailing axes
    x_f = tf.signal.rfft2d(tf.transpose(xpad, [0, 3, 1, 2]))
    dy_f = tf.signal.rfft2d(tf.transpose(dy32, [0, 3, 1, 2]), fft_length=tf.stack([hp, wp]))
    prod = tf.einsum("nchw,nohw->cohw", x_f, tf.math.conj(dy_f))
    corr = tf.signal.irfft2d(prod, fft_length=tf.stack([hp, wp]))[:, :, :kh, :kw]
    return tf.transpose(corr, [2, 3, 0, 1])  # [kh, kw, C, O]


def conv2d_input_grad(dy: tf.Tensor, kernel: tf.Tensor,
                      pads: tuple[tuple[int, int], tuple[int, int]]) -> tf.Tensor:
    """Input gradient of a stride-1 NHWC convolution: a VALID convolution of the output gradient,
    padded by ``k - 1 - pad`` on each side, with the spatially flipped, in/out-transposed kernel.

    TensorFlow's CPU ``Conv2DBackpropInput`` builds a 2 GiB im2col buffer for the paper's 16x16
    case and takes ~25x longer than this ordinary forward convolution.
    """
    import tensorflow as tf

    kh, kw = int(kernel.shape[0]), int(kernel.shape[1])
    (pt, pb), (pl, pr) = pads
    flipped = tf.transpose(kernel[::-1, ::-1], [0, 1, 3, 2])
    dy_pad = tf.pad(dy, [[0, 0], [kh - 1 - pt, kh - 1 - pb], [kw - 1 - pl, kw - 1 - pr], [0, 0]])
    return tf.nn.conv2d(dy_pad, flipped, strides=1, padding="VALID")


def fast_grad_conv2d(x: tf.Tensor, kernel: tf.Tensor, padding: str = "SAME") -> tf.Tensor:
    """``tf.nn.conv2d(x, kernel, 1, padding)`` (NHWC) whose gradient avoids Conv2DBackpropFilter.

    The forward op is TensorFlow's own, so outputs are bit-identical to ``Conv2D``. The input
    gradient is a forward convolution with the flipped kernel (:func:`conv2d_input_grad`), the
    kernel gradient an FFT cross-correlation (:func:`conv2d_filter_grad_fft`, the fastest of
    the ways measured on CPU).
    """
    import tensorflow as tf

    padding = padding.upper()
    kh, kw = int(kernel.shape[0]), int(kernel.shape[1])
    if padding == "SAME":
        pads = (same_padding(kh), same_padding(kw))
    elif padding == "VALID":
        pads = ((0, 0), (0, 0))
    else:
        raise ValueError(f"padding must be SAME or VALID, got {padding!r}")

    @tf.custom_gradient
    def _conv(x_in: tf.Tensor, k_in: tf.Tensor) -> Any:
        y = tf.nn.conv2d(x_in, k_in, strides=1, padding=padding)

        def grad(dy: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            dx = conv2d_input_grad(dy, k_in, pads)
            dk = conv2d_filter_grad_fft(x_in, dy, (kh, kw), pads)
            return dx, tf.cast(dk, k_in.dtype)

        return y, grad

    return _conv(x, tf.convert_to_tensor(kernel))


@keras.saving.register_keras_serializable(package=PACKAGE)
class FastGradConv2D(keras.layers.Conv2D):
    """A ``Conv2D`` (same weights, same forward) with a fast kernel gradient for big kernels.

    Only stride 1, dilation 1, one group and channels_last use the fast path (the paper's final
    convolution); anything else falls back to the stock op, so the layer is always correct.
    ``model.fast_conv_grad = false`` builds a plain ``Conv2D`` instead.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.pop("grad_method", None)  # configs saved when there were three methods
        super().__init__(*args, **kwargs)

    @property
    def uses_fast_path(self) -> bool:
        return (tuple(self.strides) == (1, 1)
                and tuple(self.dilation_rate) == (1, 1) and self.groups == 1
                and self.data_format == "channels_last"
                and self.padding in ("same", "valid"))

    def convolution_op(self, inputs: Any, kernel: Any) -> Any:
        if not self.uses_fast_path or not on_tensorflow():
            return super().convolution_op(inputs, kernel)
        return fast_grad_conv2d(inputs, kernel, padding=self.padding)


# ----------------------------------------------------------------------------- spectral norm
def _l2_normalize(v: Any, eps: float = 1e-12) -> Any:
    return v / ops.sqrt(ops.maximum(ops.sum(ops.square(v)), eps))


class _SpectralNormMixin:
    """Power-iteration spectral normalization of ``self.kernel`` (reshaped to ``[-1, out]``)."""

    def __init__(self, *args: Any, spectral_norm: bool = True, power_iterations: int = 1,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spectral_norm = spectral_norm
        self.power_iterations = power_iterations

    def get_config(self) -> dict[str, Any]:
        # super() is the Keras layer this mixin is combined with, unknown to a type checker
        return {**super().get_config(), "spectral_norm": self.spectral_norm,  # type: ignore[misc]
                "power_iterations": self.power_iterations}

    def _build_sn(self: Any, out_dim: int) -> None:
        if self.spectral_norm:
            self.sn_u = self.add_weight(
                shape=(1, out_dim), name="sn_u", trainable=False,
                initializer=keras.initializers.RandomNormal(stddev=1.0, seed=None),
                aggregation="mean")

    def _normalized(self: Any, kernel: Any, training: bool | None) -> Any:
        """``kernel / sigma``; the estimate of ``u`` is updated only in training calls."""
        if not self.spectral_norm:
            return kernel
        w = ops.reshape(ops.cast(kernel, "float32"), (-1, kernel.shape[-1]))
        u = _l2_normalize(ops.convert_to_tensor(self.sn_u))
        v = u
        for _ in range(self.power_iterations):
            v = _l2_normalize(ops.matmul(u, ops.transpose(w)))
            u = _l2_normalize(ops.matmul(v, w))
        u = ops.stop_gradient(u)
        v = ops.stop_gradient(v)
        if training:
            self.sn_u.assign(u)
        sigma = ops.sum(ops.matmul(v, w) * u)
        return ops.cast(ops.cast(kernel, "float32") / sigma, kernel.dtype)

    def _saved_variables(self: Any) -> list[Any]:
        targets = [self.kernel]
        if getattr(self, "use_bias", False):
            targets.append(self.bias)
        if self.spectral_norm:
            targets.append(self.sn_u)
        return targets

    # Keras' Conv2D/Dense save only kernel and bias; keep u too so a reloaded model is identical.
    def save_own_variables(self: Any, store: Any) -> None:
        if self.built:
            for i, variable in enumerate(self._saved_variables()):
                store[str(i)] = variable

    def load_own_variables(self: Any, store: Any) -> None:
        if self.built:
            targets = self._saved_variables()
            if len(store.keys()) != len(targets):
                raise ValueError(f"layer {self.name!r} expected {len(targets)} variables, "
                                 f"found {len(store.keys())} in the saved file")
            for i, variable in enumerate(targets):
                variable.assign(store[str(i)])

    def sigma_estimate(self: Any) -> float:
        """Current power-iteration estimate of the kernel's largest singular value."""
        w = ops.reshape(ops.convert_to_tensor(self.kernel), (-1, self.kernel.shape[-1]))
        u = _l2_normalize(ops.convert_to_tensor(self.sn_u))
        v = _l2_normalize(ops.matmul(u, ops.transpose(w)))
        return float(ops.sum(ops.matmul(v, w) * u))


@keras.saving.register_keras_serializable(package=PACKAGE)
class SNConv2D(_SpectralNormMixin, keras.layers.Conv2D):
    """``Conv2D`` with optional spectral normalization of its kernel."""

    def build(self, input_shape: Any) -> None:
        super().build(input_shape)
        self._build_sn(self.filters)

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        kernel = self._normalized(self.kernel, training)
        outputs = self.convolution_op(inputs, kernel)
        if self.use_bias:
            outputs = ops.add(outputs, ops.reshape(self.bias, (1, 1, 1, self.filters)))
        return self.activation(outputs) if self.activation is not None else outputs


@keras.saving.register_keras_serializable(package=PACKAGE)
class SNDense(_SpectralNormMixin, keras.layers.Dense):
    """``Dense`` with optional spectral normalization of its kernel."""

    def build(self, input_shape: Any) -> None:
        super().build(input_shape)
        self._build_sn(self.units)

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        kernel = self._normalized(self.kernel, training)
        outputs = ops.matmul(inputs, ops.cast(kernel, inputs.dtype))
        if self.use_bias:
            outputs = ops.add(outputs, self.bias)
        return self.activation(outputs) if self.activation is not None else outputs


# ----------------------------------------------------------------------------- labels
@keras.saving.register_keras_serializable(package=PACKAGE)
class ClassEmbedding(_SpectralNormMixin, keras.layers.Layer):
    """A learned vector per class; one layer for both label modes.

    ``multi_hot=False``: input int ``[N]``, output ``E[label]``. ``multi_hot=True``: input float
    ``[N, C]``, output ``y @ E`` - the sum of the embeddings of the classes present, so an image
    with two findings gets both, and an all-zero vector ("No Finding") gets zeros.
    """

    def __init__(self, num_classes: int, dim: int, multi_hot: bool = False,
                 initializer: Any = "glorot_uniform", spectral_norm: bool = False,
                 power_iterations: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.dim = int(dim)
        self.multi_hot = bool(multi_hot)
        self.initializer = keras.initializers.get(initializer)
        self.spectral_norm = spectral_norm
        self.power_iterations = power_iterations

    def build(self, input_shape: Any) -> None:
        self.kernel = self.add_weight(shape=(self.num_classes, self.dim), name="embeddings",
                                      initializer=self.initializer)
        self._build_sn(self.dim)

    def call(self, labels: Any, training: bool | None = None) -> Any:
        table = self._normalized(self.kernel, training)
        if self.multi_hot:
            return ops.matmul(ops.cast(labels, table.dtype), table)
        return ops.take(table, ops.cast(labels, "int32"), axis=0)

    def compute_output_shape(self, input_shape: Any) -> tuple[Any, ...]:
        return (input_shape[0], self.dim)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_classes": self.num_classes, "dim": self.dim,
                "multi_hot": self.multi_hot,
                "initializer": keras.initializers.serialize(self.initializer),
                "spectral_norm": self.spectral_norm, "power_iterations": self.power_iterations}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ConditionalBatchNorm(keras.layers.Layer):
    """Batch normalization with a class-conditional gain and bias: ``(1 + g(y)) * x_hat + b(y)``.

    ``g`` and ``b`` are :class:`ClassEmbedding` tables initialized to zero, so an untrained layer is
    plain BN and a multi-hot all-zero label ("No Finding") keeps the unconditional affine map.
    Call as ``layer([x, y])``. At inference (``training=False``, e.g. the exported ONNX graph) the
    moving statistics are used. For an EMA copy of a generator, average only the trainable weights
    and COPY the non-trainable moving mean/variance from the live generator (or recompute them with
    :func:`refresh_batchnorm_statistics`): averaged moving statistics belong to no network.
    """

    def __init__(self, num_classes: int, multi_hot: bool = False, momentum: float = 0.9,
                 epsilon: float = 1e-5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.multi_hot = bool(multi_hot)
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.bn = keras.layers.BatchNormalization(center=False, scale=False, momentum=momentum,
                                                  epsilon=epsilon, name="bn")

    def build(self, input_shape: Any) -> None:
        x_shape, y_shape = input_shape
        channels = int(x_shape[-1])
        self.bn.build(x_shape)
        self.gain = ClassEmbedding(self.num_classes, channels, self.multi_hot,
                                   initializer="zeros", name="gain")
        self.bias = ClassEmbedding(self.num_classes, channels, self.multi_hot,
                                   initializer="zeros", name="bias")
        self.gain.build(y_shape)
        self.bias.build(y_shape)

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        x, y = inputs
        x_hat = self.bn(x, training=training)
        gain = ops.cast(self.gain(y), x_hat.dtype)[:, None, None, :]
        bias = ops.cast(self.bias(y), x_hat.dtype)[:, None, None, :]
        return x_hat * (1.0 + gain) + bias

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape[0]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_classes": self.num_classes,
                "multi_hot": self.multi_hot, "momentum": self.momentum, "epsilon": self.epsilon}


def refresh_batchnorm_statistics(model: keras.Model, batches: Any) -> int:
    """Recompute every BatchNormalization's moving mean/variance as an exact average over batches.

    ``batches`` yields model inputs (e.g. ``{"z": ..., "label": ...}``). Useful for an EMA
    generator, whose weights never ran in training mode ("standing statistics", BigGAN). Returns
    the number of batches used; the moving statistics are left untouched when there are none.
    """
    bns = [layer for layer in _all_layers(model)
           if isinstance(layer, keras.layers.BatchNormalization)]
    saved = [(bn.momentum, bn.moving_mean.numpy(), bn.moving_variance.numpy()) for bn in bns]
    sums: list[tuple[Any, Any] | None] = [None] * len(bns)
    count = 0
    try:
        for inputs in batches:
            for bn in bns:
                bn.momentum = 0.0  # moving stats := this batch's stats
            model(inputs, training=True)
            count += 1
            for i, bn in enumerate(bns):
                stats = (bn.moving_mean.numpy(), bn.moving_variance.numpy())
                prev = sums[i]
                sums[i] = stats if prev is None else (prev[0] + stats[0], prev[1] + stats[1])
    finally:
        for bn, (momentum, mean, var), total in zip(bns, saved, sums, strict=True):
            bn.momentum = momentum
            if count and total is not None:
                bn.moving_mean.assign(total[0] / count)
                bn.moving_variance.assign(total[1] / count)
            else:
                bn.moving_mean.assign(mean)
                bn.moving_variance.assign(var)
    return count


def _all_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every layer, nested ones included (Keras 3 ``_flatten_layers``)."""
    return list(model._flatten_layers(include_self=False, recursive=True))


# ----------------------------------------------------------------------------- upsampling
def _nearest_up2(x: tf.Tensor) -> tf.Tensor:
    """Nearest x2 by ``ResizeNearestNeighbor``, with an explicit gradient.

    The gradient of nearest x2 upsampling is a 2x2 sum-pooling. Spelling it out keeps training
    XLA-compatible (XLA has no ``ResizeNearestNeighborGrad``) and cheap; the forward op is
    unchanged, so the exported graph still holds one ``Resize``.
    """
    import tensorflow as tf


    @tf.custom_gradient
    def up(t: tf.Tensor) -> Any:
        # asymmetric/floor coordinates: exact for x2, and exported without the deprecated
        # ``tf_half_pixel_for_nn`` attribute that makes onnxruntime print warnings; static sizes
        # when known: the ONNX Resize then gets constant scales (no Shape/Slice chain per layer)
        # and onnxruntime's fast NCHWc upsampling kernel
        size = ([2 * t.shape[1], 2 * t.shape[2]] if t.shape[1] and t.shape[2]
                else 2 * tf.shape(t)[1:3])
        y = tf.raw_ops.ResizeNearestNeighbor(images=t, size=size,
                                             align_corners=False, half_pixel_centers=False)
        y = tf.ensure_shape(y, [t.shape[0], 2 * t.shape[1], 2 * t.shape[2], t.shape[3]])

        def grad(dy: tf.Tensor) -> tf.Tensor:
            shape = tf.shape(t)
            blocks = tf.reshape(dy, [shape[0], shape[1], 2, shape[2], 2, shape[3]])
            return tf.reduce_sum(blocks, axis=[2, 4])

        return y, grad

    return up(x)


@keras.saving.register_keras_serializable(package=PACKAGE)
class Upsample2x(keras.layers.Layer):
    """Nearest-neighbour x2 upsampling (NHWC); the one place the project upsamples.

    ``method``: "resize" (nearest neighbour by ``ResizeNearestNeighbor``; one ONNX ``Resize``) or
    "bilinear" (half-pixel centres; one ONNX ``Resize`` in linear
    mode) interpolates instead: nearest-neighbour copies leave a 2-pixel periodic pattern at the
    same place in every image, which a linear classifier of real vs synthetic images picks up
    (benchmarks/real_small_data.py).
    """

    def __init__(self, method: str = "resize", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if method not in UPSAMPLE_METHODS:
            raise ValueError(f"method must be one of {UPSAMPLE_METHODS}, got {method!r}")
        self.method = method

    def call(self, x: Any) -> Any:
        h, w = x.shape[1], x.shape[2]
        if self.method == "bilinear":
            if h is None or w is None:
                raise ValueError("Upsample2x(method='bilinear') needs static spatial dimensions")
            if on_tensorflow():
                import tensorflow as tf

                return tf.image.resize(x, [2 * h, 2 * w], method="bilinear")
            return ops.image.resize(x, (2 * h, 2 * w), interpolation="bilinear")
        if self.method == "resize" and (h is None or w is None):
            raise ValueError("Upsample2x(method='resize') needs static spatial dimensions")
        if on_tensorflow():
            return _nearest_up2(x)
        return ops.repeat(ops.repeat(x, 2, axis=1), 2, axis=2)

    def compute_output_shape(self, input_shape: Any) -> tuple[Any, ...]:
        n, h, w, c = input_shape
        return (n, None if h is None else 2 * h, None if w is None else 2 * w, c)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "method": self.method}


@keras.saving.register_keras_serializable(package=PACKAGE)
class MinibatchStdDev(keras.layers.Layer):
    """ProGAN's minibatch standard deviation: one extra channel holding, for each group of
    ``group_size`` consecutive images, the mean over features of their standard deviation.

    A generator that repeats itself makes groups with a small spread, which D can then see.
    Groups are consecutive images so that a batch built as ``concat([reals, fakes])`` never
    mixes reals and fakes in one group (the batch and each half must be multiples of the group).
    """

    def __init__(self, group_size: int = 4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.group_size = int(group_size)

    def call(self, x: Any) -> Any:
        shape = ops.shape(x)
        g, h, w, c = self.group_size, shape[1], shape[2], shape[3]
        groups = ops.reshape(ops.cast(x, "float32"), (-1, g, h, w, c))
        std = ops.sqrt(ops.var(groups, axis=1) + 1e-8)  # [N/g, H, W, C]
        spread = ops.mean(std, axis=(1, 2, 3))  # [N/g]
        channel = ops.repeat(spread, g, axis=0)[:, None, None, None] * ops.ones_like(x[..., :1])
        return ops.concatenate([x, ops.cast(channel, x.dtype)], axis=-1)

    def compute_output_shape(self, input_shape: Any) -> tuple[Any, ...]:
        return (*input_shape[:-1], input_shape[-1] + 1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "group_size": self.group_size}


@keras.saving.register_keras_serializable(package=PACKAGE)
class GlobalSumPooling2D(keras.layers.Layer):
    """Sum over H and W (NHWC); the projection discriminator's pooling (a sum, not a mean, as in
    Miyato & Koyama, so the head sees the evidence of every location)."""

    def call(self, x: Any) -> Any:
        return ops.sum(x, axis=(1, 2))

    def compute_output_shape(self, input_shape: Any) -> tuple[Any, ...]:
        return (input_shape[0], input_shape[-1])


def label_input_tensor(label_mode: str, num_classes: int) -> keras.KerasTensor:
    """The label ``keras.Input`` of a conditional network (names from :mod:`cxraug.contract`):
    int32 class index ``[N]`` or float32 multi-hot ``[N, C]``."""
    from ..contract import LABEL, LABELS

    if label_mode == "multi-hot":
        return keras.Input(shape=(num_classes,), dtype="float32", name=LABELS)
    return keras.Input(shape=(), dtype="int32", name=LABEL)

