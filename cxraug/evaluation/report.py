"""``cxraug evaluate``: realism, label fidelity, diversity and memorization of a generator.

The generator is any callable ``(z, labels) -> images`` in ``[-1, 1]`` (an
:class:`~cxraug.inference.generator.OnnxGenerator` from the CLI, fakes in tests). Real images come
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
* memorization: whether each synthetic image is a near-copy of a training image, by the one rule
  training's checkpoint choice and augment's privacy filter apply (:mod:`cxraug.near_copy`:
  standardized 32x32 thumbnails, closer to a training image than 95% of the cache's val + test
  patients are); beside it, the nearest training image in full-size pixels and in feature space.
"""

from __future__ import annotations

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
from ..inference.classifier import CLASSIFIER_JSON, ClassifierFeatures, resize_images
from ..io_utils import write_bytes_atomic, write_json_atomic, write_text_atomic
from ..near_copy import EXPECTED_SHARE, THUMB
from ..probes.battery import realism_gap, run_probes, worst
from . import metrics as M
from . import realism as R
from . import render
from . import sections as S
from .classifier import open_cache
from .render import summary_text
from .shared import JudgeOutputs, Neighbours, Shared

#: Feature-near threshold, and the reported full-size pixel reference: this percentile of the
#: held-out -> train nearest-neighbour distances. Not the near-copy rule (:mod:`cxraug.near_copy`).
FEATURE_NEAR_PERCENTILE = 1.0
#: A class is flagged when more of its images than this are near-copies: twice the share of new
#: patients' own images the rule counts (so a generator of new patients is not flagged by chance).
NEAR_COPY_WARNING = 2 * EXPECTED_SHARE
#: Latent vectors per class for the same-z / different-label measurement.
SWAP_Z = 16
#: Held-out real images a class needs before FID, KID and precision/recall are computed for it:
#: below this they are noise (KID comes out negative, FID is dominated by its small-N bias).
MIN_FEATURE_HELDOUT = 50
#: Held-out real images a class needs before its label accuracy is compared with synthetic.
MIN_LABEL_HELDOUT = 10
#: Label-matched synthetic draws of the realism probes (their two-sample tests average them).
PROBE_DRAWS = 3
#: Warning thresholds: per-class two-sample accuracy, pixel diversity ratio, caricature margin.
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


class _Gen:
    """Uniform wrapper around an ONNX generator or a plain callable."""

    def __init__(self, model: Any, cache_classes: list[str], cache_size: int) -> None:
        self.source = "callable"
        if isinstance(model, (str, os.PathLike)):
            path = Path(model)
            if not path.is_file():
                raise CxrError(f"{path}: generator not found; export one with "
                               "`cxraug export-onnx`")
            from ..inference.generator import OnnxGenerator

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


def read_metrics_csv(run: Path) -> dict[str, list[float]]:
    """Columns of a run's metrics.csv as floats (one row per logged step or epoch; NaN where a
    row has no value)."""
    from ..metrics_csv import read_metrics

    path = run / "metrics.csv" if run.is_dir() else run
    if not path.is_file():
        raise CxrError(f"{path}: no metrics.csv; pass --run the folder `cxraug train` wrote")
    rows = read_metrics(path)
    keys = list(dict.fromkeys(k for row in rows for k in row))
    return {k: [row.get(k, float("nan")) for row in rows] for k in keys}


# ------------------------------------------------------------------------------------ result
@dataclass
class EvaluateResult:
    """What `cxraug evaluate` wrote, and its numbers."""

    out: Path
    report: dict[str, Any]

    def summary(self) -> str:
        return summary_text(self.report, self.out)


# ---------------------------------------------------------------------------------- evaluate
def _sha256_or_none(model: Any) -> str | None:
    """The generator file's sha256, so a report names exactly what it measured."""
    from ..io_utils import sha256_file

    return sha256_file(model) if isinstance(model, (str, os.PathLike)) and Path(
        model).is_file() else None


