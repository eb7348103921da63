"""The generator's interface, written once and read by every stage (NO TensorFlow, no onnx).

Keras generators (``cxraug.models``), the training loop, sampling, the ONNX export and the
onnxruntime reader (``cxraug.inference.generator``) all take their input and output names, label
modes and metadata keys from here, so that none of them can drift from the others.

* ``z``: float32 ``[N, latent_dim]``;
* ``label``: the class index, int (int32 in Keras, int64 in ONNX) ``[N]``, label mode ``index``;
* ``labels``: float32 multi-hot ``[N, C]``, label mode ``multi-hot``;
* no label input at all for an unconditional architecture (label mode ``none``);
* output ``image``: float32 ``[N, H, W, 1]`` in ``[-1, 1]``.
"""

from __future__ import annotations

from typing import Any

Z = "z"
LABEL = "label"
LABELS = "labels"
IMAGE = "image"

#: What a recipe may ask for; ``none`` is what an unconditional architecture has instead.
RECIPE_LABEL_MODES = ("index", "multi-hot")
LABEL_MODES = (*RECIPE_LABEL_MODES, "none")

#: The generator's inputs per label mode, in order.
INPUTS: dict[str, tuple[str, ...]] = {"index": (Z, LABEL), "multi-hot": (Z, LABELS), "none": (Z,)}

#: ``metadata_props`` every exported generator has, in the order they are written (strings;
#: JSON where structured); :data:`RUN_META_KEYS` follow when the export comes from a run.
META_KEYS = ("cxraug_version", "class_names", "latent_dim", "image_size", "label_mode", "recipe",
             "recipe_name", "arch", "data_fingerprint", "epoch", "step", "exported_at")
RUN_META_KEYS = ("view", "train_images", "checkpoint", "weights")


def label_input(label_mode: str) -> str | None:
    """The name of the label input for a label mode (``None``: unconditional)."""
    if label_mode not in INPUTS:
        raise ValueError(f"unknown label mode {label_mode!r}; expected one of {LABEL_MODES}")
    names = INPUTS[label_mode]
    return names[1] if len(names) > 1 else None


def label_mode_of(model: Any) -> str:
    """The label mode a model config's generator really has: ``none`` for an unconditional
    architecture (its ``label_mode`` field is then ignored), else the recipe's."""
    from .architectures import architecture

    return model.label_mode if architecture(model.arch).conditional else "none"


def inputs_for(label_mode: str, z: Any, labels: Any) -> Any:
    """What a Keras generator of this label mode is called with."""
    name = label_input(label_mode)
    return z if name is None else {Z: z, name: labels}
