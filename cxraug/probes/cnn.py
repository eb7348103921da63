"""A learned two-sample test: a small CNN, in numpy, asked to tell two image sets apart.

Why a CNN and why numpy. The linear tests (pixels, histograms, spectra) each look at one summary
of an image; a CNN learns its own, and finds what they miss: a faint fixed pattern, texture that
is too smooth, edges that are too soft. It is the closest thing to a person comparing images that
needs no pretrained network. It is written in numpy (4 strided convolutions by im2col + BLAS,
Adam, hand-written gradients) so that it gives the same answer wherever it runs: inside a
TensorFlow or a JAX training run (the realism tracker), in ``evaluate`` without TensorFlow, and on
a machine that has neither.

The network: ``Conv4x4/2 -> LeakyReLU`` down to 4x4 (16, 32, 64, 64 channels at 64x64),
global average pooling, one linear logit. Pixels enter as ``u8 / 127.5 - 1``, not standardized:
contrast and exposure count. Random horizontal flips during training. ``folds``-fold cross-
validated on equal numbers a side; the accuracy is over every held-out prediction, with Wilson's
95% interval. Images larger than ``MAX_SIDE`` are box-averaged to it first (the cost grows with
the area).

It runs with one BLAS thread. The first layer's weight gradient is a ``[16, 16384] @ [16384, 16]``
product, which threaded OpenBLAS splits over the long axis: 75-170 ms a call instead of 0.2 ms on
2 busy cores (the whole test 5-7x slower, benchmarks/cnn_probe.py), and a sum whose order, so whose
last bits, depend on the machine's thread count.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..blas import one_blas_thread
from .stats import TwoSample, wilson_interval

#: Images are box-averaged to at most this side before the CNN sees them.
MAX_SIDE = 128
#: Channels of the strided convolutions, from the input side (the last repeats when deeper).
WIDTHS = (16, 32, 64, 64)
KERNEL = 4
SLOPE = 0.2


def _im2col(x: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """``[B, H, W, C]`` -> rows ``[B*H/2*W/2, 16*C]`` of 4x4 / stride 2 / pad 1 patches, each row
    ordered (kernel row, kernel column, channel): every copy below moves whole channel runs."""
    b, h, w, c = x.shape
    ho, wo = h // 2, w // 2
    xp = np.zeros((b, h + 2, w + 2, c), dtype=x.dtype)
    xp[:, 1:-1, 1:-1, :] = x
    cols = np.empty((b, ho, wo, KERNEL, KERNEL, c), dtype=x.dtype)
    for ki in range(KERNEL):
        for kj in range(KERNEL):
            cols[:, :, :, ki, kj, :] = xp[:, ki:ki + 2 * ho:2, kj:kj + 2 * wo:2, :]
    return cols.reshape(b * ho * wo, KERNEL * KERNEL * c), (b, h, w, c, ho, wo)


def _col2im(cols: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The adjoint of :func:`_im2col`: patch gradients summed back into ``[B, H, W, C]``."""
    b, h, w, c, ho, wo = shape
    g = cols.reshape(b, ho, wo, KERNEL, KERNEL, c)
    out = np.zeros((b, h + 2, w + 2, c), dtype=cols.dtype)
    for ki in range(KERNEL):
        for kj in range(KERNEL):
            out[:, ki:ki + 2 * ho:2, kj:kj + 2 * wo:2, :] += g[:, :, :, ki, kj, :]
    return out[:, 1:-1, 1:-1, :]