def near_copy_check(data: str | os.PathLike, images: np.ndarray) -> dict[str, Any]:
    """Which uint8 images are near-copies of a training image of the cache ``data``: the one rule
    (:mod:`cxraug.near_copy`) with the reference augment's privacy filter uses
    (:func:`cxraug.data.reference.build_reference` of this cache: its train split, the threshold
    from its val + test patients), so the report counts exactly what augment would replace.
    ``copy`` and ``distance`` per image, ``train_row``: the cache row of its nearest training
    thumbnail."""
    import tempfile

    from ..copy_reference import TrainReference
    from ..data.cache import CacheReader
    from ..data.reference import build_reference

    with CacheReader(data) as reader:
        train_rows = np.asarray(reader.indices("train"), dtype=np.int64)
    with tempfile.TemporaryDirectory(prefix="cxraug-evaluate-") as tmp:
        path = build_reference(data, Path(tmp) / "ref.trainref.h5")
        with TrainReference(path) as ref:
            check = ref.check(images)
            assert check.index is not None
            rule = (f"{THUMB}x{THUMB} standardized thumbnail closer to a training image than "
                    f"{100 - ref.percentile:g}% of the {ref.n_heldout} val + test patients are: "
                    f"threshold {ref.threshold:.3g}")
            return {"copy": check.copy, "distance": check.distance,
                    "train_row": train_rows[check.index], "rule": rule,
                    "threshold": ref.threshold, "percentile": ref.percentile,
                    "n_heldout": ref.n_heldout}


def evaluate(model: Any, data: str | os.PathLike, out: str | os.PathLike,
             classifier: str | os.PathLike | None = None, split: str = "val",
             n_per_class: int = 200, run: str | os.PathLike | None = None, seed: int = 0,
             progress: bool = True, min_heldout: int = MIN_FEATURE_HELDOUT) -> EvaluateResult:
    """Evaluate a generator against a cache's real images; write report.json and report.html.

    ``min_heldout``: held-out images a class needs before FID, KID and precision/recall are
    computed for it (below, the report says "too few held-out images (n=...)").

    The phases run in this order because they draw from one seeded random generator (latents,
    then the baseline's training subsets, then the probes' latents and real sample): reordering
    them changes every number. Each reads what earlier ones returned; the sections
    (:mod:`.sections`) read only :class:`~cxraug.evaluation.shared.Shared`, built from them."""
    started = time.time()
    data, out = Path(data), Path(out)
    _check_arguments(out, split, n_per_class)
    run_cols = read_metrics_csv(Path(run)) if run is not None else None
    rng = np.random.default_rng(seed)

    with open_cache(data) as reader:
        ctx = _open_context(reader, model, data, out, classifier, split, n_per_class, seed,
                            min_heldout, rng, progress)
        synthetic = _generate(ctx)
        real = _read_real(ctx)
        embedded = _embed(ctx, synthetic, real)
        judge = _judge_outputs(ctx, embedded, real)
        neighbours = _neighbours(ctx, synthetic, embedded)
        pooled_probes, side_by_side = _probes(ctx, real.heldout_all)
        shared = Shared(
            classes=ctx.classes, cache_index=ctx.cache_index, seed=seed, min_heldout=min_heldout,
            synthetic=synthetic.per_class, synthetic_class=synthetic.class_of,
            synthetic_features=embedded.synthetic_features, heldout_images=real.heldout_images,
            heldout_labels=real.heldout_labels, heldout_features=embedded.heldout_features,
            train_features=embedded.train_features, train_labels=real.train_labels,
            train_subset=real.train_subset, train_subset_images=real.train_subset_images,
            judge_info=ctx.features.info, judge=judge, label_swap_images=synthetic.label_swap,
            label_swap_features=embedded.label_swap_features, neighbours=neighbours,
            pooled_probes=pooled_probes)
        per_class, overall = S.compute(shared)
        pictures = _pictures(ctx, synthetic, real, neighbours, side_by_side)

    report = _report(ctx, model, split, started, per_class, overall, neighbours, pictures)
    _write(out, report, pictures, ctx.classes, run_cols)
    return EvaluateResult(out=out, report=report)


