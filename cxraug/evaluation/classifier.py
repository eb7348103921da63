"""The chest X-ray feature network: a compact CNN trained by cxraug, used through ONNX.

Why our own network: no ImageNet/Inception weights can be downloaded here, and ImageNet features
are a poor fit for radiographs anyway. :func:`train_classifier` trains a small multi-label CNN on a
cache's training split (patient-level validation on its val split), keeps the epoch with the best
mean validation AUROC and saves it as ``model.keras`` and ``model.onnx`` (input ``image``
``[N, H, W, 1]`` float32 in ``[-1, 1]``; outputs ``probs`` ``[N, C]`` and ``features``
``[N, 128]``) with ``classifier.json``. :class:`cxraug.inference.classifier.ClassifierFeatures`
(below the stages: evaluate and augment's judge) reads that folder (or a user's own ONNX or Keras
feature model) with onnxruntime, so evaluation needs no TensorFlow.

TensorFlow is imported only inside the functions that train or read a ``.keras`` model.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import CxrError
from ..inference.classifier import (
    CLASSIFIER_JSON,
    ONNX_NAME,
    ClassifierFeatures,
    resize_images,
    to_unit_range,
)
from ..inference.classifier import quiet_tensorflow as _quiet_tensorflow
from ..io_utils import write_json_atomic
from .metrics import auroc

FEATURE_DIM = 128
KERAS_NAME = "model.keras"
FORMAT = "cxraug-classifier-1"


# ------------------------------------------------------------------------------- image helpers
def augment_batch(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Light augmentation of float ``[B, H, W]`` in [-1, 1]: small shifts, brightness, contrast.

    No flips: a mirrored chest puts the heart on the wrong side, which is not a plausible image.
    """
    b, h, w = images.shape
    pad = max(1, h // 16)
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
    dy = rng.integers(0, 2 * pad + 1, size=b)
    dx = rng.integers(0, 2 * pad + 1, size=b)
    out = np.stack([padded[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
    contrast = rng.uniform(0.85, 1.15, size=(b, 1, 1)).astype(np.float32)
    bright = rng.uniform(-0.1, 0.1, size=(b, 1, 1)).astype(np.float32)
    mean = out.mean(axis=(1, 2), keepdims=True)
    return np.clip((out - mean) * contrast + mean + bright, -1.0, 1.0).astype(np.float32)


def per_class_auroc(y_true: np.ndarray, probs: np.ndarray) -> list[float | None]:
    """AUROC of each output column; ``None`` where a class has no positive or no negative."""
    out: list[float | None] = []
    for c in range(y_true.shape[1]):
        value = auroc(y_true[:, c], probs[:, c])
        out.append(None if np.isnan(value) else round(float(value), 6))
    return out


def mean_of(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


# ------------------------------------------------------------------------------ Keras network
def build_classifier(image_size: int, num_classes: int, feature_dim: int = FEATURE_DIM,
                     dropout: float = 0.2, width: int = 16, standardize: bool = False) -> Any:
    """Conv blocks (conv-BN-ReLU x2, max-pool; 16 filters doubling to 192) down to 4x4, global
    average pooling, a named linear ``features`` layer and ``probs`` sigmoid outputs. Small on
    purpose: trains in seconds on the 32x32 phantom cache, minutes per epoch on NIH at 128."""
    import keras
    from keras import layers

    inp = keras.Input((image_size, image_size, 1), name="image")
    # BatchNorm momentum 0.9, not Keras' 0.99: small data sets give a few hundred steps, too few
    # for 0.99's moving statistics to converge, and inference would then see stale statistics
    x = inp
    if standardize:  # each image to mean 0, std 1: exposure and contrast differences vanish
        x = layers.Lambda(lambda t: (t - keras.ops.mean(t, axis=(1, 2, 3), keepdims=True))
                          / (keras.ops.std(t, axis=(1, 2, 3), keepdims=True) + 1e-3),
                          name="standardize")(x)
    side, filters = image_size, width
    while True:
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.Activation("relu")(x)
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.Activation("relu")(x)
        if side <= 4:
            break
        x = layers.MaxPooling2D(2)(x)
        side //= 2
        filters = min(filters * 2, 192)
    x = layers.GlobalAveragePooling2D()(x)
    # linear features: a dense, non-sparse embedding for FID/KID/k-NN (a ReLU here leaves many
    # exact zeros); the nonlinearity follows before the class outputs
    feats = layers.Dense(feature_dim, name="features")(x)
    h = layers.Dropout(dropout)(layers.Activation("relu")(feats))
    probs = layers.Dense(num_classes, activation="sigmoid", name="probs")(h)
    return keras.Model(inp, {"probs": probs, "features": feats}, name="cxraug_classifier")


@dataclass
class FitResult:
    """A trained Keras classifier, its best epoch and per-epoch validation AUROC."""

    model: Any
    best_epoch: int
    val_auroc: list[float | None]
    history: list[dict[str, float | None]] = field(default_factory=list)


def predict_probs(model: Any, images_u8: np.ndarray, batch: int = 256,
                  infer: Any = None) -> np.ndarray:
    """Sigmoid outputs of a Keras classifier for uint8 ``[N, H, W]`` (``infer``: a compiled
    ``x -> probs`` function, faster than eager calls when predicting every epoch)."""
    outs = []
    for s in range(0, len(images_u8), batch):
        x = to_unit_range(images_u8[s:s + batch])[..., None]
        probs = infer(x) if infer is not None else model(x, training=False)["probs"]
        outs.append(np.asarray(probs))
    return np.concatenate(outs) if outs else np.zeros((0, model.output["probs"].shape[-1]))


def fit_classifier(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray,
                   y_val: np.ndarray, epochs: int, seed: int, batch_size: int = 32,
                   lr: float = 2e-3, progress: bool = True, desc: str = "classifier") -> FitResult:
    """Train on uint8 images ``[N, H, W]`` with multi-hot targets ``[N, C]`` (binary
    cross-entropy); keep the weights of the epoch with the best mean validation AUROC, which is
    the patient-level early stopping the cache's val split allows."""
    tf = _quiet_tensorflow()
    import keras

    from ..progress import progress_bar

    if epochs < 1:
        raise CxrError(f"epochs must be at least 1, got {epochs}")
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    size, n_classes = x_train.shape[1], y_train.shape[1]
    model = build_classifier(size, n_classes)
    optimizer = keras.optimizers.Adam(lr)
    loss_fn = keras.losses.BinaryCrossentropy()

    @tf.function(reduce_retracing=True)
    def step(x: Any, y: Any) -> Any:
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True)["probs"])
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    @tf.function(reduce_retracing=True)
    def infer(x: Any) -> Any:
        return model(x, training=False)["probs"]

    y_train = y_train.astype(np.float32)
    best: tuple[float, int, list[float | None], list[Any]] | None = None
    history: list[dict[str, float | None]] = []
    steps = max(1, int(np.ceil(len(x_train) / batch_size)))
    bar = progress_bar(total=epochs * steps, desc=desc, unit="batch", disable=not progress,
                       leave=False)
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(x_train))
        losses = []
        for s in range(0, len(order), batch_size):
            idx = np.sort(order[s:s + batch_size])
            x = augment_batch(to_unit_range(x_train[idx]), rng)[..., None]
            losses.append(float(step(tf.constant(x), tf.constant(y_train[idx]))))
            bar.update(1)
        aucs = per_class_auroc(y_val, predict_probs(model, x_val, infer=infer))
        score = mean_of(aucs)
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), "val_mean_auroc": score})
        bar.set_postfix(loss=f"{np.mean(losses):.3f}", val_auroc=f"{score or float('nan'):.3f}")
        rank = -1.0 if score is None else score
        if best is None or rank > best[0]:
            best = (rank, epoch, aucs, [w.copy() for w in model.get_weights()])
    bar.close()
    assert best is not None
    model.set_weights(best[3])
    return FitResult(model=model, best_epoch=best[1], val_auroc=best[2], history=history)


