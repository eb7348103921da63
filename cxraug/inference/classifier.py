"""The classifier's feature reader: features and class probabilities through onnxruntime.

Below the stages: evaluate embeds real and synthetic images with it and augment's label judge
(:mod:`cxraug.synthesis.filters`) asks it for class probabilities. It reads a folder written by
``cxraug train-classifier`` (:mod:`cxraug.evaluation.classifier` trains it), a user's own ONNX
feature model or, importing TensorFlow only then, a Keras one.

The folder: ``model.onnx`` (input ``image`` ``[N, H, W, 1]`` float32 in ``[-1, 1]``; outputs
``probs`` ``[N, C]`` and ``features`` ``[N, 128]``) and ``classifier.json``, which marks it
complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CxrError
from .session import session_options

CLASSIFIER_JSON = "classifier.json"
ONNX_NAME = "model.onnx"


# ------------------------------------------------------------------------------- image helpers
def to_unit_range(images: np.ndarray) -> np.ndarray:
    """uint8 ``[N, H, W]`` (0..255) -> float32 in ``[-1, 1]``, the generator's convention."""
    return np.asarray(images, dtype=np.float32) / 127.5 - 1.0


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 ``[N, H, W]`` to ``size x size`` (area filter down, bicubic up)."""
    images = np.asarray(images)
    if images.shape[1:] == (size, size):
        return images
    from PIL import Image

    method = Image.Resampling.BOX if images.shape[1] >= size else Image.Resampling.BICUBIC
    return np.stack([np.asarray(Image.fromarray(img).resize((size, size), method))
                     for img in images]).astype(np.uint8)


def quiet_tensorflow() -> Any:
    """``import tensorflow`` with its C++ log notices off (the Keras reader and the trainer)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    return tf