def _check_arguments(out: Path, split: str, n_per_class: int) -> None:
    """Refuse arguments that cannot give a report, before anything is read."""
    if n_per_class < 4:
        raise CxrError(f"--n-per-class {n_per_class}: use at least 4 (precision/recall need k+1)")
    if split not in ("val", "test"):
        raise CxrError(f"--split {split!r}: compare with a held-out split, 'val' or 'test'")
    if out.exists() and not out.is_dir():
        raise CxrError(f"{out}: exists and is not a folder; pass a folder for --out")


# -------------------------------------------------------------------------- phase 0: context
@dataclass
class _Context:
    """What every phase reads: the open cache, the generator, what is evaluated and how."""

    reader: Any  # the open cache (``open_cache``'s reader); closed when evaluate's phases end
    data: Path  # the cache's path
    gen: _Gen
    classes: list[str]  # evaluated: the generator's classes that are in the cache, its order
    cache_classes: list[str]  # the cache's class names (a label's value indexes this list)
    cache_index: dict[str, int]  # evaluated class name -> its cache class index
    size: int  # the cache's image side in pixels (generated images are resized to it)
    labels: np.ndarray  # int [cache rows]: every row's cache class index (-1: multi-label)
    fingerprint: str  # the cache's data fingerprint
    heldout_rows: np.ndarray  # int, sorted: cache rows of the held-out split, every class
    train_rows: np.ndarray  # int, sorted: cache rows of the training split
    features: ClassifierFeatures  # the feature model (and judge, when it has probabilities)
    classifier_desc: str  # how report.json names the feature model
    has_judge: bool  # the feature model gives a probability for every evaluated class
    n_per_class: int  # synthetic images generated per class
    seed: int
    min_heldout: int
    rng: np.random.Generator  # the one random generator of the phases (see evaluate)
    progress: bool  # progress bars and messages on stderr
    notes: list[str]  # report.json's notes: what was not evaluated, or evaluated differently


def _open_context(reader: Any, model: Any, data: Path, out: Path, classifier: Any, split: str,
                  n_per_class: int, seed: int, min_heldout: int, rng: np.random.Generator,
                  progress: bool) -> _Context:
    """The generator, the classes both it and the cache have, the splits and the judge (trained
    first when none is given); refuses a cache that cannot be compared with this generator."""
    notes: list[str] = []
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
    return _Context(reader=reader, data=data, gen=gen, classes=classes,
                    cache_classes=cache_classes, cache_index=cache_idx, size=size, labels=labels,
                    fingerprint=fingerprint, heldout_rows=held_idx, train_rows=train_idx,
                    features=feats, classifier_desc=classifier_desc, has_judge=judge,
                    n_per_class=n_per_class, seed=seed, min_heldout=min_heldout, rng=rng,
                    progress=progress, notes=notes)


# ------------------------------------------------------------------------- phase 1: generate
@dataclass(frozen=True)
class _Synthetic:
    """The generated images: n per class, pooled, and the same-z / different-label grid."""

    per_class: dict[str, np.ndarray]  # class name -> uint8 [n, S, S], at the cache's size
    pooled: np.ndarray  # uint8 [N, S, S]: per_class concatenated in class order
    class_of: np.ndarray  # int [N]: each pooled image's class position
    label_swap: np.ndarray  # uint8 [C, Z, S, S]: Z latents, each drawn with every label


def _generate(ctx: _Context) -> _Synthetic:
    """n images per class from the generator, then SWAP_Z latents with every label (paper
    Fig. 9: does changing only the label change the image?)."""
    from ..progress import progress_bar

    gen, classes, n = ctx.gen, ctx.classes, ctx.n_per_class
    z_all = ctx.rng.standard_normal((len(classes), n, gen.latent_dim)).astype(np.float32)
    synth: dict[str, np.ndarray] = {}
    for ci, name in enumerate(progress_bar(classes, desc="generating", disable=not ctx.progress,
                                           leave=False)):
        lab = np.full(n, gen.class_names.index(name), dtype=np.int64)
        synth[name] = gen(z_all[ci], lab)
    n_swap = min(SWAP_Z, n)
    z_swap = ctx.rng.standard_normal((n_swap, gen.latent_dim)).astype(np.float32)
    swap = np.stack([gen(z_swap, np.full(n_swap, gen.class_names.index(c), np.int64))
                     for c in classes])
    return _Synthetic(per_class=synth, pooled=np.concatenate([synth[c] for c in classes]),
                      class_of=np.repeat(np.arange(len(classes)), n), label_swap=swap)


