"""``cxraug evaluate``: realism, label fidelity, diversity and memorization of a generator.

The generator is any callable ``(z, labels) -> images`` in ``[-1, 1]`` (an
:class:`~cxraug.synthesis.generator.OnnxGenerator` from the CLI, fakes in tests). Real images come
from a cache; the feature space and label judge is a cxraug classifier used through ONNX, so this
module never imports TensorFlow (unless it has to train the classifier itself).

What is compared with what (docs/EVALUATION.md says how to read it):

* realism: synthetic images of class c against the held-out real images of class c (``split``),
  FID, KID, precision/recall in feature space; the *baseline* is a random subset of the training
  images of class c of the same size as the synthetic set, against the same held-out images: what a
  perfect generator (one that draws new images from the real distribution) would score at this N;
* label fidelity: the judge's AUROC and accuracy for the requested class on synthetic images, beside
  the same on held-out real images; the same-z/different-label change (paper Fig. 9) as a ratio;
* diversity: mean pairwise MS-SSIM within the synthetic images of a class against within the
  training subset (lower = more diverse);
* memorization: the nearest training image of every synthetic image in pixel and feature space;
  a synthetic image is a near-copy when its pixel distance is below the 1st percentile of the
  distances from held-out real images (other patients) to their nearest training image.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import CxrError
from ..grid import to_uint8
from ..io_utils import write_bytes_atomic, write_json_atomic, write_text_atomic
from . import metrics as M
from . import realism as R
from .classifier import (
    CLASSIFIER_JSON,
    ClassifierFeatures,
    open_cache,
    resize_images,
)

#: Near-copy threshold: percentile of the real held-out -> train nearest-neighbour pixel distances.
NEAR_COPY_PERCENTILE = 1.0
#: Latent vectors per class for the same-z / different-label measurement.
SWAP_Z = 16
#: Pairs per set for mean pairwise MS-SSIM.
MS_SSIM_PAIRS = 300
#: Held-out real images a class needs before FID, KID and precision/recall are computed for it:
#: below this they are noise (KID comes out negative, FID is dominated by its small-N bias).
MIN_FEATURE_HELDOUT = 50
#: Held-out real images a class needs before its label accuracy is compared with synthetic.
MIN_LABEL_HELDOUT = 10
#: Repeats of the two-sample test on fresh synthetic images (the reported accuracy is the mean).
TWO_SAMPLE_REPEATS = 5
#: Warning thresholds: two-sample accuracy, pixel diversity ratio, caricature margin.
SEPARABLE_ACCURACY = 0.75
COLLAPSE_DIVERSITY = 0.8
CARICATURE_MARGIN = 0.25

Generator = Callable[[np.ndarray, np.ndarray], np.ndarray]


# ------------------------------------------------------------------------------------ helpers
def _round(value: Any, digits: int = 5) -> Any:
    if value is None:
        return None
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return None if math.isnan(value) or math.isinf(value) else round(value, digits)
    if isinstance(value, (np.integer,)):
        return int(value)
    return value


def _clean(obj: Any) -> Any:
    """JSON-safe copy: numpy scalars -> Python, NaN/inf -> None, floats rounded."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return _round(obj)