# ------------------------------------------------------------------------------- cache access
def open_cache(path: str | os.PathLike) -> Any:
    """Open a cache with the data stage's reader; a missing file is a user error."""
    path = Path(path)
    if not path.is_file():
        raise CxrError(f"{path}: cache not found; create it with `cxraug prepare`")
    from ..data.cache import CacheReader

    return CacheReader(path)


def read_split(reader: Any, split: str, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """All images (uint8) and row indices of one split, read in sorted blocks."""
    idx = np.sort(np.asarray(reader.indices(split), dtype=np.int64))
    parts = [np.asarray(reader.read(idx[s:s + block])) for s in range(0, len(idx), block)]
    size = int(reader.size)
    images = np.concatenate(parts) if parts else np.zeros((0, size, size), np.uint8)
    return images, idx


@dataclass
class ClassifierResult:
    """What `cxraug train-classifier` made."""

    out: Path
    class_names: list[str]
    val_auroc: list[float | None]
    best_epoch: int
    epochs: int
    n_train: int
    n_val: int
    image_size: int
    seconds: float

    @property
    def mean_auroc(self) -> float | None:
        return mean_of(self.val_auroc)

    def summary(self) -> str:
        lines = [f"classifier in {self.out} ({self.image_size}x{self.image_size}, "
                 f"{self.n_train} train / {self.n_val} val images, best epoch "
                 f"{self.best_epoch}/{self.epochs}, {self.seconds:.0f}s)",
                 "validation AUROC (patient-level val split):"]
        for name, value in zip(self.class_names, self.val_auroc, strict=True):
            lines.append(f"  {name:20s} {'n/a' if value is None else f'{value:.3f}'}")
        mean = self.mean_auroc
        lines.append(f"  {'mean':20s} {'n/a' if mean is None else f'{mean:.3f}'}")
        return "\n".join(lines)


def export_onnx(model: Any, path: Path, meta: dict[str, Any]) -> None:
    """Keras classifier -> ONNX with input ``image`` and outputs ``probs``/``features``."""
    tf = _quiet_tensorflow()
    import onnx
    import tf2onnx

    size = int(model.input.shape[1])
    spec = [tf.TensorSpec([None, size, size, 1], tf.float32, name="image")]
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=17)
    names = {o.name for o in proto.graph.output}
    if names != {"probs", "features"}:
        raise RuntimeError(f"unexpected ONNX outputs {sorted(names)}")
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    onnx.save(proto, str(path))