# ---------------------------------------------------------------------- phase 2: real images
@dataclass(frozen=True)
class _Real:
    """The real images compared with: the held-out split, and the baseline's training subsets."""

    heldout_all: np.ndarray  # uint8 [every held-out image, S, S]: the probes' real side
    heldout_images: np.ndarray  # uint8 [H, S, S]: those of the evaluated classes
    heldout_labels: np.ndarray  # int [H]: each one's cache class index
    train_labels: np.ndarray  # int [T]: cache class index of every training image
    train_subset: dict[str, np.ndarray]  # class -> sorted positions into the training split
    train_subset_images: dict[str, np.ndarray]  # class -> uint8 [<=n, S, S]: those images


def _read_real(ctx: _Context) -> _Real:
    """Held-out images, and per class min(n, available) random training images: what a
    generator that draws new images from the real distribution would score at this n."""
    reader = ctx.reader
    held_all = np.asarray(reader.read(ctx.heldout_rows))
    held_labels = ctx.labels[ctx.heldout_rows]
    keep = np.isin(held_labels, [ctx.cache_index[c] for c in ctx.classes])
    train_labels = ctx.labels[ctx.train_rows]
    train_subset: dict[str, np.ndarray] = {}
    for name in ctx.classes:
        pos = np.flatnonzero(train_labels == ctx.cache_index[name])
        take = min(ctx.n_per_class, len(pos))
        train_subset[name] = np.sort(ctx.rng.choice(pos, take, replace=False)) if take else pos
    subset_images = {c: np.asarray(reader.read(ctx.train_rows[train_subset[c]]))
                     for c in ctx.classes}
    return _Real(heldout_all=held_all, heldout_images=held_all[keep],
                 heldout_labels=held_labels[keep], train_labels=train_labels,
                 train_subset=train_subset, train_subset_images=subset_images)


# ---------------------------------------------------------------------------- phase 3: embed
@dataclass(frozen=True)
class _Embedded:
    """Feature vectors (and judge probabilities) of every image compared; the training split's
    pass also found each synthetic and held-out image's nearest training image in pixels."""

    synthetic_features: np.ndarray  # float [N, D]
    synthetic_probs: np.ndarray | None  # float [N, judge classes]; None without a judge
    heldout_features: np.ndarray  # float [H, D]
    heldout_probs: np.ndarray | None  # float [H, judge classes]
    label_swap_features: np.ndarray  # float [C, Z, D]
    train_features: np.ndarray  # float [T, D]
    synthetic_pixel: M.NearestNeighbors  # synthetic -> nearest training image, full-size pixels
    heldout_pixel: M.NearestNeighbors  # held-out -> nearest training image, full-size pixels


def _embed(ctx: _Context, synthetic: _Synthetic, real: _Real) -> _Embedded:
    """Embed everything with the feature model; the training split is read once, in blocks
    (bounded memory at NIH scale), for its features and the pixel nearest neighbours both."""
    feats = ctx.features
    syn_feat, syn_prob = feats.embed(synthetic.pooled)
    held_feat, held_prob = feats.embed(real.heldout_images)
    n_cls, n_swap = synthetic.label_swap.shape[:2]
    swap_feat = feats.embed(synthetic.label_swap.reshape(-1, ctx.size, ctx.size))[0].reshape(
        n_cls, n_swap, -1)
    nn_syn = M.NearestNeighbors(synthetic.pooled)
    nn_held = M.NearestNeighbors(real.heldout_images)
    train_feat = _stream_train(ctx.reader, ctx.train_rows, feats, [nn_syn, nn_held],
                               ctx.progress)
    return _Embedded(synthetic_features=syn_feat, synthetic_probs=syn_prob,
                     heldout_features=held_feat, heldout_probs=held_prob,
                     label_swap_features=swap_feat, train_features=train_feat,
                     synthetic_pixel=nn_syn, heldout_pixel=nn_held)


