"""DiffAugment (Zhao et al. 2020) and ADA's per-image choice, written with ``keras.ops`` so the
TensorFlow and JAX training steps share them; policies registered by name (``train.diffaugment``).

Random numbers come from a ``noise`` object with ``uniform(shape, minval, maxval, dtype)``: a
``tf.random.Generator`` in the TensorFlow step (its state is checkpointed), a :class:`KeyNoise`
over a JAX key in the JAX step. Keras is imported when an image is augmented, not when this module
is imported (recipes import the policy names).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: Policies in the order they are applied (colour first, then geometry), whatever order the
#: recipe lists them in.
ORDER = ("brightness", "contrast", "translation", "cutout")


def _ops() -> Any:
    from keras import ops

    return ops


def translation(x: Any, noise: Any, ratio: float = 0.125) -> Any:
    """Shift each image by up to ``ratio`` of its size, zero-filling what comes in."""
    ops = _ops()
    b, h, w = ops.shape(x)[0], x.shape[1], x.shape[2]
    sy, sx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = noise.uniform([b, 1], -sy, sy + 1, dtype="int32")
    dx = noise.uniform([b, 1], -sx, sx + 1, dtype="int32")
    rows = ops.arange(h, dtype="int32")[None, :] + dy
    cols = ops.arange(w, dtype="int32")[None, :] + dx
    c = x.shape[3]
    row_idx = ops.broadcast_to(ops.clip(rows, 0, h - 1)[:, :, None, None], (b, h, w, c))
    x = ops.take_along_axis(x, row_idx, axis=1)
    col_idx = ops.broadcast_to(ops.clip(cols, 0, w - 1)[:, None, :, None], (b, h, w, c))
    x = ops.take_along_axis(x, col_idx, axis=2)
    inside = (ops.cast((rows >= 0) & (rows < h), x.dtype)[:, :, None, None]
              * ops.cast((cols >= 0) & (cols < w), x.dtype)[:, None, :, None])
    return x * inside


def cutout(x: Any, noise: Any, ratio: float = 0.5) -> Any:
    """Zero a square of ``ratio`` of the image's size at a random place (clipped at borders)."""
    ops = _ops()
    b, h, w = ops.shape(x)[0], x.shape[1], x.shape[2]
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    oy = noise.uniform([b, 1], 0, h + (1 - ch % 2), dtype="int32") - ch // 2
    ox = noise.uniform([b, 1], 0, w + (1 - cw % 2), dtype="int32") - cw // 2
    ys = ops.arange(h, dtype="int32")[None, :] - oy
    xs = ops.arange(w, dtype="int32")[None, :] - ox
    in_y = ops.cast((ys >= 0) & (ys < ch), x.dtype)[:, :, None, None]
    in_x = ops.cast((xs >= 0) & (xs < cw), x.dtype)[:, None, :, None]
    return x * (1.0 - in_y * in_x)


def brightness(x: Any, noise: Any) -> Any:
    ops = _ops()
    return x + (noise.uniform([ops.shape(x)[0], 1, 1, 1], 0.0, 1.0, dtype=x.dtype) - 0.5)


def contrast(x: Any, noise: Any) -> Any:
    ops = _ops()
    mean = ops.mean(x, axis=(1, 2, 3), keepdims=True)
    return (x - mean) * (noise.uniform([ops.shape(x)[0], 1, 1, 1], 0.0, 1.0, dtype=x.dtype)
                         + 0.5) + mean


POLICIES: dict[str, Callable[[Any, Any], Any]] = {
    "translation": translation, "cutout": cutout, "brightness": brightness, "contrast": contrast,
}


def diff_augment(x: Any, policies: list[str], noise: Any, p: Any = None) -> Any:
    """Augment a batch differentiably, so G learns through it.

    Reals and fakes go through the same policy with independently drawn parameters per image, so
    D cannot tell reals by how they were augmented. With ``p`` (ADA), each policy is applied to
    each image with probability ``p``; without it, always.
    """
    ops = _ops()
    for name in ORDER:
        if name in policies:
            augmented = POLICIES[name](x, noise)
            if p is not None:
                chosen = noise.uniform([ops.shape(x)[0], 1, 1, 1], 0.0, 1.0,
                                       dtype="float32") < ops.cast(p, "float32")
                augmented = ops.where(chosen, augmented, x)
            x = augmented
    return x


class KeyNoise:
    """``noise`` over a JAX PRNG key, for traced (jitted) code: each draw splits the key, and
    :attr:`key` afterwards is the state to carry into the next step."""

    def __init__(self, key: Any) -> None:
        self.key = key

    def _next(self) -> Any:
        import jax

        self.key, sub = jax.random.split(self.key)
        return sub

    def uniform(self, shape: Any, minval: Any = 0.0, maxval: Any = 1.0,
                dtype: str = "float32") -> Any:
        import jax
        import jax.numpy as jnp

        shape = tuple(int(s) for s in shape)
        if jnp.issubdtype(jnp.dtype(dtype), jnp.integer):
            return jax.random.randint(self._next(), shape, minval, maxval, dtype=dtype)
        return jax.random.uniform(self._next(), shape, dtype=dtype, minval=minval,
                                  maxval=maxval)

    def normal(self, shape: Any, dtype: str = "float32") -> Any:
        import jax

        return jax.random.normal(self._next(), tuple(int(s) for s in shape), dtype=dtype)