class TinyCnn:
    """The two-sample CNN: parameters, forward with a cache, backward, Adam."""

    def __init__(self, side: int, rng: np.random.Generator) -> None:
        self.params: list[np.ndarray] = []
        cin, s, i = 1, side, 0
        while s > 4:
            cout = WIDTHS[min(i, len(WIDTHS) - 1)]
            fan_in = cin * KERNEL * KERNEL
            w = (rng.standard_normal((fan_in, cout)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
            # drawn in (channel, kernel row, kernel column) order, kept in im2col's order
            self.params.append(np.ascontiguousarray(w.reshape(cin, KERNEL, KERNEL, cout)
                                                    .transpose(1, 2, 0, 3).reshape(fan_in, cout)))
            self.params.append(np.zeros(cout, np.float32))
            cin, s, i = cout, s // 2, i + 1
        self.params.append((rng.standard_normal((cin, 1)) / np.sqrt(cin)).astype(np.float32))
        self.params.append(np.zeros(1, np.float32))
        self._m = [np.zeros_like(p) for p in self.params]
        self._v = [np.zeros_like(p) for p in self.params]
        self._t = 0

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, list]:
        cache: list[tuple[Any, ...]] = []
        n_conv = len(self.params) // 2 - 1
        for k in range(n_conv):
            w, b = self.params[2 * k], self.params[2 * k + 1]
            cols, shape = _im2col(x)
            pre = cols @ w
            pre += b
            act = np.maximum(pre, SLOPE * pre)  # leaky ReLU (SLOPE < 1)
            cache.append((cols, shape, pre > 0))
            x = act.reshape(shape[0], shape[4], shape[5], -1)
        pooled = x.mean(axis=(1, 2))
        cache.append((pooled, x.shape))
        w, b = self.params[-2], self.params[-1]
        return (pooled @ w + b)[:, 0], cache

    def backward(self, dlogit: np.ndarray, cache: list) -> list[np.ndarray]:
        grads: list[np.ndarray] = [np.empty(0)] * len(self.params)
        pooled, xshape = cache[-1]
        w = self.params[-2]
        grads[-2] = pooled.T @ dlogit[:, None]
        grads[-1] = dlogit.sum(keepdims=True)
        dpool = dlogit[:, None] @ w.T  # [B, C]
        b, h, wd, c = xshape
        dx = np.broadcast_to(dpool[:, None, None, :] / (h * wd), xshape)
        for k in range(len(cache) - 2, -1, -1):
            cols, shape, positive = cache[k]
            d = dx.reshape(-1, dx.shape[-1])
            dpre = np.where(positive, d, SLOPE * d)
            grads[2 * k] = cols.T @ dpre
            grads[2 * k + 1] = dpre.sum(0)
            if k > 0:
                dx = _col2im(dpre @ self.params[2 * k].T, shape)
        return grads

    def adam(self, grads: list[np.ndarray], lr: float, beta1: float = 0.9,
             beta2: float = 0.999, eps: float = 1e-8) -> None:
        self._t += 1
        c1, c2 = 1 - beta1 ** self._t, 1 - beta2 ** self._t
        for p, g, m, v in zip(self.params, grads, self._m, self._v, strict=True):
            m *= beta1
            m += (1 - beta1) * g
            v *= beta2
            v += (1 - beta2) * g * g
            p -= (lr * (m / c1) / (np.sqrt(v / c2) + eps)).astype(np.float32)


def _prepare(images: np.ndarray) -> np.ndarray:
    """uint8 (or [0, 255] float) ``[N, H, W(, 1)]`` -> float32 ``[N, S, S, 1]`` in [-1, 1]."""
    x = np.asarray(images)
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    x = x.astype(np.float32)
    side = x.shape[1]
    if side > MAX_SIDE:
        f = side // MAX_SIDE
        x = x[:, :f * MAX_SIDE, :f * MAX_SIDE].reshape(
            len(x), MAX_SIDE, f, MAX_SIDE, f).mean(axis=(2, 4))
    return (x / 127.5 - 1.0)[..., None]


def train_cnn(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, epochs: int,
              batch: int = 16, lr: float = 2e-3) -> TinyCnn:
    """Fit :class:`TinyCnn` to images ``x`` ``[N, S, S, 1]`` and 0/1 targets ``y`` (BCE)."""
    net = TinyCnn(x.shape[1], rng)
    n = len(x)
    for _ in range(epochs):
        order = rng.permutation(n)
        for s in range(0, n, batch):
            idx = order[s:s + batch]
            xb = x[idx]
            flip = rng.random(len(idx)) < 0.5
            xb = np.where(flip[:, None, None, None], xb[:, :, ::-1], xb)
            logit, cache = net.forward(xb)
            prob = 0.5 * (1.0 + np.tanh(0.5 * logit))  # the sigmoid, without exp's overflow
            grads = net.backward(((prob - y[idx]) / len(idx)).astype(np.float32), cache)
            net.adam(grads, lr)
    return net


def cnn_two_sample_test(a: np.ndarray, b: np.ndarray, folds: int = 5, seed: int = 0,
                        epochs: int = 16, max_per_side: int = 500) -> TwoSample:
    """Cross-validated accuracy of :class:`TinyCnn` telling images ``a`` from images ``b``
    (uint8 ``[N, H, W]``, same size). The larger set is subsampled to the smaller one's size (a
    fixed ``seed``) and both to at most ``max_per_side``; folds are stratified. Each held-out
    image is scored with and without a horizontal flip (the mean logit decides)."""
    with one_blas_thread():
        return _cnn_two_sample_test(a, b, folds, seed, epochs, max_per_side)


def _cnn_two_sample_test(a: np.ndarray, b: np.ndarray, folds: int, seed: int, epochs: int,
                         max_per_side: int) -> TwoSample:
    rng = np.random.default_rng(seed)
    n = min(len(a), len(b), max_per_side)
    if n < folds:
        raise ValueError(f"CNN two-sample test needs at least {folds} images a side, got {n}")
    xa = _prepare(np.asarray(a)[rng.permutation(len(a))[:n]])
    xb = _prepare(np.asarray(b)[rng.permutation(len(b))[:n]])
    if xa.shape[1:] != xb.shape[1:]:
        raise ValueError(f"image sizes differ: {xa.shape[1:3]} and {xb.shape[1:3]}")
    x = np.concatenate([xa, xb])
    y = np.concatenate([np.zeros(n, np.float32), np.ones(n, np.float32)])
    fold_of = np.concatenate([rng.permutation(n) % folds, rng.permutation(n) % folds])
    correct = 0
    for k in range(folds):
        test = fold_of == k
        net = train_cnn(x[~test], y[~test], rng, epochs)
        xt = x[test]
        logit = 0.5 * (net.forward(xt)[0] + net.forward(xt[:, :, ::-1])[0])
        correct += int(np.sum((logit > 0) == (y[test] > 0.5)))
    low, high = wilson_interval(correct, 2 * n)
    return TwoSample(accuracy=correct / (2 * n), low=low, high=high, n_per_side=n)