def _judge_outputs(ctx: _Context, embedded: _Embedded, real: _Real) -> JudgeOutputs | None:
    """The judge's probabilities in evaluated-class order and its decisions; None without one.

    The decision divides each probability by the class's training prevalence (the Bayes
    decision under equal priors), so a frequent class such as No Finding does not win every
    argmax; without a known prevalence it is the plain argmax."""
    if not ctx.has_judge:
        return None
    feats = ctx.features
    syn_prob, held_prob = embedded.synthetic_probs, embedded.heldout_probs
    assert syn_prob is not None and held_prob is not None and feats.class_names
    cols = [feats.class_names.index(c) for c in ctx.classes]
    syn_p, held_p = syn_prob[:, cols], held_prob[:, cols]
    prev = feats.prevalence
    scale = 1.0 / prev[cols] if prev is not None else np.ones(len(cols))
    return JudgeOutputs(
        synthetic_probs=syn_p, heldout_probs=held_p,
        synthetic_decisions=(syn_p * scale).argmax(1), heldout_decisions=(held_p * scale).argmax(1),
        heldout_class=np.array([ctx.classes.index(ctx.cache_classes[v])
                                for v in real.heldout_labels]))


# ----------------------------------------------------------------------- phase 4: neighbours
def _neighbours(ctx: _Context, synthetic: _Synthetic, embedded: _Embedded) -> Neighbours:
    """Each synthetic image's nearest training image (pixels, features), the near-copies by
    the one rule, and the held-out (other patients) -> train distances they are read against."""
    _, syn_fdist = M.nearest_neighbors(embedded.synthetic_features, embedded.train_features)
    _, held_fdist = M.nearest_neighbors(embedded.heldout_features, embedded.train_features)
    held_pdist = embedded.heldout_pixel.distance
    # feature-near threshold and the pixel reference ("lower": an observed held-out distance,
    # so with fewer than 100 held-out images no held-out image is below it)
    feat_thresh = float(np.percentile(held_fdist, FEATURE_NEAR_PERCENTILE, method="lower"))
    # near-copies: the one rule, with the privacy filter's reference (what augment replaces)
    privacy = near_copy_check(ctx.data, synthetic.pooled)
    return Neighbours(
        pixel_distance=embedded.synthetic_pixel.distance,
        pixel_nearest=embedded.synthetic_pixel.index, feature_distance=syn_fdist,
        feature_near=syn_fdist < feat_thresh, near_copy=privacy["copy"],
        near_copy_check=privacy,
        heldout_pixel_p01=float(np.percentile(held_pdist, FEATURE_NEAR_PERCENTILE,
                                              method="lower")),
        heldout_pixel_median=float(np.median(held_pdist)), heldout_feature_p01=feat_thresh,
        heldout_feature_median=float(np.median(held_fdist)), n_heldout=int(len(held_pdist)))


def _memorization_reference(nb: Neighbours) -> dict[str, Any]:
    """report.json's memorization_reference: what "near" is for images of other patients."""
    privacy = nb.near_copy_check
    return {
        "heldout_to_train_pixel_p01": nb.heldout_pixel_p01,
        "heldout_to_train_pixel_median": nb.heldout_pixel_median,
        "heldout_to_train_feature_p01": nb.heldout_feature_p01,
        "heldout_to_train_feature_median": nb.heldout_feature_median,
        "n_heldout": nb.n_heldout,
        "near_copy_rule": f"{privacy['rule']} (or at distance 0): the rule of augment's "
                          "privacy filter and training's checkpoint choice",
        "near_copy_threshold": privacy["threshold"],
        "near_copy_percentile": privacy["percentile"],
        "near_copy_n_heldout": privacy["n_heldout"],
        "privacy_filter_rule": privacy["rule"],
    }


# --------------------------------------------------------------------------- phase 5: probes
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


