"""cxraug: conditional-GAN augmentation for chest X-ray data sets in NIH ChestX-ray14 format.

The library API (README, "From Python"): every name below is imported on first use, so
``import cxraug`` stays cheap and loads neither TensorFlow nor onnxruntime.

* :func:`load_generator` -> :class:`~cxraug.synthesis.draw.Generator`: ``generate(labels, n,
  seed)`` (uint8 images + multi-hot labels, augment's pixels), ``stream``, ``torch_dataset``,
  ``tf_dataset``;
* the stages the CLI runs, with the same options, returning their results:
  :func:`prepare` (-> ``PrepareResult``), :func:`augment` (-> ``AugmentResult``),
  :func:`evaluate` (-> ``EvaluateResult``);
* :class:`CxrError`: what every bad input raises, with a one-line message naming the fix.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> "module:attribute" (imported when first used)
_API = {
    "load_generator": "cxraug.synthesis.draw:load_generator",
    "Generator": "cxraug.synthesis.draw:Generator",
    "Drawn": "cxraug.synthesis.draw:Drawn",
    "prepare": "cxraug.data.cache:prepare",
    "augment": "cxraug.synthesis.augment:augment",
    "evaluate": "cxraug.evaluation.report:evaluate",
    "CxrError": "cxraug.errors:CxrError",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'cxraug' has no attribute {name!r}")
    module, _, attr = _API[name].partition(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
