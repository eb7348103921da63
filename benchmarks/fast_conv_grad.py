"""Kernel gradient of the paper's final convolution: TensorFlow's stock op against FastGradConv2D.

The paper's generator ends in ``Conv2D(1, 16x16, same)`` over 128x128x128 features. This times,
in one run on the same machine, for a batch of 8 (the numbers in docs/BENCHMARKS.md):

* the forward convolution,
* TensorFlow's ``Conv2DBackpropFilter`` (what ``Conv2D`` uses for its kernel gradient),
* cxraug's FFT cross-correlation and batch/channel-swapped convolution,
* TensorFlow's ``Conv2DBackpropInput`` against cxraug's flipped-kernel convolution,
* the full backward pass (input + kernel gradient) of ``Conv2D`` against ``FastGradConv2D``,

checks that the results agree, and prints the speed-up. The stock filter gradient takes minutes on
2 CPU cores; ``--skip-stock`` leaves it out.

    python benchmarks/fast_conv_grad.py [--batch 8] [--size 128] [--kernel 16] [--skip-stock]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import tensorflow as tf

from cxraug.models.layers import (
    conv2d_filter_grad_fft,
    conv2d_filter_grad_swap,
    conv2d_input_grad,
    fast_grad_conv2d,
    same_padding,
)


def _time(fn, *args, repeat: int = 3) -> tuple[float, np.ndarray]:
    out = fn(*args)  # trace / warm up
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn(*args)
        out = [o.numpy() for o in out] if isinstance(out, (list, tuple)) else out.numpy()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--channels", type=int, default=128)
    ap.add_argument("--kernel", type=int, default=16)
    ap.add_argument("--skip-stock", action="store_true")
    args = ap.parse_args()
    n, s, c, k = args.batch, args.size, args.channels, args.kernel
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(n, s, s, c)).astype(np.float32))
    w = tf.constant(rng.normal(scale=0.01, size=(k, k, c, 1)).astype(np.float32))
    dy = tf.constant(rng.normal(size=(n, s, s, 1)).astype(np.float32))
    pads = (same_padding(k), same_padding(k))
    print(f"devices: {[d.device_type for d in tf.config.list_logical_devices()]}, "
          f"threads: intra={tf.config.threading.get_intra_op_parallelism_threads()}")
    print(f"shape: x {n}x{s}x{s}x{c}, kernel {k}x{k}x{c}x1, 'same', stride 1")

    fwd = tf.function(lambda a, b: tf.nn.conv2d(a, b, 1, "SAME"))
    t_fwd, _ = _time(fwd, x, w)
    fft = tf.function(lambda a, g: conv2d_filter_grad_fft(a, g, (k, k), pads))
    swap = tf.function(lambda a, g: conv2d_filter_grad_swap(a, g, (k, k), pads))
    t_fft, g_fft = _time(fft, x, dy)
    t_swap, g_swap = _time(swap, x, dy)
    dx_flip = tf.function(lambda g, b: conv2d_input_grad(g, b, pads))
    t_dx, dx_ours = _time(dx_flip, dy, w)
    dx_stock_fn = tf.function(lambda g, b: tf.raw_ops.Conv2DBackpropInput(
        input_sizes=[n, s, s, c], filter=b, out_backprop=g, strides=[1, 1, 1, 1],
        padding="SAME"))
    t_dx_stock, dx_ref = _time(dx_stock_fn, dy, w, repeat=1)

    def backward(conv):
        @tf.function
        def run(a, b):
            with tf.GradientTape() as tape:
                tape.watch([a, b])
                y = conv(a, b)
            return tape.gradient(y, [a, b], output_gradients=dy)
        return run

    t_fast_bwd, (dx_fast, dk_fast) = _time(
        backward(lambda a, b: fast_grad_conv2d(a, b, "SAME", "fft")), x, w)
    scale = np.abs(g_fft).max()
    print(f"forward conv:                     {t_fwd:8.3f} s")
    print(f"kernel grad, FFT (cxraug):        {t_fft:8.3f} s")
    print(f"kernel grad, swapped conv:        {t_swap:8.3f} s   "
          f"max rel. diff vs FFT {np.abs(g_swap - g_fft).max() / scale:.1e}")
    print(f"input grad, TF stock:             {t_dx_stock:8.3f} s")
    print(f"input grad, flipped conv (cxraug):{t_dx:8.3f} s   "
          f"max rel. diff vs stock {np.abs(dx_ours - dx_ref).max() / np.abs(dx_ref).max():.1e}")
    print(f"FastGradConv2D full backward:     {t_fast_bwd:8.3f} s")
    if args.skip_stock:
        return
    stock = tf.function(lambda a, g: tf.raw_ops.Conv2DBackpropFilter(
        input=a, filter_sizes=[k, k, c, 1], out_backprop=g, strides=[1, 1, 1, 1],
        padding="SAME"))
    t_stock, g_stock = _time(stock, x, dy, repeat=1)
    err = np.abs(g_fft - g_stock).max() / np.abs(g_stock).max()
    print(f"kernel grad, TF stock:            {t_stock:8.3f} s   "
          f"max rel. diff FFT vs stock {err:.1e}")
    t_stock_bwd, (dx_stock, _) = _time(
        backward(lambda a, b: tf.nn.conv2d(a, b, 1, "SAME")), x, w, repeat=1)
    dx_err = np.abs(dx_fast - dx_stock).max() / np.abs(dx_stock).max()
    print(f"Conv2D full backward (stock):     {t_stock_bwd:8.3f} s   "
          f"input-grad max rel. diff {dx_err:.1e}")
    print(f"speed-up, kernel gradient:        {t_stock / t_fft:8.1f}x")
    print(f"speed-up, full backward:          {t_stock_bwd / t_fast_bwd:8.1f}x")


if __name__ == "__main__":
    main()