def _probes(ctx: _Context, held_all: np.ndarray
            ) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray] | None]:
    """The realism probes over all held-out images the generator can label (multi-label ones
    too for a multi-hot generator), each against a synthetic image drawn with its own labels, so
    the two sets have the same mix of findings; beside each the same probe between as many random
    real training images and the held-out ones (two sets of real patients). Also the pixel
    two-sample test's headline entry and the pixel diversity of the synthetic images over that of
    the held-out ones (:attr:`Shared.pooled_probes`), and the (real, synthetic) images of the
    side-by-side picture (None when too few images are labelable)."""
    gen, reader, rng = ctx.gen, ctx.reader, ctx.rng
    glabels, ok = _label_rows(gen, reader, ctx.heldout_rows)
    n = int(ok.sum())
    if n < R.MIN_TWO_SAMPLE:
        return {"two_sample": None, "two_sample_real": None, "pixel_diversity_ratio": None,
                "probes": None, "realism_gap": None,
                "two_sample_note": f"too few held-out images (n={n})"}, None
    held = held_all[ok]
    draws = []
    for _ in range(PROBE_DRAWS):
        z = rng.standard_normal((n, gen.latent_dim)).astype(np.float32)
        draws.append(gen(z, glabels[ok]))
    synthetic = np.concatenate(draws)
    real_b = None
    train_idx = ctx.train_rows
    if len(train_idx) >= R.MIN_TWO_SAMPLE:
        real_b = np.asarray(reader.read(np.sort(rng.choice(train_idx, min(n, len(train_idx)),
                                                           replace=False))))
    probes = run_probes(synthetic, held, real_b, seed=ctx.seed, repeats=PROBE_DRAWS)
    pixel = probes["pixel_c2st"]
    return {"two_sample": {"accuracy": pixel.value, "low": pixel.low, "high": pixel.high,
                           "n_per_side": pixel.n_per_side, "repeats": PROBE_DRAWS},
            "two_sample_real": None if real_b is None else {
                "accuracy": pixel.real, "n_per_side": pixel.n_per_side,
                **dict(zip(("low", "high"), R.wilson_interval(
                    round(pixel.real * 2 * pixel.n_per_side), 2 * pixel.n_per_side),
                    strict=True))},
            "pixel_diversity_ratio": R.diversity_ratio(R.thumbnails(draws[0]),
                                                      R.thumbnails(held)),
            "probes": {k: p.to_dict() for k, p in probes.items()},
            "realism_gap": realism_gap(probes), "realism_worst": worst(probes),
            "two_sample_note": None}, (held, draws[0])


# --------------------------------------------------------------------------- phase 6: render
@dataclass(frozen=True)
class _Pictures:
    """The report's images (PNG bytes) and the closest pairs they show."""

    samples_png: bytes  # the first 8 synthetic images of each class
    real_png: bytes  # the first 8 held-out images of each class
    swap_png: bytes  # the label-swap grid: a row per label, a column per latent
    pairs_png: bytes  # near-copies, then the closest others, each beside its training image
    side_png: bytes | None  # held-out | synthetic drawn with the same labels (the probes')
    closest: list[dict[str, Any]]  # report.json's closest_pairs, one per pair shown


