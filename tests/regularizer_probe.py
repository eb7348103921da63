"""Run by tests/test_training.py in one fresh process per backend (``KERAS_BACKEND`` is fixed
when Keras is imported): a toy regularizer registered the way a new penalty would be, one entry
of ``REGULARIZERS`` (here borrowing ``train.r1_gamma`` as its weight, in place of R1), must be
picked up by that backend's D step. Prints one JSON line: the step's numbers with and without
it, and the penalty it should have added."""

from __future__ import annotations

import json
from typing import Any

import keras
import numpy as np

from cxraug.losses import REGULARIZERS, PenaltyInputs, Regularizer
from cxraug.recipe import load_recipe
from cxraug.training.backends import make_trainer

TINY = {"model.image_size": 32, "model.latent_dim": 16, "model.embedding_dim": 8,
        "model.g_channels": 32, "model.d_channels": 8, "train.batch_size": 8}
WEIGHT = 0.25


def _toy(inputs: PenaltyInputs) -> Any:
    """The reals' energy: it does not depend on D, so D's update (and G's loss) stay as they
    were while D's loss grows by exactly WEIGHT x its mean; the zero terms check that the
    backend gave the gradient and the logits it was asked for."""
    ops = keras.ops
    energy = ops.sum(ops.square(inputs.real), axis=(1, 2, 3))
    return (energy + 0.0 * ops.sum(inputs.real_grads, axis=(1, 2, 3))
            + 0.0 * ops.reshape(inputs.real_logits, (-1,)))


def step(weight: float) -> dict[str, float]:
    recipe = load_recipe("smoke-32", overrides={**TINY, "train.r1_gamma": weight})
    keras.utils.set_random_seed(0)
    trainer = make_trainer(recipe, 7, devices=1)
    assert [reg.name for reg, _ in trainer.regularizers] == (["toy"] if weight else [])
    rng = np.random.default_rng(1)
    real = rng.uniform(-1, 1, (8, 32, 32, 1)).astype(np.float32)
    labels = (np.arange(8) % 7).astype(np.int32)
    return {k: float(v) for k, v in trainer.train_step(real, labels).items()}


def main() -> None:
    del REGULARIZERS["r1"]
    REGULARIZERS["toy"] = Regularizer("toy", "r1_gamma", "the reals' energy (a test)",
                                      per_example=_toy, needs_real_grads=True)
    real = np.random.default_rng(1).uniform(-1, 1, (8, 32, 32, 1)).astype(np.float32)
    expected = WEIGHT * float(np.sum(np.square(real.astype(np.float64))) / 8)
    print(json.dumps({"backend": keras.backend.backend(), "without": step(0.0),
                      "with": step(WEIGHT), "penalty": expected}))


if __name__ == "__main__":
    main()