def _mean(values: list[Any]) -> float | None:
    vals = [float(v) for v in values if v is not None and not (
        isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else None


class _Gen:
    """Uniform wrapper around an ONNX generator or a plain callable."""

    def __init__(self, model: Any, cache_classes: list[str], cache_size: int) -> None:
        self.source = "callable"
        if isinstance(model, (str, os.PathLike)):
            path = Path(model)
            if not path.is_file():
                raise CxrError(f"{path}: generator not found; export one with "
                               "`cxraug export-onnx`")
            from ..synthesis.generator import OnnxGenerator

            model = OnnxGenerator(path, device="auto")
            self.source = str(path)
        self.model = model
        fn = getattr(model, "generate", None)
        self.fn: Generator = fn if callable(fn) else model
        if not callable(self.fn):
            raise CxrError(f"{model!r}: not a generator (expected an ONNX path or a callable)")
        self.class_names = list(getattr(model, "class_names", None) or cache_classes)
        self.latent_dim = int(getattr(model, "latent_dim", None) or 64)
        self.label_mode = str(getattr(model, "label_mode", None) or "index")
        self.image_size = getattr(model, "image_size", None)
        self.cache_size = cache_size

    def __call__(self, z: np.ndarray, labels: np.ndarray, batch: int = 256) -> np.ndarray:
        """uint8 ``[N, S, S]`` at the cache's size for latents ``z`` and class indices (or
        multi-hot rows ``[N, C]`` for a multi-hot generator)."""
        outs = []
        for s in range(0, len(z), batch):
            lab = labels[s:s + batch]
            if self.label_mode == "multi-hot" and lab.ndim == 1:
                lab = np.eye(len(self.class_names), dtype=np.float32)[lab]
            img = np.asarray(self.fn(z[s:s + batch].astype(np.float32), lab))
            if img.ndim == 4 and img.shape[-1] == 1:
                img = img[..., 0]
            if img.ndim != 3 or len(img) != len(lab):
                raise CxrError(f"generator returned shape {img.shape}; expected [N, H, W]")
            u8 = img if img.dtype == np.uint8 else to_uint8(img)
            outs.append(resize_images(u8, self.cache_size))
        return np.concatenate(outs)


def _resolve_classifier(classifier: Any, out: Path, data: Path, fingerprint: str,
                        class_names: list[str], size: int, seed: int,
                        progress: bool) -> tuple[ClassifierFeatures, str]:
    if classifier is not None:
        return ClassifierFeatures(classifier, default_size=size), str(classifier)
    folder = out / "classifier"
    meta = folder / CLASSIFIER_JSON
    if meta.is_file():
        try:
            info = json.loads(meta.read_text())
        except (OSError, json.JSONDecodeError):
            info = {}
        if info.get("data_fingerprint") == fingerprint and info.get("class_names") == class_names:
            return ClassifierFeatures(folder), f"{folder} (reused)"
    from .classifier import train_classifier

    if progress:
        print(f"no --classifier given: training the judge on {data} with TensorFlow first "
              f"(into {folder}; later runs on the same cache reuse it)", file=sys.stderr)
    from ..quiet_tf import import_tensorflow

    import_tensorflow()
    train_classifier(data, folder, seed=seed, progress=progress)
    return ClassifierFeatures(folder), f"{folder} (trained on {data})"


def _stream_train(reader: Any, train_idx: np.ndarray, feats: ClassifierFeatures,
                  queries: list[M.NearestNeighbors], progress: bool,
                  block: int = 2048) -> np.ndarray:
    """Features of every training image, and each query's nearest training image in pixels,
    reading the training split once in blocks (memory stays bounded at NIH scale)."""
    from ..progress import progress_bar

    out = []
    for s in progress_bar(range(0, len(train_idx), block), desc="training images", unit="block",
                  disable=not progress, leave=False):
        idx = train_idx[s:s + block]
        images = np.asarray(reader.read(idx))
        out.append(feats.embed(images)[0])
        for q in queries:
            q.update(images, offset=s)
    return np.concatenate(out)


# ------------------------------------------------------------------------------------ plots
_PALETTE = [(66, 114, 196), (237, 125, 49), (112, 173, 71), (165, 165, 165), (255, 192, 0),
            (91, 155, 213), (158, 72, 14)]


def _font() -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=12)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _png(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def bar_chart(title: str, categories: list[str], series: dict[str, list[float | None]],
              width: int = 760, height: int = 300) -> bytes:
    """Grouped bar chart as PNG bytes (Pillow only; missing values are left out)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = _font()
    left, right, top, bottom = 50, 10, 28, 60
    values = [v for vals in series.values() for v in vals if v is not None]
    vmax = max(values) if values else 1.0
    vmin = min(0.0, min(values)) if values else 0.0
    vmax = vmax if vmax > vmin else vmin + 1.0
    plot_h = height - top - bottom

    def y_of(v: float) -> float:
        return top + plot_h * (1 - (v - vmin) / (vmax - vmin))

    draw.text((left, 6), title, fill="black", font=font)
    draw.line([(left, top), (left, height - bottom)], fill="black")
    draw.line([(left, y_of(0)), (width - right, y_of(0))], fill="black")
    for frac in (0.0, 0.5, 1.0):
        v = vmin + frac * (vmax - vmin)
        draw.text((2, y_of(v) - 6), f"{v:.3g}", fill="black", font=font)
    group_w = (width - left - right) / max(len(categories), 1)
    bar_w = group_w * 0.8 / max(len(series), 1)
    for ci, name in enumerate(categories):
        x0 = left + ci * group_w + group_w * 0.1
        for si, vals in enumerate(series.values()):
            v = vals[ci]
            if v is None:
                continue
            xa = x0 + si * bar_w
            draw.rectangle([xa, min(y_of(v), y_of(0)), xa + bar_w - 1, max(y_of(v), y_of(0))],
                           fill=_PALETTE[si % len(_PALETTE)])
        draw.text((x0, height - bottom + 4), name[:14], fill="black", font=font)
    lx = left
    for si, name in enumerate(series):
        draw.rectangle([lx, height - 18, lx + 10, height - 8], fill=_PALETTE[si % len(_PALETTE)])
        draw.text((lx + 14, height - 20), name, fill="black", font=font)
        lx += 20 + 7 * len(name)
    return _png(img)


def line_chart(title: str, x: list[float], series: dict[str, list[float]],
               width: int = 760, height: int = 260) -> bytes:
    """Line chart as PNG bytes (training curves)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = _font()
    left, right, top, bottom = 50, 10, 28, 40
    vals = [v for s in series.values() for v in s if v is not None and math.isfinite(v)]
    if not x or not vals:
        draw.text((left, 6), f"{title}: no data", fill="black", font=font)
        return _png(img)
    vmin, vmax = min(vals), max(vals)
    vmax = vmax if vmax > vmin else vmin + 1.0
    xmin, xmax = min(x), max(x)
    xmax = xmax if xmax > xmin else xmin + 1.0

    def pt(xv: float, yv: float) -> tuple[float, float]:
        return (left + (width - left - right) * (xv - xmin) / (xmax - xmin),
                top + (height - top - bottom) * (1 - (yv - vmin) / (vmax - vmin)))

    draw.text((left, 6), title, fill="black", font=font)
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for v in (vmin, vmax):
        draw.text((2, pt(xmin, v)[1] - 6), f"{v:.3g}", fill="black", font=font)
    draw.text((left, height - bottom + 2), f"{xmin:g}", fill="black", font=font)
    draw.text((width - right - 30, height - bottom + 2), f"{xmax:g}", fill="black", font=font)
    lx = left
    for si, (name, ys) in enumerate(series.items()):
        color = _PALETTE[si % len(_PALETTE)]
        pts = [pt(a, b) for a, b in zip(x, ys, strict=True) if b is not None and math.isfinite(b)]
        if len(pts) > 1:
            draw.line(pts, fill=color, width=2)
        elif pts:
            draw.ellipse([pts[0][0] - 2, pts[0][1] - 2, pts[0][0] + 2, pts[0][1] + 2], fill=color)
        draw.rectangle([lx, height - 14, lx + 10, height - 4], fill=color)
        draw.text((lx + 14, height - 16), name, fill="black", font=font)
        lx += 24 + 7 * len(name)
    return _png(img)


def image_grid(rows: list[tuple[str, np.ndarray]], cell: int = 64, label_w: int = 110) -> bytes:
    """Rows of uint8 images ``[k, H, W]`` with a text label on the left, as PNG bytes."""
    from PIL import Image, ImageDraw

    cols = max((len(r[1]) for r in rows), default=1)
    img = Image.new("RGB", (label_w + cols * (cell + 2), max(len(rows), 1) * (cell + 2)), "white")
    draw = ImageDraw.Draw(img)
    font = _font()
    for ri, (label, images) in enumerate(rows):
        y = ri * (cell + 2)
        draw.text((4, y + cell // 2 - 6), label[:16], fill="black", font=font)
        for ci, tile in enumerate(images):
            pic = Image.fromarray(np.asarray(tile, np.uint8)).resize((cell, cell),
                                                                      Image.Resampling.NEAREST)
            img.paste(pic.convert("RGB"), (label_w + ci * (cell + 2), y))
    return _png(img)


def pairs_image(pairs: list[tuple[str, np.ndarray, np.ndarray]], cell: int = 64) -> bytes:
    """Synthetic | nearest training image pairs, captioned, as PNG bytes."""
    from PIL import Image, ImageDraw

    per_row = 4
    n_rows = max(1, math.ceil(len(pairs) / per_row))
    pw, ph = 2 * cell + 12, cell + 18
    img = Image.new("RGB", (per_row * pw, n_rows * ph), "white")
    draw = ImageDraw.Draw(img)
    font = _font()
    for i, (caption, syn, real) in enumerate(pairs):
        x, y = (i % per_row) * pw, (i // per_row) * ph
        for k, tile in enumerate((syn, real)):
            pic = Image.fromarray(np.asarray(tile, np.uint8)).resize((cell, cell),
                                                                      Image.Resampling.NEAREST)
            img.paste(pic.convert("RGB"), (x + k * (cell + 2), y))
        draw.text((x, y + cell + 2), caption[:24], fill="black", font=font)
    return _png(img)


def read_metrics_csv(run: Path) -> dict[str, list[float]]:
    """Columns of a run's metrics.csv as floats (one row per logged step or epoch; NaN where a
    row has no value)."""
    from ..training.run import read_metrics

    path = run / "metrics.csv" if run.is_dir() else run
    if not path.is_file():
        raise CxrError(f"{path}: no metrics.csv; pass --run the folder `cxraug train` wrote")
    rows = read_metrics(path)
    keys = list(dict.fromkeys(k for row in rows for k in row))
    return {k: [row.get(k, float("nan")) for row in rows] for k in keys}


def _epoch_curves(cols: dict[str, list[float]]) -> tuple[list[float], dict[str, list[float]]]:
    """Mean of each metric per epoch (metrics.csv may hold several rows per epoch)."""
    if "epoch" not in cols:
        return [], {}
    epochs = np.asarray(cols["epoch"])
    xs = sorted({e for e in epochs.tolist() if math.isfinite(e)})
    out: dict[str, list[float]] = {}
    for key in ("d_loss", "g_loss", "d_acc_real", "d_acc_fake"):
        if key in cols:
            vals = np.asarray(cols[key])
            out[key] = [float(np.nanmean(vals[epochs == e])) if np.isfinite(
                vals[epochs == e]).any() else float("nan") for e in xs]
    return xs, out


# ------------------------------------------------------------------------------------ result
@dataclass
class EvaluateResult:
    """What `cxraug evaluate` wrote, and its numbers."""

    out: Path
    report: dict[str, Any]

    def summary(self) -> str:
        r = self.report
        o = r["overall"]

        def f(v: Any, fmt: str = ".3f") -> str:
            return "n/a" if v is None else format(v, fmt)

        lines = [f"report: {self.out / 'report.html'} (numbers in {self.out / 'report.json'})",
                 f"{len(r['classes'])} classes, {r['n_per_class']} synthetic images per class, "
                 f"held-out real split '{r['split']}'"]
        test, real = o.get("two_sample"), o.get("two_sample_real")
        if test:
            lines.append(
                f"realism: a classifier tells synthetic from held-out real images "
                f"{test['accuracy']:.2f} of the time (95% CI {test['low']:.2f}-{test['high']:.2f},"
                f" n={test['n_per_side']} a side; 0.50 = indistinguishable); two sets of real "
                f"patients: {f(real and real['accuracy'], '.2f')}")
            lines.append(f"diversity: synthetic images vary {o['pixel_diversity_ratio']:.2f}x as "
                         "much as held-out real ones (1.00 = as varied)")
        else:
            lines.append(f"realism two-sample test: {o.get('two_sample_note')}")
        lines.append(f"{'class':20s} {'FID syn/base':>14s} {'KID syn/base':>16s} "
                     f"{'acc syn/real':>13s} {'P/R':>10s} {'MS-SSIM s/r':>12s} {'copies':>7s}")

        def feature_cols(real: dict[str, Any], base: dict[str, Any]) -> tuple[str, str, str]:
            if real.get("note"):
                return (f"{real['note']:>31s}", "", "")
            return (f"{f(real['fid'], '.3g'):>6s}/{f(base['fid'], '.3g'):<7s}",
                    f"{f(real['kid_mean'], '.2g'):>7s}/{f(base['kid_mean'], '.2g'):<8s}",
                    f"{f(real['precision'], '.2f'):>4s}/{f(real['recall'], '.2f'):<5s}")

        for name, c in r["classes"].items():
            lab = c["label_fidelity"]
            fid_s, kid_s, pr_s = feature_cols(c["realism"], c["baseline"])
            pr_s = pr_s or f"{'':10s}"
            lines.append(
                f"{name[:20]:20s} {fid_s}{' ' + kid_s if kid_s else ''}"
                f" {f(lab['synthetic_accuracy'], '.2f'):>6s}/{f(lab['real_accuracy'], '.2f'):<6s}"
                f" {pr_s}"
                f" {f(c['diversity']['synthetic_ms_ssim'], '.2f'):>5s}/"
                f"{f(c['diversity']['real_ms_ssim'], '.2f'):<6s}"
                f" {c['memorization']['near_copies']:>7d}")
        fid_s, kid_s, pr_s = feature_cols(
            {"note": None if o["fid"] is not None else "too few held-out images per class",
             "fid": o["fid"], "kid_mean": o["kid_mean"], "precision": o["precision"],
             "recall": o["recall"]},
            {"fid": o["baseline_fid"], "kid_mean": o["baseline_kid_mean"]})
        lines.append(
            f"{'macro mean':20s} {fid_s}{' ' + kid_s if kid_s else ''}"
            f" {f(o['synthetic_accuracy'], '.2f'):>6s}/{f(o['real_accuracy'], '.2f'):<6s}"
            f" {pr_s or f'{chr(32) * 10}'}"
            f" {f(o['synthetic_ms_ssim'], '.2f'):>5s}/{f(o['real_ms_ssim'], '.2f'):<6s}"
            f" {o['near_copies']:>7d}")
        if o.get("privacy_filter_fraction") is not None:
            rule = r["memorization_reference"]["privacy_filter_rule"]
            lines.append(f"augment's privacy filter would replace "
                         f"{o['privacy_filter_fraction']:.1%} of these images ({rule})")
        lines.append(f"label change with the same z (paper Fig. 9), relative to a new z: pixels "
                     f"{f(o['label_swap_pixel_ratio'], '.2f')}, features "
                     f"{f(o['label_swap_feature_ratio'], '.2f')}")
        for flag in r["flags"]:
            lines.append(f"! {flag}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------- evaluate
def _sha256_or_none(model: Any) -> str | None:
    """The generator file's sha256, so a report names exactly what it measured."""
    from ..io_utils import sha256_file

    return sha256_file(model) if isinstance(model, (str, os.PathLike)) and Path(
        model).is_file() else None


def _privacy_rule(data: Path, images: np.ndarray) -> dict[str, Any] | None:
    """Which images augment's privacy filter would replace, by the same rule and reference
    (:mod:`cxraug.copy_reference`, built from this cache); None without val/test patients."""
    import tempfile

    from ..copy_reference import TrainReference, build_reference

    with tempfile.TemporaryDirectory(prefix="cxraug-evaluate-") as tmp:
        try:
            path = build_reference(data, Path(tmp) / "ref.trainref.h5")
        except CxrError:
            return None
        with TrainReference(path) as ref:
            check = ref.check(images)
            rule = (f"32x32 standardized thumbnail closer to a training image than "
                    f"{100 - ref.percentile:g}% of the {ref.n_heldout} val + test patients are: "
                    f"threshold {ref.threshold:.3g}")
    return {"copy": check.copy, "rule": rule}


def evaluate(model: Any, data: str | os.PathLike, out: str | os.PathLike,
             classifier: str | os.PathLike | None = None, split: str = "val",
             n_per_class: int = 200, run: str | os.PathLike | None = None, seed: int = 0,
             progress: bool = True, min_heldout: int = MIN_FEATURE_HELDOUT) -> EvaluateResult:
    """Evaluate a generator against a cache's real images; write report.json and report.html.

    ``min_heldout``: held-out images a class needs before FID, KID and precision/recall are
    computed for it (below, the report says "too few held-out images (n=...)")."""
    started = time.time()
    data, out = Path(data), Path(out)
    if n_per_class < 4:
        raise CxrError(f"--n-per-class {n_per_class}: use at least 4 (precision/recall need k+1)")
    if split not in ("val", "test"):
        raise CxrError(f"--split {split!r}: compare with a held-out split, 'val' or 'test'")
    if out.exists() and not out.is_dir():
        raise CxrError(f"{out}: exists and is not a folder; pass a folder for --out")
    run_cols = read_metrics_csv(Path(run)) if run is not None else None
    rng = np.random.default_rng(seed)
    notes: list[str] = []

    with open_cache(data) as reader:
        cache_classes = list(reader.class_names)
        size = int(reader.size)
        labels = np.asarray(reader.labels)
        fingerprint = str(reader.fingerprint)
        gen = _Gen(model, cache_classes, size)
        missing = [c for c in gen.class_names if c not in cache_classes]
        classes = [c for c in gen.class_names if c in cache_classes]
        if not classes:
            raise CxrError(f"{data}: none of the generator's classes ({', '.join(gen.class_names)})"
                           f" is in the cache ({', '.join(cache_classes)}); use the cache the "
                           "generator was trained on")
        if missing:
            notes.append(f"generator classes not in the cache, not evaluated: {missing}")
        if gen.image_size and int(gen.image_size) != size:
            notes.append(f"generator images ({gen.image_size}px) resized to the cache's {size}px")
        if gen.label_mode == "none":
            notes.append("unconditional generator: it ignores labels, so per-class numbers and "
                         "label fidelity describe its unconditional output")
        held_idx = np.sort(np.asarray(reader.indices(split), dtype=np.int64))
        train_idx = np.sort(np.asarray(reader.indices("train"), dtype=np.int64))
        if len(held_idx) == 0:
            raise CxrError(f"{data}: the cache's '{split}' split is empty; choose another --split "
                           "or re-run `cxraug prepare` with a non-zero fraction for it")
        if len(train_idx) == 0:
            raise CxrError(f"{data}: the cache has no training images")
        cache_idx = {c: cache_classes.index(c) for c in classes}

        feats, classifier_desc = _resolve_classifier(classifier, out, data, fingerprint,
                                                     cache_classes, size, seed, progress)
        judge = feats.has_judge and all(c in (feats.class_names or []) for c in classes)
        if not judge:
            notes.append("the feature model has no 'probs' output for these class names: "
                         "label fidelity is not measured")

        # ---- synthetic images: n per class, and the same-z / different-label grid
        from ..progress import progress_bar

        z_all = rng.standard_normal((len(classes), n_per_class, gen.latent_dim)).astype(np.float32)
        synth: dict[str, np.ndarray] = {}
        for ci, name in enumerate(progress_bar(classes, desc="generating", disable=not progress,
                                       leave=False)):
            lab = np.full(n_per_class, gen.class_names.index(name), dtype=np.int64)
            synth[name] = gen(z_all[ci], lab)
        n_swap = min(SWAP_Z, n_per_class)
        z_swap = rng.standard_normal((n_swap, gen.latent_dim)).astype(np.float32)
        swap = np.stack([gen(z_swap, np.full(n_swap, gen.class_names.index(c), np.int64))
                         for c in classes])  # [C, Z, H, W]

        # ---- real images
        held_all = np.asarray(reader.read(held_idx))
        held_labels = labels[held_idx]
        keep = np.isin(held_labels, [cache_idx[c] for c in classes])
        held_images, held_labels = held_all[keep], held_labels[keep]
        train_labels = labels[train_idx]
        train_subset: dict[str, np.ndarray] = {}  # positions into train_idx
        for name in classes:
            pos = np.flatnonzero(train_labels == cache_idx[name])
            take = min(n_per_class, len(pos))
            train_subset[name] = np.sort(rng.choice(pos, take, replace=False)) if take else pos

        # ---- features, and nearest training images in pixels (one streamed pass)
        synth_all = np.concatenate([synth[c] for c in classes])
        synth_class = np.repeat(np.arange(len(classes)), n_per_class)
        syn_feat, syn_prob = feats.embed(synth_all)
        held_feat, held_prob = feats.embed(held_images)
        swap_feat = feats.embed(swap.reshape(-1, size, size))[0].reshape(
            len(classes), n_swap, -1)
        nn_syn = M.NearestNeighbors(synth_all)
        nn_held = M.NearestNeighbors(held_images)
        train_feat = _stream_train(reader, train_idx, feats, [nn_syn, nn_held], progress)
        subset_images = {c: np.asarray(reader.read(train_idx[train_subset[c]])) for c in classes}

        # ---- memorization reference: held-out real (other patients) -> train
        syn_fidx, syn_fdist = M.nearest_neighbors(syn_feat, train_feat)
        _, held_fdist = M.nearest_neighbors(held_feat, train_feat)
        held_pdist = nn_held.distance
        # "lower": the threshold is an observed held-out distance, so with fewer than 100
        # held-out images no held-out image is below it (they are other patients, never copies)
        pix_thresh = float(np.percentile(held_pdist, NEAR_COPY_PERCENTILE, method="lower"))
        feat_thresh = float(np.percentile(held_fdist, NEAR_COPY_PERCENTILE, method="lower"))
        pix_median = float(np.median(held_pdist))
        feat_median = float(np.median(held_fdist))
        near_copy = (nn_syn.distance < pix_thresh) | (nn_syn.distance == 0)
        feat_close = syn_fdist < feat_thresh
        privacy = _privacy_rule(data, synth_all)

        # ---- label fidelity inputs (judge columns in evaluated-class order)
        if judge:
            assert syn_prob is not None and held_prob is not None and feats.class_names
            cols = [feats.class_names.index(c) for c in classes]
            syn_p, held_p = syn_prob[:, cols], held_prob[:, cols]
            # the decision divides each probability by the class's training prevalence (the
            # Bayes decision under equal priors), so a frequent class such as No Finding does
            # not win every argmax; without a known prevalence it is the plain argmax
            prev = feats.prevalence
            scale = 1.0 / prev[cols] if prev is not None else np.ones(len(cols))
            syn_dec = (syn_p * scale).argmax(1)
            held_dec = (held_p * scale).argmax(1)
            held_class = np.array([classes.index(cache_classes[v]) for v in held_labels])

        per_class: dict[str, Any] = {}
        for ci, name in enumerate(classes):
            sel = synth_class == ci
            hsel = held_labels == cache_idx[name]
            real_f = held_feat[hsel]
            comp = M.compare_sets(syn_feat[sel], real_f, seed=seed,
                                  min_reference=min_heldout)
            base = M.compare_sets(train_feat[train_subset[name]], real_f, seed=seed,
                                  min_reference=min_heldout)
            lab: dict[str, Any] = {"synthetic_auroc": None, "synthetic_accuracy": None,
                                   "real_auroc": None, "real_accuracy": None,
                                   "n_real": int(hsel.sum()),
                                   "judge_val_auroc": (feats.info.get("val_auroc") or {}).get(name)}
            if judge:
                lab["synthetic_auroc"] = M.auroc(sel, syn_p[:, ci])
                lab["synthetic_accuracy"] = float((syn_dec[sel] == ci).mean())
                lab["synthetic_mean_prob"] = float(syn_p[sel, ci].mean())
                if hsel.any():
                    lab["real_auroc"] = M.auroc(held_class == ci, held_p[:, ci])
                    lab["real_accuracy"] = float((held_dec[hsel] == ci).mean())
                    lab["real_mean_prob"] = float(held_p[hsel, ci].mean())
            swap_stats = _label_swap(swap, swap_feat, ci)
            lab.update(swap_stats)
            syn_ms, syn_pairs = M.mean_pairwise_ms_ssim(synth[name], MS_SSIM_PAIRS, seed=seed)
            real_ms, real_pairs = M.mean_pairwise_ms_ssim(subset_images[name], MS_SSIM_PAIRS,
                                                          seed=seed)
            d_pix, d_feat = nn_syn.distance[sel], syn_fdist[sel]
            per_class[name] = {
                "n_synthetic": int(sel.sum()), "n_real_heldout": int(hsel.sum()),
                "n_real_train": int((train_labels == cache_idx[name]).sum()),
                "realism": comp.to_dict(),
                "baseline": base.to_dict(),
                "label_fidelity": lab,
                "diversity": {"synthetic_ms_ssim": syn_ms, "real_ms_ssim": real_ms,
                              "synthetic_pairs": syn_pairs, "real_pairs": real_pairs,
                              "pixel_ratio": R.diversity_ratio(R.thumbnails(synth[name]),
                                                               R.thumbnails(subset_images[name]))
                              if len(subset_images[name]) > 1 else None},
                "two_sample": _class_two_sample(synth[name], held_images[hsel],
                                                subset_images[name], seed),
                "memorization": {
                    "near_copies": int(near_copy[sel].sum()),
                    "near_copy_fraction": float(near_copy[sel].mean()),
                    "feature_near_fraction": float(feat_close[sel].mean()),
                    "privacy_filter_fraction": None if privacy is None
                    else float(privacy["copy"][sel].mean()),
                    "pixel_distance_min": float(d_pix.min()),
                    "pixel_distance_median": float(np.median(d_pix)),
                    "pixel_ratio_median": float(np.median(d_pix) / pix_median)
                    if pix_median > 0 else None,
                    "feature_ratio_median": float(np.median(d_feat) / feat_median)
                    if feat_median > 0 else None,
                },
            }

        # ---- overall: macro means of the per-class numbers, and pooled sets
        pooled_real = held_feat
        pooled_base = np.concatenate([train_feat[train_subset[c]] for c in classes])
        pooled = M.compare_sets(syn_feat, pooled_real, seed=seed,
                                min_reference=min_heldout)
        pooled_b = M.compare_sets(pooled_base, pooled_real, seed=seed,
                                  min_reference=min_heldout)
        two_sample = _pooled_two_sample(gen, reader, rng, seed, held_idx, held_all, train_idx)

        def macro(section: str, key: str) -> float | None:
            return _mean([per_class[c][section].get(key) for c in classes])

        overall = {
            "fid": macro("realism", "fid"), "baseline_fid": macro("baseline", "fid"),
            "kid_mean": macro("realism", "kid_mean"),
            "baseline_kid_mean": macro("baseline", "kid_mean"),
            "precision": macro("realism", "precision"), "recall": macro("realism", "recall"),
            "baseline_precision": macro("baseline", "precision"),
            "baseline_recall": macro("baseline", "recall"),
            "synthetic_auroc": macro("label_fidelity", "synthetic_auroc"),
            "real_auroc": macro("label_fidelity", "real_auroc"),
            "synthetic_accuracy": float((syn_dec == synth_class).mean()) if judge
            else None,
            "real_accuracy": float((held_dec == held_class).mean())
            if judge and len(held_class) else None,
            "label_swap_pixel_ratio": macro("label_fidelity", "label_swap_pixel_ratio"),
            "label_swap_feature_ratio": macro("label_fidelity", "label_swap_feature_ratio"),
            "synthetic_ms_ssim": macro("diversity", "synthetic_ms_ssim"),
            "real_ms_ssim": macro("diversity", "real_ms_ssim"),
            "near_copies": int(near_copy.sum()),
            "near_copy_fraction": float(near_copy.mean()),
            "feature_near_fraction": float(feat_close.mean()),
            "privacy_filter_fraction": None if privacy is None
            else float(privacy["copy"].mean()),
            "pooled": {"synthetic": pooled.to_dict(), "baseline": pooled_b.to_dict()},
            **two_sample,
        }
        memo_ref = {
            "heldout_to_train_pixel_p01": pix_thresh, "heldout_to_train_pixel_median": pix_median,
            "heldout_to_train_feature_p01": feat_thresh,
            "heldout_to_train_feature_median": feat_median, "n_heldout": int(len(held_pdist)),
            "near_copy_rule": f"pixel distance to the nearest training image below the "
                              f"{NEAR_COPY_PERCENTILE:g}th percentile of held-out real images' "
                              "distances to theirs (or exactly 0)",
            "privacy_filter_rule": None if privacy is None else privacy["rule"],
        }

        # ---- images: samples, real grid, closest pairs
        cols_n = min(8, n_per_class)
        samples_png = image_grid([(c, synth[c][:cols_n]) for c in classes])
        real_png = image_grid([(c, held_images[held_labels == cache_idx[c]][:cols_n])
                               for c in classes])
        swap_png = image_grid([(c, swap[ci, :cols_n]) for ci, c in enumerate(classes)])
        ratio = nn_syn.distance / pix_median if pix_median > 0 else nn_syn.distance
        order = np.argsort(ratio, kind="stable")[:12]
        pair_rows = np.unique(train_idx[nn_syn.index[order]])
        pair_imgs = np.asarray(reader.read(pair_rows))
        lookup = {int(r): i for i, r in enumerate(pair_rows)}
        pairs = [(f"{classes[synth_class[k]][:12]} d={nn_syn.distance[k]:.0f}"
                  f"{' COPY' if near_copy[k] else ''}", synth_all[k],
                  pair_imgs[lookup[int(train_idx[nn_syn.index[k]])]]) for k in order]
        pairs_png = pairs_image(pairs)
        closest = [{"class": classes[synth_class[k]], "synthetic_number": int(k % n_per_class),
                    "train_image_index": str(reader.image_index[train_idx[nn_syn.index[k]]]),
                    "pixel_distance": float(nn_syn.distance[k]),
                    "pixel_ratio": float(ratio[k]), "near_copy": bool(near_copy[k])}
                   for k in order]

    flags = _flags(per_class, overall, judge)
    report = _clean({
        "format": "cxraug-evaluate-1", "cxraug_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": time.time() - started,
        "generator": gen.source, "generator_sha256": _sha256_or_none(model),
        "data": str(data), "data_fingerprint": fingerprint,
        "classifier": classifier_desc, "split": split, "n_per_class": n_per_class, "seed": seed,
        "min_heldout": min_heldout,
        "image_size": size, "classes": per_class, "overall": overall,
        "memorization_reference": memo_ref, "closest_pairs": closest, "flags": flags,
        "notes": notes,
        "files": {"html": "report.html", "samples": "samples.png",
                  "nearest_pairs": "nearest_pairs.png"},
    })
    out.mkdir(parents=True, exist_ok=True)
    charts = _charts(report, classes, run_cols)
    write_bytes_atomic(out / "samples.png", samples_png)
    write_bytes_atomic(out / "nearest_pairs.png", pairs_png)
    write_json_atomic(out / "report.json", report)
    write_text_atomic(out / "report.html", _html(report, charts, samples_png, real_png, swap_png,
                                                 pairs_png))
    return EvaluateResult(out=out, report=report)


# ------------------------------------------------------------------- realism without features
def _class_two_sample(synthetic: np.ndarray, heldout: np.ndarray, train: np.ndarray,
                      seed: int) -> dict[str, Any]:
    """Synthetic vs held-out real images of one class, beside real training vs held-out."""
    if len(heldout) < R.MIN_TWO_SAMPLE:
        return {"synthetic": None, "real_vs_real": None,
                "note": f"too few held-out images (n={len(heldout)})"}
    held_t = R.thumbnails(heldout)
    syn_t = R.thumbnails(synthetic)
    syn = R.mean_two_sample([R.two_sample_test(syn_t, held_t, seed=seed + r)
                             for r in range(TWO_SAMPLE_REPEATS)])
    real = (R.two_sample_test(R.thumbnails(train), held_t, seed=seed).to_dict()
            if len(train) >= R.MIN_TWO_SAMPLE else None)
    return {"synthetic": syn.to_dict(), "real_vs_real": real, "note": None}


def _label_rows(gen: _Gen, reader: Any, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The generator's label input for cache rows (class index, or multi-hot in the generator's
    class order) and which rows it can express (all their findings among its classes)."""
    cache_classes = list(reader.class_names)
    if gen.label_mode == "multi-hot":
        mh = np.asarray(reader.multi_hot)[rows].astype(np.float32)
        out = np.zeros((len(rows), len(gen.class_names)), np.float32)
        for gi, name in enumerate(gen.class_names):
            if name in cache_classes:
                out[:, gi] = mh[:, cache_classes.index(name)]
        return out, np.isclose(out.sum(1), mh.sum(1))
    labels = np.asarray(reader.labels)[rows]
    index = np.array([gen.class_names.index(cache_classes[v])
                      if v >= 0 and cache_classes[v] in gen.class_names else -1 for v in labels],
                     dtype=np.int64)
    if gen.label_mode == "none":
        return np.zeros(len(rows), np.int64), labels >= 0
    return index, index >= 0


def _pooled_two_sample(gen: _Gen, reader: Any, rng: np.random.Generator, seed: int,
                       held_idx: np.ndarray, held_all: np.ndarray,
                       train_idx: np.ndarray) -> dict[str, Any]:
    """The two-sample test over all held-out images the generator can label (multi-label ones
    too for a multi-hot generator), each against a synthetic image drawn with its own label, so
    the two sets have the same mix of findings; beside it the same test between as many random
    real training images and the held-out ones (two sets of real patients), and the pixel
    diversity of the synthetic images over that of the held-out ones."""
    glabels, ok = _label_rows(gen, reader, held_idx)
    n = int(ok.sum())
    if n < R.MIN_TWO_SAMPLE:
        return {"two_sample": None, "two_sample_real": None, "pixel_diversity_ratio": None,
                "two_sample_note": f"too few held-out images (n={n})"}
    held_t = R.thumbnails(held_all[ok])
    tests, real_tests, syn_t = [], [], None
    for r in range(TWO_SAMPLE_REPEATS):
        z = rng.standard_normal((n, gen.latent_dim)).astype(np.float32)
        syn = R.thumbnails(gen(z, glabels[ok]))
        syn_t = syn if syn_t is None else syn_t
        tests.append(R.two_sample_test(syn, held_t, seed=seed + r))
        if len(train_idx) >= R.MIN_TWO_SAMPLE:
            pick = np.sort(rng.choice(train_idx, min(n, len(train_idx)), replace=False))
            real_tests.append(R.two_sample_test(R.thumbnails(reader.read(pick)), held_t,
                                                seed=seed + r))
    return {"two_sample": R.mean_two_sample(tests).to_dict(),
            "two_sample_real": R.mean_two_sample(real_tests).to_dict() if real_tests else None,
            "pixel_diversity_ratio": R.diversity_ratio(syn_t, held_t),
            "two_sample_note": None}


def _label_swap(swap: np.ndarray, swap_feat: np.ndarray, ci: int) -> dict[str, float | None]:
    """Paper Fig. 9 as numbers: mean distance between G(z, c) and G(z, b), b != c (same z),
    divided by the mean distance between G(z, c) and G(z', c) (same label, another z).

    ~0: the label does not change the image; ~1 or more: changing the label changes the image as
    much as drawing a new image. Needs at least 2 classes and 2 latents."""
    n_cls, n_z = swap.shape[:2]
    out: dict[str, float | None] = {"label_swap_pixel_ratio": None,
                                    "label_swap_feature_ratio": None}
    if n_cls < 2 or n_z < 2:
        return out
    for key, arr in (("pixel", swap.reshape(n_cls, n_z, -1).astype(np.float64)),
                     ("feature", swap_feat.astype(np.float64))):
        own = arr[ci]
        others = np.delete(arr, ci, axis=0)
        label_d = np.sqrt(((others - own[None]) ** 2).sum(-1)).mean()
        zd = np.sqrt(((own[:, None] - own[None]) ** 2).sum(-1))
        z_d = zd[~np.eye(n_z, dtype=bool)].mean()
        out[f"label_swap_{key}_distance"] = float(label_d)
        out[f"same_label_{key}_distance"] = float(z_d)
        out[f"label_swap_{key}_ratio"] = float(label_d / z_d) if z_d > 0 else None
    return out


def _flags(per_class: dict[str, Any], overall: dict[str, Any], judge: bool) -> list[str]:
    """Plain-language warnings a user should see before using the synthetic data."""
    flags = []
    test, real = overall.get("two_sample"), overall.get("two_sample_real")
    if test and test["accuracy"] > SEPARABLE_ACCURACY and (
            real is None or test["low"] > real["high"]):
        flags.append(f"not realistic yet: a simple classifier (logistic regression on 32x32 "
                     f"pixels) tells synthetic from held-out real images {test['accuracy']:.0%} "
                     f"of the time (95% CI {test['low']:.0%}-{test['high']:.0%}, "
                     f"n={test['n_per_side']} a side)"
                     + (f"; two sets of real patients: {real['accuracy']:.0%}" if real else ""))
    div = overall.get("pixel_diversity_ratio")
    if div is not None and div < COLLAPSE_DIVERSITY:
        flags.append(f"collapse: synthetic images vary {div:.2f}x as much as held-out real ones "
                     "(mean pixel distance between images); the generator repeats itself")
    narrow = [f"{name} ({c['diversity']['pixel_ratio']:.2f})" for name, c in per_class.items()
              if c["diversity"].get("pixel_ratio") is not None
              and c["diversity"]["pixel_ratio"] < COLLAPSE_DIVERSITY]
    if narrow:
        flags.append("collapse within classes: synthetic images vary less than "
                     f"{COLLAPSE_DIVERSITY}x as much as real training images of the class: "
                     + ", ".join(narrow))
    for name, c in per_class.items():
        lab, memo = c["label_fidelity"], c["memorization"]
        sa, ra = lab.get("synthetic_accuracy"), lab.get("real_accuracy")
        judged = judge and sa is not None and ra is not None and \
            c["n_real_heldout"] >= MIN_LABEL_HELDOUT
        if judged and sa < 0.5 * ra:
            flags.append(f"{name}: the judge recognizes the requested class in {sa:.0%} of "
                         f"synthetic images vs {ra:.0%} of real ones: the label is not drawn")
        if judged and sa >= ra + CARICATURE_MARGIN:
            flags.append(f"{name}: the judge recognizes the class in {sa:.0%} of synthetic "
                         f"images but only {ra:.0%} of real ones: the finding is likely "
                         "exaggerated (a caricature, not a realistic case)")
        pair = c.get("two_sample") or {}
        syn = pair.get("synthetic")
        if syn and syn["accuracy"] > SEPARABLE_ACCURACY and (
                pair.get("real_vs_real") is None or syn["low"] > pair["real_vs_real"]["high"]):
            flags.append(f"{name}: synthetic images told from held-out real ones "
                         f"{syn['accuracy']:.0%} of the time (n={syn['n_per_side']} a side)")
        if memo["near_copy_fraction"] > 0.05:
            flags.append(f"{name}: {memo['near_copies']} synthetic images "
                         f"({memo['near_copy_fraction']:.0%}) are near-copies of training images")
        fid, bfid = c["realism"]["fid"], c["baseline"]["fid"]
        if fid is not None and bfid is not None and bfid > 0 and fid > 3 * bfid:
            flags.append(f"{name}: FID {fid:.1f} is over 3x the real-vs-real baseline {bfid:.1f}")
    ratio = overall.get("label_swap_feature_ratio")
    if ratio is not None and ratio < 0.1:
        flags.append(f"changing the label with the same z barely changes the image (feature "
                     f"ratio {ratio:.2f}): the generator largely ignores the label")
    return flags


def _charts(report: dict[str, Any], classes: list[str],
            run_cols: dict[str, list[float]] | None) -> list[tuple[str, bytes]]:
    per = report["classes"]

    def col(section: str, key: str) -> list[float | None]:
        return [per[c][section].get(key) for c in classes]

    charts = [
        ("FID per class (lower is better; baseline = real training vs real held-out)",
         bar_chart("FID", classes, {"synthetic": col("realism", "fid"),
                                    "real baseline": col("baseline", "fid")})),
        ("KID per class", bar_chart("KID (mean over subsets)", classes, {
            "synthetic": col("realism", "kid_mean"),
            "real baseline": col("baseline", "kid_mean")})),
        ("Label fidelity: judge accuracy for the requested class",
         bar_chart("accuracy", classes, {"synthetic": col("label_fidelity", "synthetic_accuracy"),
                                         "real held-out": col("label_fidelity", "real_accuracy")})),
        ("Precision (fidelity) and recall (coverage)",
         bar_chart("precision / recall", classes, {
             "precision": col("realism", "precision"), "recall": col("realism", "recall"),
             "baseline precision": col("baseline", "precision"),
             "baseline recall": col("baseline", "recall")})),
        ("Diversity: mean pairwise MS-SSIM (lower = more diverse)",
         bar_chart("MS-SSIM", classes, {"synthetic": col("diversity", "synthetic_ms_ssim"),
                                        "real": col("diversity", "real_ms_ssim")})),
        ("Memorization: share of near-copies of training images",
         bar_chart("near-copy fraction", classes, {
             "pixel near-copies": col("memorization", "near_copy_fraction"),
             "feature-space near": col("memorization", "feature_near_fraction")})),
    ]
    if run_cols is not None:
        xs, curves = _epoch_curves(run_cols)
        losses = {k: v for k, v in curves.items() if k.endswith("loss")}
        accs = {k: v for k, v in curves.items() if k.startswith("d_acc")}
        charts.insert(0, ("Training curves: losses per epoch", line_chart("loss", xs, losses)))
        charts.insert(1, ("Training curves: discriminator accuracy per epoch",
                          line_chart("D accuracy", xs, accs)))
    return charts


def _html(report: dict[str, Any], charts: list[tuple[str, bytes]], samples: bytes, real: bytes,
          swap: bytes, pairs: bytes) -> str:
    def img(data: bytes, alt: str) -> str:
        return (f'<img alt="{html.escape(alt)}" src="data:image/png;base64,'
                f'{base64.b64encode(data).decode()}">')

    def fmt(v: Any) -> str:
        if v is None:
            return "n/a"
        if isinstance(v, float):
            return f"{v:.4g}"
        return html.escape(str(v))

    def table(rows: list[list[Any]], head: list[str]) -> str:
        th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
        body = "".join("<tr>" + "".join(f"<td>{fmt(v)}</td>" for v in r) + "</tr>" for r in rows)
        return f"<table><tr>{th}</tr>{body}</table>"

    per = report["classes"]
    o = report["overall"]
    real_rows = [[c, v["n_synthetic"], v["n_real_heldout"], v["realism"]["fid"],
                  v["baseline"]["fid"], v["realism"]["kid_mean"], v["realism"]["kid_std"],
                  v["baseline"]["kid_mean"], v["realism"]["precision"], v["realism"]["recall"],
                  v["baseline"]["precision"], v["baseline"]["recall"],
                  v["realism"].get("note") or ""] for c, v in per.items()]
    real_rows.append(["macro mean", "", "", o["fid"], o["baseline_fid"], o["kid_mean"], "",
                      o["baseline_kid_mean"], o["precision"], o["recall"],
                      o["baseline_precision"], o["baseline_recall"],
                      f"classes with at least {report['min_heldout']} held-out images"])

    def interval(t: dict[str, Any] | None) -> str:
        return "n/a" if not t else f"{t['accuracy']:.3f} ({t['low']:.2f}-{t['high']:.2f})"

    test, real_test = o.get("two_sample"), o.get("two_sample_real")
    c2st_rows = [["all held-out images (label-matched)", test["n_per_side"] if test else "",
                  interval(test), interval(real_test), o.get("pixel_diversity_ratio"),
                  o.get("two_sample_note") or ""]]
    for c, v in per.items():
        pair = v["two_sample"]
        c2st_rows.append([c, v["n_real_heldout"], interval(pair["synthetic"]),
                          interval(pair["real_vs_real"]), v["diversity"].get("pixel_ratio"),
                          pair.get("note") or ""])
    lab_rows = [[c, v["label_fidelity"]["judge_val_auroc"], v["label_fidelity"]["synthetic_auroc"],
                 v["label_fidelity"]["real_auroc"],
                 v["label_fidelity"]["synthetic_accuracy"], v["label_fidelity"]["real_accuracy"],
                 v["label_fidelity"]["label_swap_pixel_ratio"],
                 v["label_fidelity"]["label_swap_feature_ratio"]] for c, v in per.items()]
    lab_rows.append(["overall", "", o["synthetic_auroc"], o["real_auroc"], o["synthetic_accuracy"],
                     o["real_accuracy"], o["label_swap_pixel_ratio"],
                     o["label_swap_feature_ratio"]])
    div_rows = [[c, v["diversity"]["synthetic_ms_ssim"], v["diversity"]["real_ms_ssim"],
                 v["diversity"]["synthetic_pairs"]] for c, v in per.items()]
    mem_rows = [[c, v["memorization"]["near_copies"], v["memorization"]["near_copy_fraction"],
                 v["memorization"]["feature_near_fraction"],
                 v["memorization"]["pixel_distance_min"], v["memorization"]["pixel_ratio_median"],
                 v["memorization"]["feature_ratio_median"],
                 v["memorization"].get("privacy_filter_fraction")] for c, v in per.items()]
    ref = report["memorization_reference"]
    flags = "".join(f"<li>{html.escape(f)}</li>" for f in report["flags"]) or \
        "<li>no warnings</li>"
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in report["notes"])
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>cxraug evaluation</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #bbb;"
        "padding:2px 6px;text-align:right}th{background:#eee}td:first-child{text-align:left}"
        "img{margin:4px 0;max-width:100%}</style></head><body>",
        "<h1>cxraug evaluation report</h1>",
        f"<p>generator <code>{fmt(report['generator'])}</code>, data <code>"
        f"{fmt(report['data'])}</code>, held-out split <b>{fmt(report['split'])}</b>, "
        f"{report['n_per_class']} synthetic images per class, feature model "
        f"<code>{fmt(report['classifier'])}</code>, seed {report['seed']}, created "
        f"{fmt(report['created'])}. How to read it: docs/EVALUATION.md.</p>",
        f"<h2>Warnings</h2><ul>{flags}</ul>", f"<ul>{notes}</ul>" if notes else "",
        "<h2>Realism: can a classifier tell synthetic from real?</h2><p>A classifier two-sample "
        "test: logistic regression on per-image standardized 32x32 pixels, 5-fold "
        "cross-validated, equal numbers of synthetic and held-out real images (mean of "
        f"{TWO_SAMPLE_REPEATS} synthetic draws; 95% interval). 0.5 = indistinguishable, 1.0 = "
        "always told apart. Beside it the same test between real training images and the "
        "held-out ones: two sets of real patients. Pixel diversity: mean distance between "
        "synthetic images over that between real ones (1 = as varied; per class against real "
        "training images of the class).</p>",
        table(c2st_rows, ["set", "N held-out", "synthetic vs real", "real vs real",
                          "pixel diversity", "note"]),
        "<h2>Realism (feature space)</h2><p>Synthetic vs held-out real images of each class; the "
        "baseline is as many real training images against the same held-out images: what a "
        "perfect generator would score at this N. FID is biased upwards at small N.</p>",
        table(real_rows, ["class", "N syn", "N real", "FID", "FID base", "KID", "KID std",
                          "KID base", "precision", "recall", "P base", "R base", "note"]),
        "<h2>Label fidelity</h2><p>The judge's AUROC and accuracy (its decision, the class with "
        "the highest probability / training prevalence, is the requested class) on synthetic vs "
        "held-out real images. Judge val AUROC: how well the judge recognizes the class in real "
        "validation images; near 0.5 its verdicts mean little. Swap ratio: distance between "
        "G(z, c) and G(z, other class) relative to the distance between two z of class c.</p>",
        table(lab_rows, ["class", "judge val AUROC", "AUROC syn", "AUROC real", "acc syn",
                         "acc real", "swap ratio px", "swap ratio feat"]),
        "<h2>Diversity</h2><p>Mean pairwise MS-SSIM within each class (lower = more diverse).</p>",
        table(div_rows, ["class", "synthetic", "real", "pairs"]),
        "<h2>Memorization</h2>",
        f"<p>{html.escape(ref['near_copy_rule'])}: threshold "
        f"{fmt(ref['heldout_to_train_pixel_p01'])}"
        f" (median held-out distance {fmt(ref['heldout_to_train_pixel_median'])}, "
        f"{ref['n_heldout']} held-out images). Ratios: synthetic distance / that median. "
        "Privacy filter: the share `cxraug augment` would replace by its rule ("
        f"{html.escape(str(ref.get('privacy_filter_rule')))}).</p>",
        table(mem_rows, ["class", "near-copies", "fraction", "feature-near fraction",
                         "min px distance", "px ratio (median)", "feature ratio (median)",
                         "privacy filter"]),
        "<h3>Closest synthetic / training pairs</h3>", img(pairs, "nearest pairs"),
        "<h2>Plots</h2>",
    ]
    for title, png in charts:
        parts += [f"<h3>{html.escape(title)}</h3>", img(png, title)]
    parts += ["<h2>Samples</h2><p>Synthetic (rows = classes)</p>", img(samples, "samples"),
              "<p>Real held-out</p>", img(real, "real"),
              "<p>Same z (columns), different label (rows): paper Fig. 9</p>",
              img(swap, "label swap"), "</body></html>"]
    return "\n".join(parts)