def _pictures(ctx: _Context, synthetic: _Synthetic, real: _Real, nb: Neighbours,
              side_by_side: tuple[np.ndarray, np.ndarray] | None) -> _Pictures:
    """Image grids and the closest synthetic/training pairs (their training images are read
    from the cache, so this runs while it is open)."""
    classes, synth = ctx.classes, synthetic.per_class
    cols_n = min(8, ctx.n_per_class)
    samples_png = render.image_grid([(c, synth[c][:cols_n]) for c in classes])
    side_png = render.side_by_side(*side_by_side) if side_by_side is not None else None
    real_png = render.image_grid([(c, real.heldout_images[
        real.heldout_labels == ctx.cache_index[c]][:cols_n]) for c in classes])
    swap_png = render.image_grid([(c, synthetic.label_swap[ci, :cols_n])
                                  for ci, c in enumerate(classes)])
    # near-copies first (closest by the rule first, each beside the training image the rule
    # matched), then the closest other images in full-size pixels
    near_copy, privacy = nb.near_copy, nb.near_copy_check
    copies = np.flatnonzero(near_copy)
    copies = copies[np.argsort(privacy["distance"][copies], kind="stable")][:12]
    others = np.flatnonzero(~near_copy)
    others = others[np.argsort(nb.pixel_distance[others], kind="stable")]
    order = np.concatenate([copies, others[:12 - len(copies)]])
    partner = np.where(near_copy, privacy["train_row"], ctx.train_rows[nb.pixel_nearest])
    pair_rows = np.unique(partner[order])
    pair_imgs = np.asarray(ctx.reader.read(pair_rows))
    lookup = {int(r): i for i, r in enumerate(pair_rows)}
    shown = {int(k): pair_imgs[lookup[int(partner[k])]] for k in order}
    pooled, class_of = synthetic.pooled, synthetic.class_of
    pair_d = {k: float(np.linalg.norm(pooled[k].astype(np.float64) - im.astype(np.float64)))
              for k, im in shown.items()}
    pairs = [(f"{classes[class_of[k]][:12]} d={pair_d[k]:.0f}"
              f"{' COPY' if near_copy[k] else ''}", pooled[k], shown[k]) for k in shown]
    pix_median = nb.heldout_pixel_median
    closest = [{"class": classes[class_of[k]], "synthetic_number": int(k % ctx.n_per_class),
                "train_image_index": str(ctx.reader.image_index[partner[k]]),
                "pixel_distance": pair_d[k],
                "pixel_ratio": pair_d[k] / pix_median if pix_median > 0 else pair_d[k],
                "near_copy": bool(near_copy[k])}
               for k in shown]
    return _Pictures(samples_png=samples_png, real_png=real_png, swap_png=swap_png,
                     pairs_png=render.pairs_image(pairs), side_png=side_png, closest=closest)


def _report(ctx: _Context, model: Any, split: str, started: float, per_class: dict[str, Any],
            overall: dict[str, Any], nb: Neighbours, pictures: _Pictures) -> dict[str, Any]:
    """report.json's content (JSON-safe: numpy scalars to Python, NaN to null, rounded)."""
    flags = _flags(per_class, overall, ctx.has_judge)
    return _clean({
        "format": "cxraug-evaluate-1", "cxraug_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": time.time() - started,
        "generator": ctx.gen.source, "generator_sha256": _sha256_or_none(model),
        "data": str(ctx.data), "data_fingerprint": ctx.fingerprint,
        "classifier": ctx.classifier_desc, "split": split, "n_per_class": ctx.n_per_class,
        "seed": ctx.seed, "min_heldout": ctx.min_heldout,
        "image_size": ctx.size, "classes": per_class, "overall": overall,
        "memorization_reference": _memorization_reference(nb), "closest_pairs": pictures.closest,
        "flags": flags, "notes": ctx.notes,
        "files": {"html": "report.html", "samples": "samples.png",
                  "nearest_pairs": "nearest_pairs.png",
                  "side_by_side": "side_by_side.png" if pictures.side_png is not None else None},
    })


def _write(out: Path, report: dict[str, Any], pictures: _Pictures, classes: list[str],
           run_cols: dict[str, list[float]] | None) -> None:
    """report.json, report.html (charts and images inline) and the PNGs beside them."""
    out.mkdir(parents=True, exist_ok=True)
    charts = render.charts(report, classes, run_cols)
    write_bytes_atomic(out / "samples.png", pictures.samples_png)
    write_bytes_atomic(out / "nearest_pairs.png", pictures.pairs_png)
    if pictures.side_png is not None:
        write_bytes_atomic(out / "side_by_side.png", pictures.side_png)
    write_json_atomic(out / "report.json", report)
    write_text_atomic(out / "report.html", render.html_report(
        report, charts, pictures.samples_png, pictures.real_png, pictures.swap_png,
        pictures.pairs_png, pictures.side_png))


def _flags(per_class: dict[str, Any], overall: dict[str, Any], judge: bool) -> list[str]:
    """Plain-language warnings a user should see before using the synthetic data."""
    flags = [f"not realistic yet: {w}" for w in
             (p["warning"] for p in (overall.get("probes") or {}).values()) if w]
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
        if memo["near_copy_fraction"] > NEAR_COPY_WARNING:
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