def save_classifier(fit: FitResult, out: Path, info: dict[str, Any]) -> None:
    """Write model.keras, model.onnx and classifier.json; the JSON goes last and marks the
    folder complete, and nothing already in ``out`` is replaced until all three exist."""
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    try:
        fit.model.save(staging / KERAS_NAME)
        export_onnx(fit.model, staging / ONNX_NAME,
                    {"cxraug_classifier": json.dumps({k: info[k] for k in
                                                      ("class_names", "image_size", "format")}),
                     "class_names": info["class_names"], "image_size": str(info["image_size"])})
        check_onnx_parity(fit.model, staging / ONNX_NAME, int(info["image_size"]))
        os.replace(staging / KERAS_NAME, out / KERAS_NAME)
        os.replace(staging / ONNX_NAME, out / ONNX_NAME)
        write_json_atomic(out / CLASSIFIER_JSON, info)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def check_onnx_parity(model: Any, onnx_path: Path, size: int) -> None:
    """The ONNX copy must compute what the Keras model computes (probabilities within 1e-4)."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(4, size, size)).astype(np.uint8)
    keras_probs = predict_probs(model, x)
    _, onnx_probs = ClassifierFeatures(onnx_path).embed(x)
    assert onnx_probs is not None
    err = float(np.abs(keras_probs - onnx_probs).max())
    if err > 1e-4:
        raise RuntimeError(f"ONNX classifier differs from Keras by {err:.2e}")


def train_classifier(data: str | os.PathLike, out: str | os.PathLike, epochs: int = 15,
                     seed: int = 0, image_size: int | None = None,
                     progress: bool = True) -> ClassifierResult:
    """Train the feature network / label judge on a cache and save it to ``out``."""
    started = time.time()
    data, out = Path(data), Path(out)
    if out.exists() and not out.is_dir():
        raise CxrError(f"{out}: exists and is not a folder; pass a folder for --out")
    with open_cache(data) as reader:
        class_names = list(reader.class_names)
        x_train, train_idx = read_split(reader, "train")
        x_val, val_idx = read_split(reader, "val")
        multi_hot = np.asarray(reader.multi_hot)
        fingerprint = str(reader.fingerprint)
        cache_size = int(reader.size)
    if len(x_train) == 0:
        raise CxrError(f"{data}: the cache has no training images; re-run `cxraug prepare`")
    if len(x_val) == 0:
        raise CxrError(f"{data}: the cache has no validation images; re-run `cxraug prepare` "
                       "with --val-fraction above 0")
    size = int(image_size or cache_size)
    if size < 8:
        raise CxrError(f"image size {size} is too small for the classifier; use 8 or more")
    x_train, x_val = resize_images(x_train, size), resize_images(x_val, size)
    y_train, y_val = multi_hot[train_idx], multi_hot[val_idx]
    fit = fit_classifier(x_train, y_train, x_val, y_val, epochs=epochs, seed=seed,
                         progress=progress)
    info = {
        "format": FORMAT, "cxraug_version": __version__, "class_names": class_names,
        "image_size": size, "feature_dim": FEATURE_DIM, "input": "image",
        "input_range": "[-1, 1] float32 [N, H, W, 1] (uint8 / 127.5 - 1)",
        "outputs": {"probs": "sigmoid per class", "features": "penultimate layer"},
        "data": str(data), "data_fingerprint": fingerprint, "epochs": epochs, "seed": seed,
        "best_epoch": fit.best_epoch, "n_train": int(len(x_train)), "n_val": int(len(x_val)),
        "train_prevalence": dict(zip(class_names, np.round(y_train.mean(axis=0), 6).tolist(),
                                     strict=True)),
        "val_auroc": dict(zip(class_names, fit.val_auroc, strict=True)),
        "val_mean_auroc": mean_of(fit.val_auroc), "history": fit.history,
        # what `augment --judge` calibrates its per-class thresholds on
        "calibration": {"val_positive_probs": _positive_probs(
            predict_probs(fit.model, x_val), y_val, class_names)},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    save_classifier(fit, out, info)
    return ClassifierResult(out=out, class_names=class_names, val_auroc=fit.val_auroc,
                            best_epoch=fit.best_epoch, epochs=epochs, n_train=len(x_train),
                            n_val=len(x_val), image_size=size, seconds=time.time() - started)


def _positive_probs(probs: np.ndarray, y: np.ndarray,
                    class_names: list[str]) -> dict[str, list[float]]:
    """Each class's probabilities on the validation images that carry it (sorted)."""
    return {name: sorted(round(float(p), 6) for p in probs[y[:, c] > 0, c])
            for c, name in enumerate(class_names)}