# ------------------------------------------------------------------------ inference (no TF)
class ClassifierFeatures:
    """Features and class probabilities from a classifier folder, an ONNX or a Keras model.

    * a folder written by ``cxraug train-classifier`` (``model.onnx`` + ``classifier.json``);
    * a user's ONNX model: one image input, ``[N, H, W, 1]`` or ``[N, 1, H, W]`` (3 channels are
      fed the gray image three times), float32 in ``[-1, 1]``; the output named ``features`` (else
      the first 2-D output) gives features and one named ``probs`` (optional) the judge's
      probabilities, in the order of the ``class_names`` metadata entry (JSON list);
    * a Keras ``.keras`` model with the same conventions (imports TensorFlow, only then).

    Inputs of :meth:`embed` are uint8 ``[N, H, W]`` at any size; they are resized to the model's.
    """

    def __init__(self, path: str | os.PathLike, default_size: int | None = None,
                 batch_size: int = 256, spinning: bool = True) -> None:
        """``spinning=False``: idle onnxruntime threads sleep (augment's judge shares the cores
        with the generator's sessions and the PNG writers)."""
        path = Path(path)
        self.path = path
        self._spinning = spinning
        self.batch_size = batch_size
        self.info: dict[str, Any] = {}
        self.class_names: list[str] | None = None
        self._keras: Any = None
        self._session: Any = None
        if path.is_dir():
            meta = path / CLASSIFIER_JSON
            if not meta.is_file():
                raise CxrError(f"{path}: no {CLASSIFIER_JSON}; train one with "
                               "`cxraug train-classifier` or pass an ONNX/Keras model file")
            try:
                self.info = json.loads(meta.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise CxrError(f"{meta}: unreadable ({exc}); retrain the classifier") from exc
            self.class_names = list(self.info.get("class_names") or []) or None
            model_file = path / ONNX_NAME
            if not model_file.is_file():
                raise CxrError(f"{model_file}: missing; retrain with `cxraug train-classifier`")
            self._open_onnx(model_file)
        elif not path.is_file():
            raise CxrError(f"{path}: classifier not found; pass a classifier folder, .onnx or "
                           ".keras file")
        elif path.suffix.lower() == ".onnx":
            self._open_onnx(path)
        elif path.suffix.lower() in (".keras", ".h5"):
            self._open_keras(path)
        else:
            raise CxrError(f"{path}: unknown classifier format; pass a folder from "
                           "`cxraug train-classifier`, an .onnx or a .keras file")
        size = self.info.get("image_size") or self._static_size or default_size
        if not size:
            raise CxrError(f"{path}: the model's input size is dynamic and not in its metadata")
        self.image_size = int(size)

    # ---------------------------------------------------------------------------- loaders
    def _open_onnx(self, path: Path) -> None:
        import onnxruntime as ort

        ort.set_default_logger_severity(3)
        try:
            self._session = ort.InferenceSession(
                str(path), sess_options=session_options(spinning=self._spinning),
                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise CxrError(f"{path}: not a readable ONNX model ({exc})") from exc
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise CxrError(f"{path}: a feature model needs exactly one image input, "
                           f"found {[i.name for i in inputs]}")
        self._input = inputs[0].name
        shape = list(inputs[0].shape)
        if len(shape) != 4:
            raise CxrError(f"{path}: input {self._input} must be 4-D [N, H, W, C] or [N, C, H, W]")
        self._channels_first = isinstance(shape[1], int) and shape[1] in (1, 3) and not (
            isinstance(shape[3], int) and shape[3] in (1, 3))
        c_axis = 1 if self._channels_first else 3
        self._channels = shape[c_axis] if isinstance(shape[c_axis], int) else 1
        hw = shape[2:] if self._channels_first else shape[1:3]
        self._static_size = hw[0] if isinstance(hw[0], int) else None
        outputs = self._session.get_outputs()
        names = [o.name for o in outputs]
        two_d = [o.name for o in outputs if len(o.shape) == 2]
        self._features = "features" if "features" in names else (two_d[0] if two_d else None)
        if self._features is None:
            raise CxrError(f"{path}: no 2-D output to use as features (outputs: {names}); "
                           "name one 'features'")
        self._probs = "probs" if "probs" in names else None
        props = self._session.get_modelmeta().custom_metadata_map
        if not self.info and "cxraug_classifier" in props:
            self.info = json.loads(props["cxraug_classifier"])
        if self.class_names is None and "class_names" in props:
            try:
                self.class_names = list(json.loads(props["class_names"]))
            except json.JSONDecodeError:
                self.class_names = None

    def _open_keras(self, path: Path) -> None:
        quiet_tensorflow()
        import keras

        try:
            self._keras = keras.models.load_model(path, compile=False)
        except Exception as exc:  # Keras raises many types for a bad file
            raise CxrError(f"{path}: not a readable Keras model ({exc})") from exc
        shape = list(self._keras.input.shape)
        self._channels_first = False
        self._channels = shape[3] or 1
        self._static_size = shape[1]
        self._features, self._probs = "features", None
        out = self._keras.output
        if isinstance(out, dict):
            if "features" not in out:
                raise CxrError(f"{path}: Keras model outputs {list(out)}; one must be 'features'")
            self._probs = "probs" if "probs" in out else None

    # ---------------------------------------------------------------------------- inference
    @property
    def prevalence(self) -> np.ndarray | None:
        """Training prevalence per class (from classifier.json), for balanced decisions."""
        prev = self.info.get("train_prevalence")
        if not prev or self.class_names is None:
            return None
        return np.array([max(float(prev.get(c, 0.0)), 1e-6) for c in self.class_names])

    @property
    def has_judge(self) -> bool:
        """Whether the model gives class probabilities with known class names."""
        return self._probs is not None and self.class_names is not None

    def _run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        x = x[:, None] if self._channels_first else x[..., None]
        if self._channels == 3:
            x = np.repeat(x, 3, axis=1 if self._channels_first else 3)
        if self._session is not None:
            wanted = [self._features] + ([self._probs] if self._probs else [])
            res = self._session.run(wanted, {self._input: x})
            return res[0], (res[1] if self._probs else None)
        out = self._keras(x, training=False)
        if isinstance(out, dict):
            return np.asarray(out["features"]), (np.asarray(out["probs"]) if self._probs else None)
        return np.asarray(out), None

    def embed(self, images_u8: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Features ``[N, D]`` (float64) and probabilities ``[N, C]`` (or ``None``)."""
        images_u8 = np.asarray(images_u8)
        feats, probs = [], []
        for s in range(0, len(images_u8), self.batch_size):
            chunk = resize_images(images_u8[s:s + self.batch_size], self.image_size)
            f, p = self._run(to_unit_range(chunk))
            feats.append(np.asarray(f, np.float64).reshape(len(chunk), -1))
            if p is not None:
                probs.append(np.asarray(p, np.float64))
        if not feats:
            return np.zeros((0, 0)), None
        return np.concatenate(feats), (np.concatenate(probs) if probs else None)
