"""FastGradConv2D: the same forward pass as Conv2D and the same gradients as TensorFlow's own."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from cxraug.models import build_generator  # noqa: E402
from cxraug.models.layers import FastGradConv2D, fast_grad_conv2d, same_padding  # noqa: E402
from cxraug.recipe import ModelConfig, model_config  # noqa: E402

RTOL = 1e-4


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / (np.abs(np.asarray(b)).max()
                                                                 + 1e-30))


def _grads(layer: keras.layers.Layer, x: tf.Tensor) -> list[np.ndarray]:
    """Output and gradients of a non-linear loss w.r.t. input, kernel and bias."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        loss = tf.reduce_sum(tf.sin(y) * y)
    grads = tape.gradient(loss, [x, layer.kernel, layer.bias])
    return [y.numpy()] + [g.numpy() for g in grads]


def _pair(kernel: int, padding: str, x: tf.Tensor, filters: int = 3):
    fast = FastGradConv2D(filters, kernel, padding=padding)
    stock = keras.layers.Conv2D(filters, kernel, padding=padding)
    fast.build(x.shape)
    stock.build(x.shape)
    rng = np.random.default_rng(kernel)
    weights = [rng.normal(scale=0.1, size=w.shape).astype(np.float32) for w in fast.get_weights()]
    fast.set_weights(weights)
    stock.set_weights(weights)
    return fast, stock


def test_same_padding_is_tensorflows_asymmetric_split() -> None:
    assert same_padding(16) == (7, 8)
    assert same_padding(7) == (3, 3)
    assert same_padding(8) == (3, 4)


@pytest.mark.parametrize("kernel,padding", [(8, "same"), (7, "same"), (16, "same"),
                                            (3, "same"), (8, "valid"), (7, "valid")])
def test_gradients_equal_tensorflows(kernel: int, padding: str) -> None:
    x = tf.constant(np.random.default_rng(1).normal(size=(2, 24, 24, 8)).astype(np.float32))
    fast, stock = _pair(kernel, padding, x)
    assert fast.uses_fast_path
    names = ["output", "input grad", "kernel grad", "bias grad"]
    for name, a, b in zip(names, _grads(fast, x), _grads(stock, x), strict=True):
        assert a.shape == b.shape, name
        assert _rel(a, b) < RTOL, f"{name}: relative error {_rel(a, b):.2e}"


def test_non_square_input_and_many_filters_under_tf_function() -> None:
    x = tf.constant(np.random.default_rng(2).normal(size=(3, 20, 28, 5)).astype(np.float32))
    fast, stock = _pair(6, "same", x, filters=4)

    @tf.function
    def grads_fast(t: tf.Tensor) -> list[tf.Tensor]:
        with tf.GradientTape() as tape:
            tape.watch(t)
            loss = tf.reduce_sum(tf.tanh(fast(t)))
        return tape.gradient(loss, [t, fast.kernel])

    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(tf.tanh(stock(x)))
    ref = tape.gradient(loss, [x, stock.kernel])
    for a, b in zip(grads_fast(x), ref, strict=True):
        assert _rel(a.numpy(), b.numpy()) < RTOL


def test_strided_convolution_falls_back_to_the_stock_op() -> None:
    layer = FastGradConv2D(2, 5, strides=2, padding="same")
    layer.build((1, 16, 16, 3))
    assert not layer.uses_fast_path
    x = tf.random.normal((1, 16, 16, 3), seed=0)
    stock = keras.layers.Conv2D(2, 5, strides=2, padding="same")
    stock.build(x.shape)
    stock.set_weights(layer.get_weights())
    for a, b in zip(_grads(layer, x), _grads(stock, x), strict=True):
        assert _rel(a, b) < RTOL


def test_forward_is_tensorflows_own_and_old_configs_load() -> None:
    x = tf.random.normal((1, 8, 8, 2), seed=3)
    k = tf.random.normal((3, 3, 2, 1), seed=4)
    np.testing.assert_array_equal(fast_grad_conv2d(x, k).numpy(),
                                  tf.nn.conv2d(x, k, 1, "SAME").numpy())
    with pytest.raises(ValueError, match="padding"):
        fast_grad_conv2d(x, k, padding="causal")
    # a layer config saved when the gradient method was an option still loads
    layer = FastGradConv2D.from_config({**FastGradConv2D(1, 3).get_config(),
                                        "grad_method": "fft"})
    assert layer.kernel_size == (3, 3) and "grad_method" not in layer.get_config()


def test_paper_generator_uses_the_fast_final_convolution() -> None:
    g = build_generator(ModelConfig(arch="paper", image_size=128), 7)
    final = g.get_layer("final_conv")
    assert isinstance(final, FastGradConv2D) and final.uses_fast_path
    assert final.kernel_size == (16, 16) and final.filters == 1
    stock = build_generator(model_config(arch="paper", image_size=128, fast_conv_grad=False), 7)
    assert not isinstance(stock.get_layer("final_conv"), FastGradConv2D)
    assert stock.count_params() == g.count_params() == 1_704_799


@pytest.mark.parametrize("arch,size", [("paper", 64), ("paper-dcgan", 32)])
def test_paper_generator_gradient_equals_stock(arch: str, size: int) -> None:
    """The whole paper generator (8x8 final kernel at 64): same outputs, same weight gradients."""
    fast = build_generator(ModelConfig(arch=arch, image_size=size), 7)
    stock = build_generator(model_config(arch=arch, image_size=size, fast_conv_grad=False), 7)
    stock.set_weights(fast.get_weights())
    rng = np.random.default_rng(3)
    z = rng.normal(size=(2, 100)).astype(np.float32)
    inputs = {"z": z, "label": np.array([1, 5], dtype=np.int32)} if arch == "paper" else z
    results = []
    for model in (fast, stock):
        with tf.GradientTape() as tape:
            out = model(inputs, training=True)
            loss = tf.reduce_mean(tf.square(out - 0.3))
        results.append((out.numpy(), tape.gradient(loss, model.trainable_weights)))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    for var, a, b in zip(fast.trainable_weights, results[0][1], results[1][1], strict=True):
        a, b = tf.convert_to_tensor(a).numpy(), tf.convert_to_tensor(b).numpy()
        assert _rel(a, b) < RTOL, var.path
