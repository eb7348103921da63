"""Which backend a run trains on, and its trainer: the factory beside the run driver
(:mod:`.loop`). The only module that names the backends' trainers (:mod:`.step_tf`,
:mod:`.step_jax`), each imported when chosen, so that neither backend loads the other and
:mod:`.trainer` (what they share) imports neither.
"""

from __future__ import annotations

import keras

from ..errors import CxrError
from ..recipe import Recipe
from .trainer import TrainerBase


def backend() -> str:
    return keras.backend.backend()


def make_trainer(recipe: Recipe, num_classes: int, devices: int | None = None) -> TrainerBase:
    """The trainer of the backend Keras runs on (``KERAS_BACKEND``: tensorflow or jax), on the
    first ``devices`` accelerators (default: all)."""
    name = backend()
    if name == "tensorflow":
        from .step_tf import TFTrainer, pick_strategy

        return TFTrainer(recipe, num_classes, strategy=pick_strategy(devices))
    if name == "jax":
        from .step_jax import JaxTrainer

        return JaxTrainer(recipe, num_classes, devices=devices)
    raise CxrError(f"KERAS_BACKEND={name}: cxraug trains on tensorflow or jax; set "
                   "KERAS_BACKEND=tensorflow (the default) or jax")
