"""``cxraug augment``: class-balanced synthetic data in NIH's format, deterministic and resumable.

NO TensorFlow here: onnxruntime runs the exported generator (:mod:`cxraug.inference.generator`).

Output folder (``out``)::

    job.json               what this job is (model sha256, seed, per-class counts, size, layout)
    images/10000000_000.png ...   8-bit grayscale PNGs (``layout="class-folders"``: <class>/...)
    Data_Entry_2017.csv    the synthetic rows in NIH's exact layout (header quirk kept)
    mixed.csv              real rows + synthetic rows with ``Path`` and ``Synthetic`` (0/1) columns
    manifest.json          model sha256 + metadata, seed, shard, counts, provider, versions, timings
    parts/shard-I-of-N.csv/.json   a sharded run's own rows and manifest (``--shard I/N``)

Naming. Every generated image has a *target* (a class, or a label combination for multi-hot
models) with a code and an index ``k`` (0, 1, ...). Each image comes from its own latent draw, so
it is its own synthetic patient: its NIH name is ``PPPPPPPP_000.png`` with Patient ID
``10,000,000 + code * 1,000,000 + k`` and Follow-up 0. Real NIH patient ids are 1..30,805, so a
synthetic patient is never a real one, no two synthetic images share a patient (loaders that keep
one image per patient, such as torchxrayvision's ``NIH_Dataset``, and patient-level splits such as
GroupKFold treat every image as the new patient it is), and the same (target, k) always gets the
same name on every machine, shard and rerun. A class's code is its index in the model's
``class_names``; a label combination's code is ``len(class_names) + j`` (its position among the
``--label`` options). Up to 90 codes and a million images per target. Folders written by the
earlier scheme (``cxraug-augment-1``: a synthetic patient per 1,000 images of a target, Patient ID
``90,000,000 + code * 100,000 + k // 1000``) are not resumed or mixed with this one: ``--overwrite``
replaces such a job, or give a new ``--out``.

CSV columns. ``Finding Labels``: the generated label (``A|B`` for combinations, in NIH's
alphabetical order); ``Follow-up #`` and ``Patient ID`` from the name; ``OriginalImage Width`` /
``Height``: the written size; ``View Position``: the view of the generator's training images
(its metadata ``view``, or ``view=``); age, gender and pixel spacing are left empty (a generator
has none). ``mixed.csv`` ``Path``: synthetic rows relative to the output folder (so the folder can
move); real rows the absolute path of the real PNG, found under ``real_root`` or, without it,
under the real CSV's folder (``real_csv``) or the cache's data root (``data``) the way ``prepare``
finds images; real images that cannot be found are left out of mixed.csv and counted
(``real_missing``). Real rows keep every NIH column (a cache's rows are completed from the CSV it
was prepared from, when that file is still there). Join ``Path`` to the folder holding mixed.csv
(``os.path.join`` keeps absolute paths).

Determinism. The latent vector of image ``k`` of a target comes from a counter-based Philox
stream keyed by ``(seed, target)`` at counter ``k * 2**128``: it depends only on (seed, target, k),
never on the batch size, the worker count, the shard or interruptions. PNGs are written by a small
built-in encoder (filter Up, zlib level 1, run-length strategy) so the bytes do not depend on
Pillow's version. Bytes are reproducible for the same onnxruntime provider and library versions
(the manifest records them); CUDA and CPU results differ in the last bits. onnxruntime's CPU
kernels give bit-identical images whatever the batch size (checked on the cxraug-128 export and
in the tests). On CUDA, cuDNN may pick other algorithms for other batch shapes: there, keep the
same ``--batch-size`` across shards and reruns.

Sharding. ``shard="i/n"`` makes the images with ``k % n == i - 1`` of every target and writes
``parts/shard-i-of-n.csv`` (NIH layout) and ``.json``. To merge: copy every shard's folder into
one (``cp -r``/``rsync``: the file names never overlap), then run the same command without
``--shard`` and with ``--resume``: it finds every image on disk, generates nothing and writes the
merged ``Data_Entry_2017.csv``, ``mixed.csv`` and ``manifest.json``, byte-identical to an unsharded
run.

Crash safety. Each PNG is written to a temporary ``.NAME.PID.tmp`` and renamed into place, so a
file with a final name is always complete. ``job.json`` is written before any image. The CSVs are
rewritten atomically after every class, on Ctrl-C and at the end, from the set of files on disk;
after a kill -9 they may list fewer images than the folder holds until ``--resume`` finishes the
job (it validates every file's PNG signature and IEND trailer, regenerates broken ones and removes
temporary files whose writer process is gone: shards running at once in one folder, each with
``--resume``, keep each other's files in flight). Real counts: ``target_per_class`` counts the
real images of ``real_csv`` or ``data``; with neither, every class is topped up from zero (and
``augment`` says so).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import json
import math
import os
import re
import sys
import tempfile
import time
import zlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import __version__
from ..data.labels import VIEWS
from ..errors import CxrError
from ..grid import to_uint8
from ..inference.generator import OnnxGenerator
from ..io_utils import sha256_file, write_json_atomic, write_text_atomic
from .filters import HIGH_DROP, KEEP, PRIVACY, ClassStats, Filters, SlotRecord
from .png import PNG_DEFLATE, PNG_DEFLATES, encode_png, png_settings, require_isal
from .sinks import SINKS, TMP_RE, Sink

JOB_FORMAT = "cxraug-augment-2"
#: The job format of the earlier naming (1,000 images per synthetic patient): refused on resume.
OLD_JOB_FORMAT = "cxraug-augment-1"
SYNTH_PATIENT_BASE = 10_000_000  # above every NIH patient id (1..30,805), 8 digits
CODE_STRIDE = 1_000_000  # synthetic patients (= images) per target
MAX_CODES = 90  # the last code's last patient is 99,999,999
MAX_PER_TARGET = CODE_STRIDE
MULTI_HOT_KEY = 1 << 62  # RNG keys of multi-hot targets: this bit | class bitmask

DATA_CSV = "Data_Entry_2017.csv"
MIXED_CSV = "mixed.csv"
MANIFEST = "manifest.json"
JOB_FILE = "job.json"
PARTS = "parts"

_SYNTH_RE = re.compile(r"^[1-9]\d{7}_000\.png$")
#: Names of the earlier scheme (removed by --overwrite of such a job, never resumed).
_OLD_SYNTH_RE = re.compile(r"^9\d{7}_\d{3}\.png$")


# ----------------------------------------------------------------------------- small pieces
@dataclass(frozen=True)
class Target:
    """One thing to generate: a class or a label combination, and how many images of it."""

    name: str  # Finding Labels text
    code: int  # naming code (module docstring)
    key: int  # RNG key
    classes: tuple[int, ...]  # class indices of the label (one for a class)
    folder: str  # folder name in the class-folders layout
    real: int | None  # real images counted (None without real data)
    count: int  # images the whole job generates (all shards)


def synthetic_name(code: int, k: int) -> str:
    """NIH-style name of image ``k`` of the target with ``code``: its own synthetic patient
    (never a real NIH id), follow-up 0."""
    if not (0 <= code < MAX_CODES and 0 <= k < CODE_STRIDE):
        raise ValueError(f"code {code}, k {k} outside the naming scheme")
    return f"{SYNTH_PATIENT_BASE + code * CODE_STRIDE + k:08d}_000.png"


def parse_synthetic_name(name: str) -> tuple[int, int]:
    """``(code, k)`` of a name :func:`synthetic_name` made."""
    return divmod(int(name[:8]) - SYNTH_PATIENT_BASE, CODE_STRIDE)


def latents(seed: int, key: int, ks: Sequence[int] | np.ndarray, dim: int,
            tries: Sequence[int] | None = None) -> np.ndarray:
    """Latent vectors float32 ``[len(ks), dim]``; row i depends only on (seed, key, ks[i]) and
    the try ``tries[i]`` (default 0).

    A Philox stream per image, keyed by (seed, key) and started at counter
    ``k * 2**128 + try * 2**96``, so images never share random numbers and no batching changes
    them; try 0 is the unfiltered image, the later tries are the filters' replacements.
    """
    out = np.empty((len(ks), dim), dtype=np.float32)
    full_key = (int(seed) << 64) | int(key)
    for i, k in enumerate(ks):
        attempt = 0 if tries is None else int(tries[i])
        bitgen = np.random.Philox(key=full_key, counter=(int(k) << 128) | (attempt << 96))
        out[i] = np.random.Generator(bitgen).standard_normal(dim, dtype=np.float32)
    return out


@functools.lru_cache(maxsize=16)
def lanczos_matrix(in_size: int, out_size: int) -> np.ndarray:
    """``[out_size, in_size]`` float64 weights of Pillow's Lanczos (a = 3) resampling along one
    axis, computed as Pillow's ``precompute_coeffs`` does (support scaled when shrinking, each row
    normalized), so a matrix product gives Pillow's result. Read-only (cached)."""

    def lanczos(x: float) -> float:
        if not -3.0 < x < 3.0:
            return 0.0
        if x == 0.0:
            return 1.0
        px = math.pi * x
        return (math.sin(px) / px) * (math.sin(px / 3.0) / (px / 3.0))

    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 3.0 * filterscale
    weights = np.zeros((out_size, in_size))
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        k = [lanczos((x + xmin - center + 0.5) / filterscale) for x in range(xmax)]
        total = sum(k)
        weights[xx, xmin:xmin + xmax] = [w / total for w in k] if total else k
    weights.setflags(write=False)
    return weights


def resize_to_uint8(image: np.ndarray, size: int) -> np.ndarray:
    """A ``[-1, 1]`` float image as ``size x size`` 8-bit gray: Lanczos (Pillow's weights,
    :func:`lanczos_matrix`) on the float image, then one rounding, as :func:`to_uint8` rounds.

    Two float32 matrix products with the gray mapping folded into the weights (rows sum to 1, so
    ``L (127.5 (x + 1)) L' = 127.5 L x L' + 127.5``), then clip and round in place: 1.8 ms an
    image at 64 -> 1024 against 5.0 ms for the float64 products + :func:`to_uint8` it replaced.
    Against Pillow's float Lanczos + :func:`to_uint8`, a pixel in ~100,000 lands one gray level
    apart (float32 sums against Pillow's float64; a test bounds it).
    """
    if image.shape == (size, size):
        return to_uint8(image)
    h, w = image.shape
    across = (np.asarray(image, np.float32) + np.float32(1.0)) @ _lanczos32(w, size, 127.5).T
    out = _lanczos32(h, size, 1.0) @ across
    np.clip(out, 0.0, 255.0, out=out)
    np.rint(out, out=out)
    return out.astype(np.uint8)


@functools.lru_cache(maxsize=16)
def _lanczos32(in_size: int, out_size: int, scale: float) -> np.ndarray:
    """:func:`lanczos_matrix` x ``scale`` in float32 (127.5: the gray mapping, folded in)."""
    weights = (lanczos_matrix(in_size, out_size) * scale).astype(np.float32)
    weights.setflags(write=False)
    return weights


def parse_shard(shard: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 1 <= i <= n."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(shard))
    if not match:
        raise CxrError(f"--shard {shard!r}: expected i/n, e.g. 1/4 for the first of four machines")
    i, n = int(match.group(1)), int(match.group(2))
    if not 1 <= i <= n:
        raise CxrError(f"--shard {shard!r}: i must be between 1 and n (e.g. 1/4 .. 4/4)")
    return i, n


def plan_counts(real: dict[str, int] | None, names: Sequence[str],
                target_per_class: int | None, per_class: int | None) -> dict[str, int]:
    """Images to generate per name: ``max(0, target - real)``, or ``per_class`` for each."""
    if (target_per_class is None) == (per_class is None):
        raise CxrError("give exactly one of --target-per-class N (top every class up to N) or "
                       "--per-class N (N new images per class)")
    if per_class is not None:
        if per_class <= 0:
            raise CxrError(f"--per-class {per_class}: give a positive number of images")
        return {n: int(per_class) for n in names}
    assert target_per_class is not None
    if target_per_class <= 0:
        raise CxrError(f"--target-per-class {target_per_class}: give a positive number of images")
    real = real or {}  # no real data: every class is topped up from zero
    return {n: max(0, int(target_per_class) - int(real.get(n, 0))) for n in names}


def _safe_folder(name: str) -> str:
    """Folder name for a label: ``Effusion|Infiltration`` -> ``Effusion+Infiltration``."""
    return re.sub(r"[^A-Za-z0-9 _.+-]", "_", name.replace("|", "+")).strip(" .") or "class"


# ----------------------------------------------------------------------------- real data
@dataclass
class RealData:
    """Real images of the model's classes as the class policy keeps them."""

    source: str
    rows: pd.DataFrame  # canonical NIH columns (at least Image Index, Finding Labels)
    class_names: list[str]
    multi_hot: np.ndarray  # uint8 [N, C] over class_names
    root: Path | None = None  # where to look for the real PNGs when no real_root is given

    def count(self, classes: Sequence[str]) -> int:
        """Images for a target: a class's column sum, or exact matches for a combination."""
        missing = [c for c in classes if c not in self.class_names]
        if missing:
            raise CxrError(f"{self.source}: has no class {', '.join(missing)} (its classes: "
                           f"{', '.join(self.class_names)}); pick --classes it has or use "
                           "--per-class")
        cols = [self.class_names.index(c) for c in classes]
        if len(cols) == 1:
            return int(self.multi_hot[:, cols[0]].sum())
        want = np.zeros(len(self.class_names), dtype=np.uint8)
        want[cols] = 1
        return int((self.multi_hot == want).all(axis=1).sum())


def _real_from_csv(path: Path, class_names: list[str], multi_label: str,
                   split_list: Path | None) -> RealData:
    from ..data.labels import load_counting_table

    table = load_counting_table(path, classes=class_names, multi_label=multi_label,
                                split_list=split_list, require_rows=True)
    return RealData(source=str(path), rows=table.frame, class_names=list(table.class_names),
                    multi_hot=np.asarray(table.multi_hot, dtype=np.uint8),
                    root=path.resolve().parent)


def _real_from_cache(path: Path) -> RealData:
    from ..data.cache import CacheReader
    from ..data.nih import FINDING_LABELS, IMAGE_INDEX, PATIENT_ID

    if not path.is_file():
        raise CxrError(f"cache {path} not found; make it with `cxraug prepare` or pass --real-csv")
    with CacheReader(path) as cache:
        names = list(cache.class_names)
        train = np.asarray(cache.indices("train"))
        hot = np.asarray(cache.multi_hot)[train].astype(np.uint8)
        index = np.asarray(cache.image_index, dtype=object)[train]
        pids = np.asarray(cache.patient_ids)[train]
        source_csv = Path(str(cache.attrs.get("csv_path", "")))
        data_root = cache.attrs.get("data_root")
    order = np.argsort(names)  # NIH writes labels alphabetically
    labels = ["|".join(names[j] for j in order if row[j]) for row in hot]
    rows = pd.DataFrame({IMAGE_INDEX: [str(x) for x in index], FINDING_LABELS: labels,
                         PATIENT_ID: pd.array(pids, dtype="Int64")})
    rows = _with_source_columns(rows, source_csv)
    return RealData(source=f"{path} (train split)", rows=rows, class_names=names, multi_hot=hot,
                    root=Path(str(data_root)) if data_root else None)


def _with_source_columns(rows: pd.DataFrame, source_csv: Path) -> pd.DataFrame:
    """A cache keeps labels and patient ids only: the other NIH columns (follow-up, age, sex,
    view, size, spacing) come from the CSV it was prepared from, when that file is still there.
    ``Finding Labels`` stays the cache's (the labels as the class policy kept them)."""
    from ..data.labels import read_nih_csv
    from ..data.nih import FINDING_LABELS, IMAGE_INDEX

    if not source_csv.name or not source_csv.is_file():
        return rows
    try:
        full = read_nih_csv(source_csv)
    except CxrError:
        return rows
    full = full.drop_duplicates(IMAGE_INDEX).drop(columns=[FINDING_LABELS], errors="ignore")
    extra = [c for c in full.columns if c not in rows.columns or c == IMAGE_INDEX]
    return rows.merge(full[extra], on=IMAGE_INDEX, how="left")


def _real_paths(real: RealData, root: Path) -> list[str]:
    """Each real row's file under ``root`` as an absolute path, "" when it is not there (the
    same escape-safe lookup as ``prepare``)."""
    from ..data.images import index_images
    from ..data.nih import IMAGE_INDEX

    if not root.is_dir():
        raise CxrError(f"--real-root {root}: not a folder; give the folder holding the real PNGs")
    index = index_images(root)
    found = (index.lookup(n)[0] for n in real.rows[IMAGE_INDEX].astype(str))
    return [os.path.abspath(p) if p else "" for p in found]


def _image_sizes(paths: Iterable[str], limit: int = 20) -> list[list[int]]:
    """Distinct ``[width, height]`` of up to ``limit`` images (headers only: cheap)."""
    from PIL import Image

    sizes: set[tuple[int, int]] = set()
    for n, p in enumerate(p for p in paths if p):
        if n >= limit:
            break
        with contextlib.suppress(OSError), Image.open(p) as im:
            sizes.add((int(im.size[0]), int(im.size[1])))
    return [list(s) for s in sorted(sizes)]


# ----------------------------------------------------------------------------- result
@dataclass
class AugmentResult:
    """What an augment run did; ``summary()`` is what the CLI prints."""

    out: Path
    provider: str
    shard: tuple[int, int]
    image_size: int
    layout: str
    targets: list[dict[str, Any]]
    generated: int
    skipped: int
    wall_s: float
    paths: dict[str, Path] = field(default_factory=dict)
    real_rows: int = 0
    real_missing: int = 0
    notes: list[str] = field(default_factory=list)  # what the run assumed (default model, ...)
    notes_shown: bool = False  # already printed at the start (progress on): not repeated

    @property
    def counts(self) -> dict[str, int]:
        """Images on disk per target after the run (this shard's share when sharded)."""
        return {t["name"]: t["on_disk"] for t in self.targets}

    def summary(self) -> str:
        i, n = self.shard
        width = max([len("class")] + [len(t["name"]) for t in self.targets])
        notes = [] if self.notes_shown else self.notes
        filtered = any("filter" in t for t in self.targets)
        lines = [*notes, f"augment: {len(self.targets)} target(s), provider {self.provider}"
                 + (f", shard {i}/{n}" if n > 1 else ""),
                 f"  {'class':{width}s} {'real':>8s} {'target':>8s} {'generate':>9s} "
                 f"{'on disk':>8s}" + (f" {'tried':>8s} {'privacy':>8s} {'label':>8s} "
                                       f"{'unfilled':>8s}" if filtered else "")]
        for t in self.targets:
            real = "-" if t["real"] is None else f"{t['real']:,}"
            goal = "-" if t["target"] is None else f"{t['target']:,}"
            f = t.get("filter")
            extra = (f" {f['tried']:>8,} {f['dropped_privacy']:>8,} {f['dropped_label']:>8,} "
                     f"{f['unfilled']:>8,}" if f else "")
            lines.append(f"  {t['name']:{width}s} {real:>8s} {goal:>8s} {t['generate']:>9,} "
                         f"{t['on_disk']:>8,}{extra}")
        if filtered:
            lines.append("  (tried: generated images; privacy / label: dropped by each filter "
                         "and replaced; unfilled: images that no try passed)")
        rate = self.generated / self.wall_s if self.wall_s > 0 else 0.0
        lines.append(f"generated {self.generated:,} images ({self.image_size}x{self.image_size} "
                     f"PNG, {self.layout}) in {self.wall_s:.1f} s ({rate:.1f} img/s); "
                     f"{self.skipped:,} were already on disk")
        files = ", ".join(str(p) for p in self.paths.values())
        lines.append(f"wrote {files}")
        if self.real_missing:
            lines.append(f"note: {self.real_missing:,} real images were not found under "
                         "--real-root and are left out of mixed.csv")
        if n > 1:
            lines.append("merge: copy every shard's folder into one and rerun the same command "
                         "without --shard, with --resume (it generates nothing and writes the "
                         "merged CSVs)")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- filters
def _open_filters(gen: OnnxGenerator, model: Path, data: Path | None, wanted: list[int],
                  privacy_filter: bool, privacy_reference: Path | None,
                  privacy_percentile: float | None, judge: Path | None,
                  judge_real_share: float, max_tries: int, scratch: Path) -> Filters:
    """Find the privacy reference (``--privacy-reference``, else ``MODEL.trainref.h5`` beside the
    model, else built from ``--data`` when it is the cache the model was trained on) and open
    the judge. Every choice is said in ``Filters.notes``."""
    from ..copy_reference import DEFAULT_PERCENTILE, TrainReference, reference_path
    from ..data.reference import build_reference
    from .filters import LabelJudge

    if max_tries < 1:
        raise CxrError(f"--max-tries {max_tries}: give a positive number of tries per image")
    filters = Filters(max_tries=int(max_tries))
    fingerprint = str(gen.meta.get("data_fingerprint", "") or "")
    if not privacy_filter:
        if privacy_reference is not None:
            raise CxrError("--privacy-reference with --no-privacy-filter: give one, not both")
        filters.notes.append("privacy filter off (--no-privacy-filter): images are not checked "
                             "for copies of training images")
    else:
        path: Path | None = None
        if privacy_reference is not None:
            path = Path(privacy_reference)
        elif reference_path(model).is_file():
            path = reference_path(model)
        elif data is not None:
            from ..data.cache import CacheReader

            if not Path(data).is_file():
                raise CxrError(f"cache {data} not found; make it with `cxraug prepare`")
            with CacheReader(Path(data)) as cache:
                same = bool(fingerprint) and str(cache.fingerprint) == fingerprint
            if same:
                path = build_reference(data, scratch / "trainref.h5",
                                       percentile=privacy_percentile or DEFAULT_PERCENTILE)
                filters.reference_origin = f"built for this run from {data} (train split)"
        if path is None:
            filters.notes.append(
                f"privacy filter off: no training reference for {model} (looked for "
                f"{reference_path(model)}; give --privacy-reference FILE, or --data CACHE the "
                "model was trained on)")
        else:
            ref = TrainReference(path, percentile=privacy_percentile)
            if fingerprint and ref.data_fingerprint and ref.data_fingerprint != fingerprint:
                ref.close()
                raise CxrError(f"{path}: built from other data (fingerprint "
                               f"{ref.data_fingerprint}) than {model} was trained on "
                               f"({fingerprint}); give the reference of its training cache")
            filters.privacy = ref
            filters.notes.append(
                f"privacy filter on: an image closer to one of the {ref.n:,} training images "
                f"than {100 - ref.percentile:g}% of {ref.n_heldout} held-out patients are is "
                f"replaced (up to {max_tries} tries; --no-privacy-filter to turn off)")
    if judge is not None:
        filters.judge = LabelJudge(judge, gen.class_names, wanted, real_share=judge_real_share,
                                   data=data)
        filters.notes.append(
            f"label filter on: the judge {judge} must rate each image's class at least as high "
            f"as {judge_real_share:.0%} of real validation images of that class "
            f"(calibrated on {filters.judge.source})")
        filters.notes += filters.judge.warnings()
    return filters


def _filtered_batch(gen: OnnxGenerator, filters: Filters, seed: int, targets: list[Target],
                    batch: list[tuple[int, int]], label_rows: Any
                    ) -> tuple[np.ndarray, list[SlotRecord | None], list[tuple[int, int]]]:
    """Images for a batch of slots with replacements for dropped tries. Returns the images,
    each slot's record (None: every try dropped) and each slot's (privacy, label) drops."""
    n = len(batch)
    kept: list[np.ndarray | None] = [None] * n
    drops = [[0, 0] for _ in range(n)]
    records: list[SlotRecord | None] = [None] * n
    todo = list(range(n))
    for attempt in range(filters.max_tries):
        if not todo:
            break
        z = np.concatenate([latents(seed, targets[batch[j][0]].key, [batch[j][1]],
                                    gen.latent_dim, [attempt]) for j in todo])
        rows = np.array([batch[j][0] for j in todo], dtype=np.int64)
        images = gen.generate(z, label_rows(rows))
        verdict = filters.verdicts(to_uint8(images), [targets[i].classes for i in rows])
        left = []
        for pos, j in enumerate(todo):
            if verdict[pos] == KEEP:
                kept[j] = images[pos]
                records[j] = SlotRecord(attempt + 1, drops[j][0], drops[j][1])
            else:
                drops[j][0 if verdict[pos] == PRIVACY else 1] += 1
                left.append(j)
        todo = left
    shape = (gen.image_size, gen.image_size)
    out = np.stack([k if k is not None else np.zeros(shape, np.float32) for k in kept])
    return out, records, [(a, b) for a, b in drops]



#: Slots every try of which the privacy filter dropped, with no image kept, before augment stops.
PRIVACY_FAIL_SLOTS = 8


def _check_privacy_failure(targets: list[Target], unfilled: dict[int, dict[int, tuple[int, int]]],
                           present: dict[int, set[int]],
                           records: dict[int, dict[int, SlotRecord]] | None,
                           filters: Filters) -> None:
    """Stop with a clear error when a class's images are all copies (instead of trying forever)."""
    if filters.privacy is None or records is None:
        return
    for t in targets:
        copies = [k for k, (priv, lab) in unfilled[t.code].items() if lab == 0 and priv > 0]
        if (copies and len(copies) >= min(PRIVACY_FAIL_SLOTS, t.count) and not records[t.code]
                and not present[t.code]):
            ref = filters.privacy
            raise CxrError(
                f"{t.name}: the privacy filter dropped every one of {len(copies)} images x "
                f"{filters.max_tries} tries: each was closer to a training image than "
                f"{100 - ref.percentile:g}% of new patients are (threshold {ref.threshold:.3g}), "
                "so the generator reproduces its training images; use an earlier checkpoint or "
                "retrain on more data, or --no-privacy-filter to keep them (not for sharing)")


def _filter_warnings(rows: list[dict[str, Any]], filters: Filters) -> list[str]:
    """One line per class whose filters dropped much or that ends short."""
    out = []
    for row in rows:
        f = row.get("filter")
        if not f or not f["tried"]:
            continue
        rate = f["drop_rate"]
        if rate > HIGH_DROP or f["unfilled"]:
            why = []
            if f["dropped_privacy"] > f["tried"] * HIGH_DROP / 2:
                why.append("it draws near-copies of training images (memorizes)")
            if f["dropped_label"] > f["tried"] * HIGH_DROP / 2:
                why.append("the judge does not recognize the class in its images (the "
                           "generator does not draw it, or the judge cannot tell)")
            short = (f"; {f['unfilled']:,} of its images could not be made in "
                     f"{filters.max_tries} tries, so it has {f['kept']:,}" if f["unfilled"] else "")
            out.append(f"warning: {row['name']}: the filters dropped {rate:.0%} of "
                       f"{f['tried']:,} tries ({f['dropped_privacy']:,} privacy, "
                       f"{f['dropped_label']:,} label){short}"
                       + (f": {'; '.join(why)}" if why else ""))
    return out


# ----------------------------------------------------------------------------- the job
def _targets(gen: OnnxGenerator, classes: Sequence[str] | None,
             labels: Sequence[str] | None) -> list[tuple[str, int, int, tuple[int, ...]]]:
    """(name, code, rng key, class indices) for every requested target, validated."""
    names = gen.class_names
    hint_all = f"the model's classes: {', '.join(names)}"

    def check(name: str, flag: str) -> int:
        if name in names:
            return names.index(name)
        close = difflib.get_close_matches(name, names, n=1)
        guess = f" (did you mean {close[0]!r}?)" if close else ""
        raise CxrError(f"{flag} {name!r}: {gen.path} has no such class{guess}; {hint_all}")

    if gen.label_mode == "none":
        if labels:
            raise CxrError(f"--label: {gen.path} is unconditional (label_mode none); it makes "
                           "images of its one class only")
        if len(names) != 1:
            raise CxrError(f"{gen.path} is unconditional (label_mode none) but its metadata lists "
                           f"{len(names)} classes, so its images have no label; use a conditional "
                           "generator")
        if classes and list(classes) != names:
            check(next(c for c in classes if c != names[0]), "--classes")
        return [(names[0], 0, 0, (0,))]
    if labels and gen.label_mode != "multi-hot":
        raise CxrError(f"--label combinations need a multi-hot model; {gen.path} has label_mode "
                       f"{gen.label_mode!r} (one class per image): use --classes instead")
    picked = list(dict.fromkeys(c.strip() for c in classes if c.strip())) if classes else []
    if not picked and not labels:
        picked = list(names)
    out: list[tuple[str, int, int, tuple[int, ...]]] = []
    for name in picked:
        c = check(name, "--classes")
        key = c if gen.label_mode == "index" else MULTI_HOT_KEY | (1 << c)
        out.append((name, c, key, (c,)))
    combos: list[tuple[int, ...]] = []
    for raw in labels or []:
        parts = [p.strip() for p in str(raw).split("|") if p.strip()]
        if not parts:
            raise CxrError(f"--label {raw!r}: empty; write e.g. 'Effusion|Infiltration'")
        if len(set(parts)) != len(parts):
            raise CxrError(f"--label {raw!r} names a class twice")
        idx = tuple(sorted((check(p, "--label") for p in parts), key=lambda j: names[j]))
        if len(idx) > 1 and "No Finding" in parts:
            raise CxrError(f"--label {raw!r}: 'No Finding' never combines with a pathology")
        if len(idx) == 1:
            if idx[0] not in [t[1] for t in out]:
                out.append((names[idx[0]], idx[0], MULTI_HOT_KEY | (1 << idx[0]), idx))
            continue
        if idx in combos:
            continue
        combos.append(idx)
        bitmask = sum(1 << j for j in idx)
        out.append(("|".join(names[j] for j in idx), len(names) + len(combos) - 1,
                    MULTI_HOT_KEY | bitmask, idx))
    if len(names) + len(combos) > MAX_CODES:
        raise CxrError(f"too many targets ({len(names) + len(combos)} codes, at most {MAX_CODES})")
    return out


def _sink_of(spec: dict[str, Any]) -> Sink:
    return SINKS.get(str(spec.get("layout")), SINKS["flat"])


def _ours(name: str) -> bool:
    """Whether a stored name is one of augment's (never a user's file)."""
    return _SYNTH_RE.match(name) is not None


def _ours_before(name: str) -> bool:
    """The same for a job of the earlier naming scheme (what --overwrite removes)."""
    return _OLD_SYNTH_RE.match(name) is not None


def _remove_outputs(out: Path, spec: dict[str, Any]) -> None:
    """Delete what an earlier job wrote (its PNGs, temp files, CSVs, manifests), nothing else.

    ``job.json`` goes last, so an interrupted removal is simply repeated by the next --overwrite.
    """
    sink = _sink_of(spec)
    locations = list(dict.fromkeys(sink.location(t["folder"]) for t in spec.get("targets", [])))
    sink.remove(out, locations, _ours_before if spec.get("format") == OLD_JOB_FORMAT else _ours)
    for name in (DATA_CSV, MIXED_CSV, MANIFEST):
        with contextlib.suppress(FileNotFoundError):
            (out / name).unlink()
    parts = out / PARTS
    if parts.is_dir():
        for entry in os.scandir(parts):
            if re.match(r"^shard-\d+-of-\d+\.(csv|json)$", entry.name) or TMP_RE.match(
                    entry.name):
                os.unlink(entry.path)
        with contextlib.suppress(OSError):
            parts.rmdir()
    with contextlib.suppress(FileNotFoundError):
        (out / JOB_FILE).unlink()


def _prepare_out(out: Path, spec: dict[str, Any], resume: bool, overwrite: bool) -> None:
    """Check ``out`` (writable; empty, or this job) and record the job before any image."""
    job = out / JOB_FILE
    if out.exists() and not out.is_dir():
        raise CxrError(f"--out {out} is a file; give a folder")
    if out.is_dir() and not job.is_file():
        # another shard starting into the same folder may be writing job.json right now: its
        # temporaries do not count, and a job.json that appears meanwhile is compared below
        others = [e.name for e in out.iterdir()
                  if e.name != JOB_FILE and not TMP_RE.match(e.name)]
        if others and not job.is_file():
            raise CxrError(f"--out {out} is not empty and holds no augment job ({JOB_FILE}); "
                           "give a new or empty folder")
    if job.is_file():
        try:
            old = json.loads(job.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        if old is not None and old.get("format") == OLD_JOB_FORMAT:
            if not overwrite:
                raise CxrError(
                    f"--out {out} holds a job of cxraug's earlier naming (one synthetic patient "
                    "per 1,000 images); it is not resumed or mixed with today's (one patient per "
                    "image): use a new --out, or --overwrite to replace it")
            _remove_outputs(out, old)  # job.json last: below, the folder is a new one
    if job.is_file():
        try:
            old = json.loads(job.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        if old is None or old.get("format") != JOB_FORMAT:
            raise CxrError(f"{job} is unreadable or not a cxraug augment job; remove it or pick "
                           "another --out")
        # how PNGs are deflated does not change a pixel: a job resumes across encoders
        same = {k: v for k, v in old.items() if k != "png"} == \
            {k: v for k, v in spec.items() if k != "png"}
        if not same or (overwrite and not resume):
            if not overwrite:
                diff = sorted(k for k in set(old) | set(spec)
                              if k != "png" and old.get(k) != spec.get(k))
                raise CxrError(f"--out {out} holds a different augment job (differs in "
                               f"{', '.join(diff)}); use a new --out, or --overwrite to replace "
                               "it")
            _remove_outputs(out, old)
        elif not resume:
            raise CxrError(f"--out {out} already holds this job; rerun with --resume to finish "
                           "it, or --overwrite to start again")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test.{os.getpid()}.tmp"
        probe.write_bytes(b"")
        probe.unlink()
        if not job.is_file():
            write_json_atomic(job, spec)
    except OSError as exc:
        raise CxrError(f"--out {out}: cannot write there ({exc.strerror or exc}); choose a "
                       "writable folder") from None


def _scan(out: Path, targets: list[Target], sink: Sink,
          records: dict[int, dict[int, SlotRecord]] | None = None) -> dict[int, set[int]]:
    """Images of this job already stored and complete, per target code (the sink removes broken
    ones). ``records``: filled with each image's filter record (filtered jobs)."""
    present: dict[int, set[int]] = {t.code: set() for t in targets}
    by_location: dict[str, dict[int, Target]] = {}
    for t in targets:
        by_location.setdefault(sink.location(t.folder), {})[t.code] = t
    for location, codes in by_location.items():
        for name in sink.stored(out, location, _ours):
            code, k = parse_synthetic_name(name)
            target = codes.get(code)
            if target is None or k >= target.count:
                continue
            if records is not None:
                record = sink.record(out, location, name)
                if record is None:  # not this filtered job's image: make it again
                    sink.discard(out, location, name)
                    continue
                records[code][k] = record
            present[code].add(k)
    return present


def _write_batch(sink: Sink, out: Path, location: str, images: np.ndarray, names: list[str],
                 ks: list[int], size: int, texts: list[str | None] | None = None,
                 deflate: str = PNG_DEFLATE) -> list[int]:
    """Resize (if asked), quantize, encode and store one chunk (on a writer thread); returns
    its ks."""
    texts = texts or [None] * len(names)
    for image, name, text in zip(images, names, texts, strict=True):
        sink.put(out, location, name, encode_png(resize_to_uint8(image, size), text=text,
                                                 deflate=deflate))
    return ks


def _synthetic_rows(targets: list[Target], present: dict[int, set[int]], keep: Any,
                    size: int, sink: Sink, view: str = "") -> pd.DataFrame:
    from ..data.nih import (
        FINDING_LABELS,
        FOLLOW_UP,
        HEIGHT,
        IMAGE_INDEX,
        PATIENT_ID,
        VIEW_POSITION,
        WIDTH,
    )

    names: list[str] = []
    labels: list[str] = []
    paths: list[str] = []
    for t in targets:
        folder = sink.location(t.folder)
        for k in sorted(k for k in present[t.code] if keep(k)):
            name = synthetic_name(t.code, k)
            names.append(name)
            labels.append(t.name)
            paths.append(f"{folder}/{name}")
    pid = np.array([int(n[:8]) for n in names], dtype=np.int64)
    fu = np.array([int(n[9:12]) for n in names], dtype=np.int64)
    return pd.DataFrame({IMAGE_INDEX: names, FINDING_LABELS: labels, FOLLOW_UP: fu,
                         PATIENT_ID: pid, VIEW_POSITION: pd.array([view or pd.NA] * len(names),
                                                                  dtype="string"),
                         WIDTH: np.full(len(names), size, dtype=np.int64),
                         HEIGHT: np.full(len(names), size, dtype=np.int64), "Path": paths})


def _mixed_columns(frame: pd.DataFrame) -> pd.DataFrame:
    from ..data.nih import CANONICAL_COLUMNS

    cols = list(CANONICAL_COLUMNS) + ["Path", "Synthetic"]
    frame = frame.copy()
    for c in cols:
        if c not in frame.columns:
            frame[c] = pd.NA
    return frame[cols]


def _mixed_real_text(real: RealData | None, real_paths: list[str] | None) -> str:
    """mixed.csv's header and real rows, rendered once (the real table can be 112k rows)."""
    from ..data.nih import IMAGE_INDEX

    if real is None:
        return _mixed_columns(pd.DataFrame()).to_csv(index=False, lineterminator="\n")
    rows = real.rows.copy()
    rows["Path"] = real_paths if real_paths is not None else rows[IMAGE_INDEX].astype(str)
    rows = rows[rows["Path"] != ""]
    rows["Synthetic"] = 0
    return _mixed_columns(rows).to_csv(index=False, lineterminator="\n")


def _mixed_synthetic_text(synth: pd.DataFrame) -> str:
    rows = synth.copy()
    rows["Synthetic"] = 1
    return _mixed_columns(rows).to_csv(index=False, header=False, lineterminator="\n")


def downstream_note(model: Path) -> str | None:
    """What ``cxraug downstream`` measured for this generator's images, when a
    ``<model>.downstream.json`` (a copy of its ``downstream.json``) sits beside the model: the
    way of using them that helped a classifier on real patients, or that none did."""
    path = model.with_suffix(".downstream.json")
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
        text = str(result["recommendation"]["text"])
        n_test, patients = int(result["n_test"]), int(result["n_test_patients"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"{path}: not a readable `cxraug downstream` result; ignored"
    return (f"how to use these images (`cxraug downstream`, {n_test} real test images of "
            f"{patients} patients, {path.name}): {text}")


def augment(
    model: str | os.PathLike | None,
    out: str | os.PathLike,
    real_csv: str | os.PathLike | None = None,
    data: str | os.PathLike | None = None,
    split_list: str | os.PathLike | None = None,
    real_root: str | os.PathLike | None = None,
    target_per_class: int | None = None,
    per_class: int | None = None,
    classes: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
    multi_label: str = "drop",
    output_size: int | None = None,
    view: str | None = None,
    layout: str = "flat",
    device: str = "auto",
    seed: int = 0,
    batch_size: int = 64,
    workers: int | None = None,
    shard: str = "1/1",
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    *,
    threads: int | None = None,
    spinning: bool = False,
    privacy_filter: bool = True,
    privacy_reference: str | os.PathLike | None = None,
    privacy_percentile: float | None = None,
    judge: str | os.PathLike | None = None,
    judge_real_share: float = 0.9,
    max_tries: int = 10,
    png_deflate: str = PNG_DEFLATE,
) -> AugmentResult:
    """Generate a class-balanced synthetic NIH-format data set (see the module docstring).

    ``view``: the synthetic rows' ``View Position`` (default: the generator's training view).
    ``threads``/``spinning``: onnxruntime intra-op threads (default: every core) and whether idle
    ones busy-wait (off: the PNG writer threads and anything else on the machine need those
    cycles; benchmarks/augment.py measures both).
    ``privacy_*``, ``judge*``, ``max_tries``: the filters (:mod:`.filters`); the privacy filter is
    on wherever a training reference is found.
    ``png_deflate``: "zlib" (reproducible bytes) or "isal" (faster, same pixels; :mod:`.png`).
    """
    from ..inference.generator import DEFAULT_MODEL

    started = time.perf_counter()
    notes: list[str] = []
    if model is None:
        if not DEFAULT_MODEL.is_file():
            raise CxrError(f"the default generator {DEFAULT_MODEL} is missing from this install; "
                           "reinstall cxraug or give --model MODEL.onnx")
        notes.append(f"using the default generator {DEFAULT_MODEL} (64x64, trained on the "
                     "401-image NIH sample; see exported_models/README.md); --model for another")
    model, out = Path(model or DEFAULT_MODEL), Path(out)
    use = downstream_note(model)
    if use:
        notes.append(use)
    if target_per_class is not None and real_csv is None and data is None:
        notes.append(f"no real data given (--real-csv or --data): every class is topped up "
                     f"from 0 to {target_per_class} synthetic images")
    # ---- options that need nothing loaded
    if layout not in SINKS:
        raise CxrError(f"--layout {layout!r}: expected {' or '.join(SINKS)}")
    if batch_size < 1:
        raise CxrError(f"--batch-size {batch_size}: give a positive number")
    if workers is not None and workers < 1:
        raise CxrError(f"--workers {workers}: give a positive number")
    if not 0 <= int(seed) < 2**63:
        raise CxrError(f"--seed {seed}: give a whole number in 0..2**63-1")
    if output_size is not None and not 8 <= output_size <= 8192:
        raise CxrError(f"--output-size {output_size}: give a side in pixels between 8 and 8192")
    if png_deflate not in PNG_DEFLATES:
        raise CxrError(f"--png-deflate {png_deflate!r}: choose {' or '.join(PNG_DEFLATES)}")
    if png_deflate == "isal":
        require_isal()
    if real_csv is not None and data is not None:
        raise CxrError("give --real-csv or --data (a cache), not both")
    if split_list is not None and real_csv is None:
        raise CxrError("--split-list filters the rows of --real-csv; give --real-csv too (a "
                       "cache already has its training split)")
    if real_root is not None and real_csv is None and data is None:
        raise CxrError("--real-root locates the real images of --real-csv or --data; give one")
    if view is not None and view.strip().upper() not in ("", *VIEWS):
        raise CxrError(f"--view {view!r}: expected one of {', '.join(VIEWS)} (or '' for none)")
    shard_i, shard_n = parse_shard(shard)
    # the count options' errors, before the (slow) model load: plan_counts raises them
    plan_counts(None if real_csv is None and data is None else {}, [], target_per_class,
                per_class)
    if progress:  # the options are valid: say what the run will do before anything slow
        for note in notes:
            print(note, file=sys.stderr)

    # ---- model, targets, real counts
    gen = OnnxGenerator(model, device=device, threads=threads, spinning=spinning)
    raw_targets = _targets(gen, classes, labels)
    real: RealData | None = None
    if real_csv is not None:
        real = _real_from_csv(Path(real_csv), gen.class_names, multi_label,
                              None if split_list is None else Path(split_list))
    elif data is not None:
        real = _real_from_cache(Path(data))
    names = [t[0] for t in raw_targets]
    real_counts = None
    if real is not None:
        real_counts = {name: real.count([gen.class_names[j] for j in idx])
                       for name, _c, _k, idx in raw_targets}
    plan = plan_counts(real_counts, names, target_per_class, per_class)
    targets = [Target(name=name, code=code, key=key, classes=idx, folder=_safe_folder(name),
                      real=None if real_counts is None else real_counts[name], count=plan[name])
               for name, code, key, idx in raw_targets]
    for t in targets:
        if t.count > MAX_PER_TARGET:
            raise CxrError(f"{t.name}: {t.count:,} images exceed the naming scheme's "
                           f"{MAX_PER_TARGET:,} per class")
    size = int(output_size or gen.image_size)
    view = gen.view if view is None else view.strip().upper()
    scratch = tempfile.TemporaryDirectory(prefix="cxraug-augment-")
    wanted = sorted({c for t in targets for c in t.classes})
    filters = _open_filters(gen, model, None if data is None else Path(data), wanted,
                            privacy_filter, None if privacy_reference is None
                            else Path(privacy_reference), privacy_percentile,
                            None if judge is None else Path(judge), judge_real_share, max_tries,
                            Path(scratch.name))
    model_sha = sha256_file(model)
    spec = {
        "format": JOB_FORMAT, "model_sha256": model_sha, "seed": int(seed),
        "image_size": size, "model_image_size": gen.image_size, "layout": layout,
        "label_mode": gen.label_mode, "view": view,
        "png": png_settings(png_deflate),
        "targets": [{"name": t.name, "code": t.code, "folder": t.folder, "count": t.count}
                    for t in targets],
    }
    if filters.active:  # (an unfiltered job's spec is what it always was)
        spec["filters"] = filters.spec()
    notes += filters.notes
    if progress:
        for note in filters.notes:
            print(note, file=sys.stderr)
    real_paths, real_missing = None, 0
    if real is not None and shard_n == 1:  # (a shard writes no mixed.csv)
        real_paths, real_missing = _locate_real(real, None if real_root is None
                                                else Path(real_root), notes, progress)
    _prepare_out(out, spec, resume=resume, overwrite=overwrite)

    # ---- what is left to do, then make it
    job = _Job(
        out=out, sink=SINKS[layout], gen=gen, model=model, model_sha=model_sha, targets=targets,
        size=size, view=view, seed=int(seed), device=device, shard=(shard_i, shard_n),
        deflate=png_deflate, filters=filters, real=real, real_paths=real_paths,
        real_missing=real_missing,
        real_sizes=[] if real_paths is None else _image_sizes(real_paths), notes=notes,
        target_per_class=target_per_class, started=started,
        options={"real_csv": None if real_csv is None else str(real_csv),
                 "data": None if data is None else str(data),
                 "split_list": None if split_list is None else str(split_list),
                 "real_root": None if real_root is None else str(real_root),
                 "target_per_class": target_per_class, "per_class": per_class,
                 "multi_label": multi_label, "output_size": output_size, "view": view,
                 "batch_size": batch_size, "workers": workers or min(4, os.cpu_count() or 1),
                 "resume": resume})
    job.scan()
    skipped = job.stored_count()
    _generate(job, batch_size, job.options["workers"], progress, skipped)
    filters.close()
    warnings = _filter_warnings(job.target_rows(), filters) if filters.active else []
    notes += warnings
    if progress:
        for line in warnings:
            print(line, file=sys.stderr)
    if gen.specialize_fallbacks:
        notes.append(f"{len(gen.specialize_fallbacks)} label(s) ran on the full graph (slower, "
                     "same images) instead of a specialized one: "
                     + "; ".join(gen.specialize_fallbacks[:3]))
        if progress:
            print(f"note: {notes[-1]}", file=sys.stderr)
    job.write_outputs(final=True)
    return AugmentResult(
        out=out, provider=gen.provider, shard=(shard_i, shard_n), image_size=size, layout=layout,
        targets=job.target_rows(), generated=job.generated, skipped=skipped,
        wall_s=time.perf_counter() - started, paths=dict(job.paths),
        real_rows=job.rows_real, real_missing=real_missing, notes=notes, notes_shown=progress,
    )


def _locate_real(real: RealData, real_root: Path | None, notes: list[str],
                 progress: bool) -> tuple[list[str], int]:
    """mixed.csv's path of each real row ("" when not found) and how many were not found."""
    root = real_root if real_root is not None else real.root
    if root is not None and (real_root is not None or root.is_dir()):
        real_paths = _real_paths(real, root)
    else:
        real_paths = [""] * len(real.rows)
    missing = sum(1 for p in real_paths if not p)
    if real_root is not None and real_paths and missing == len(real_paths):
        raise CxrError(f"--real-root {real_root}: none of the {len(real_paths):,} real images "
                       "of the label file is there; give the folder holding them")
    if missing:
        where = f"under {root}" if root is not None else "(no folder to look in)"
        notes.append(f"{missing:,} of {len(real_paths):,} real images not found {where}; "
                     "mixed.csv leaves them out (give --real-root FOLDER)")
        if progress:
            print(notes[-1], file=sys.stderr)
    return real_paths, missing


@dataclass
class _Job:
    """One augment run once its options are checked: what to make, what is stored, and the CSVs
    and manifest written from what is stored (never from what was planned)."""

    out: Path
    sink: Sink
    gen: OnnxGenerator
    model: Path
    model_sha: str
    targets: list[Target]
    size: int
    view: str
    seed: int
    device: str
    shard: tuple[int, int]
    deflate: str  # the PNGs' DEFLATE (png.PNG_DEFLATES)
    filters: Filters
    real: RealData | None
    real_paths: list[str] | None
    real_missing: int
    real_sizes: list[list[int]]
    notes: list[str]
    target_per_class: int | None
    started: float
    options: dict[str, Any]
    present: dict[int, set[int]] = field(default_factory=dict)  # code -> stored ks
    # filtered jobs: code -> k -> the kept image's record
    records: dict[int, dict[int, SlotRecord]] | None = None
    # this run's slots that every try failed: code -> k -> (privacy drops, label drops)
    unfilled: dict[int, dict[int, tuple[int, int]]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=lambda: {
        "inference_s": 0.0, "latents_s": 0.0, "wait_writers_s": 0.0})
    generated: int = 0
    paths: dict[str, Path] = field(default_factory=dict)
    _real_text: str | None = None

    def mine(self, k: int) -> bool:
        """Whether slot k belongs to this shard."""
        i, n = self.shard
        return n == 1 or k % n == i - 1

    def location(self, t: Target) -> str:
        return self.sink.location(t.folder)

    @property
    def rows_real(self) -> int:
        return 0 if self.real is None else len(self.real.rows) - self.real_missing

    def scan(self) -> None:
        """Find what an earlier run stored, and get the sink ready for the rest."""
        self.records = ({t.code: {} for t in self.targets} if self.filters.active else None)
        self.present = _scan(self.out, self.targets, self.sink, self.records)
        self.unfilled = {t.code: {} for t in self.targets}
        self.sink.open(self.out, list(dict.fromkeys(self.location(t) for t in self.targets)))
        self.paths["images"] = self.sink.root(self.out)

    def stored_count(self) -> int:
        return sum(1 for t in self.targets for k in self.present[t.code] if self.mine(k))

    def share(self, t: Target) -> int:
        """Images of target t this shard makes."""
        return sum(1 for k in range(t.count) if self.mine(k)) if self.shard[1] > 1 else t.count

    def write_outputs(self, final: bool) -> None:
        """CSVs (and at the end the manifest) from the images known to be stored."""
        from ..data.nih import write_nih_csv

        out, (shard_i, shard_n) = self.out, self.shard
        rows = _synthetic_rows(self.targets, self.present, self.mine, self.size, self.sink,
                               self.view)
        part_name = f"shard-{shard_i}-of-{shard_n}"
        if shard_n > 1:
            write_nih_csv(rows, out / PARTS / f"{part_name}.csv")
            self.paths["part_csv"] = out / PARTS / f"{part_name}.csv"
        else:
            write_nih_csv(rows, out / DATA_CSV)
            if self._real_text is None:
                self._real_text = _mixed_real_text(self.real, self.real_paths)
            write_text_atomic(out / MIXED_CSV, self._real_text + _mixed_synthetic_text(rows))
            self.paths["csv"], self.paths["mixed"] = out / DATA_CSV, out / MIXED_CSV
        if final:
            manifest_path = (out / PARTS / f"{part_name}.json") if shard_n > 1 else out / MANIFEST
            write_json_atomic(manifest_path, self.manifest())
            self.paths["manifest"] = manifest_path

    def class_stats(self, t: Target) -> ClassStats:
        """Tries and drops of a target's slots (kept images' records + empty slots)."""
        stats = ClassStats()
        assert self.records is not None
        for k, record in self.records[t.code].items():
            if self.mine(k) and k in self.present[t.code]:
                stats.add(record)
        for k, (priv, lab) in self.unfilled[t.code].items():
            if self.mine(k) and k not in self.present[t.code]:
                stats.tries += priv + lab
                stats.privacy += priv
                stats.label += lab
                stats.unfilled += 1
        return stats

    def target_rows(self) -> list[dict[str, Any]]:
        rows = []
        for t in self.targets:
            row = {"name": t.name, "code": t.code, "real": t.real, "target": self.target_per_class,
                   "generate": t.count, "shard_share": self.share(t),
                   "on_disk": sum(1 for k in self.present[t.code] if self.mine(k)),
                   "folder": self.location(t), "first_name": synthetic_name(t.code, 0)}
            if self.filters.active:
                st = self.class_stats(t)
                row["filter"] = {"tried": st.tries, "dropped_privacy": st.privacy,
                                 "dropped_label": st.label, "kept": st.kept,
                                 "unfilled": st.unfilled, "drop_rate": round(st.drop_rate(), 4)}
            rows.append(row)
        return rows

    def manifest(self) -> dict[str, Any]:
        import onnxruntime as ort
        import PIL

        gen = self.gen
        raw_meta = dict(gen.session.get_modelmeta().custom_metadata_map or {})
        return {
            "format": "cxraug-augment-manifest-1",
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": {"path": str(self.model), "sha256": self.model_sha, "metadata": raw_meta},
            "seed": self.seed, "shard": f"{self.shard[0]}/{self.shard[1]}",
            "provider": gen.provider, "label_specialized_sessions": gen.specialized_labels,
            "full_graph_labels": list(gen.specialize_fallbacks),
            "device": self.device, "image_size": self.size, "layout": self.sink.name,
            "label_mode": gen.label_mode, "view": self.view,
            "filters": self.filters.describe() if self.filters.active else None,
            # [width, height] of each part of mixed.csv (real: up to 20 files' headers)
            "image_sizes": {"synthetic": [[self.size, self.size]], "real": self.real_sizes},
            "real_source": None if self.real is None else self.real.source,
            "real_rows_in_mixed": self.rows_real,
            "notes": self.notes,
            "real_missing_under_root": self.real_missing,
            "classes": self.target_rows(),
            "naming": {"patient_id": f"{SYNTH_PATIENT_BASE} + code * {CODE_STRIDE} + k "
                       "(one synthetic patient per image)", "follow_up": "0",
                       "latent": "Philox(key=(seed << 64) | target key, counter=k << 128) "
                                 "standard normal float32"},
            "versions": {"cxraug": __version__, "onnxruntime": ort.__version__,
                         "numpy": np.__version__, "pillow": PIL.__version__,
                         "zlib": zlib.ZLIB_RUNTIME_VERSION, "python": sys.version.split()[0]},
            "options": self.options,
            "timings": {**{k: round(v, 3) for k, v in self.timings.items()},
                        "wall_s": round(time.perf_counter() - self.started, 3),
                        "generated": self.generated},
        }


class _Writers:
    """The PNG writer threads of one run and its per-class progress bars: chunks go to the pool
    as inference makes them; a class whose last image is stored gets its CSV update."""

    def __init__(self, job: _Job, todo: list[int], workers: int, progress: bool) -> None:
        from ..progress import progress_bar

        self.job, self.workers, self.progress = job, workers, progress
        self.remaining = list(todo)
        self.shares = [job.share(t) for t in job.targets]
        self.initial = [s - left for s, left in zip(self.shares, todo, strict=True)]
        self.bars: dict[int, Any] = {}
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cxraug-png")
        self.pending: set[Future] = set()
        self.owner: dict[Future, int] = {}  # future -> target position
        self.submitted: list[tuple[int, list[int], list[str]]] = []  # every chunk handed over
        self._bar = progress_bar

    def bar(self, i: int) -> Any:
        """Class i's bar, opened when its first batch is submitted (started from what exists)."""
        if i not in self.bars:
            self.bars[i] = self._bar(total=self.shares[i], initial=self.initial[i],
                                     desc=self.job.targets[i].name[:24], unit="img",
                                     disable=not self.progress, file=sys.stderr, leave=True)
        return self.bars[i]

    def skip(self, i: int, n: int) -> None:
        """n slots of class i that every try failed: they write nothing."""
        self.remaining[i] -= n
        if self.remaining[i] == 0 and n:
            self._class_done(i)

    def submit(self, i: int, images: np.ndarray, ks: list[int], texts: list[str | None] | None,
               ) -> None:
        job = self.job
        t = job.targets[i]
        names = [synthetic_name(t.code, k) for k in ks]
        # noted before submitting, so an interrupt at any point below cannot leave a stored
        # image that the CSVs never list
        self.submitted.append((i, ks, names))
        fut = self.pool.submit(_write_batch, job.sink, job.out, job.location(t), images, names,
                               ks, job.size, texts, job.deflate)
        self.pending.add(fut)
        self.owner[fut] = i

    def wait(self, most: int) -> None:
        """Block until at most ``most`` chunks are in flight."""
        while len(self.pending) > most:
            t0 = time.perf_counter()
            done, _ = wait(self.pending, return_when=FIRST_COMPLETED if most else ALL_COMPLETED)
            self.job.timings["wait_writers_s"] += time.perf_counter() - t0
            self.pending -= done
            self._collect(done)

    def _collect(self, done: Iterable[Future]) -> None:
        job = self.job
        for fut in done:
            i = self.owner.pop(fut)
            ks = fut.result()
            job.present[job.targets[i].code].update(ks)
            job.generated += len(ks)
            self.remaining[i] -= len(ks)
            self.bar(i).update(len(ks))
            if self.remaining[i] == 0:
                self._class_done(i)

    def _class_done(self, i: int) -> None:
        self.bar(i).close()
        self.job.write_outputs(final=False)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.pool.shutdown(wait=True)

    def abandon(self) -> None:
        """After Ctrl-C or a write error: finish or cancel what is in flight, then record what
        is stored. The interrupt can land anywhere in the bookkeeping (after a submit, between
        ``owner.pop`` and ``present.update``), so this asks the sink, not the records: a final
        name only ever appears complete."""
        job = self.job
        self.pool.shutdown(wait=True, cancel_futures=True)
        for i, ks, names in self.submitted:
            t = job.targets[i]
            job.present[t.code].update(k for k, name in zip(ks, names, strict=True)
                                       if job.sink.exists(job.out, job.location(t), name))
        for bar in self.bars.values():
            bar.close()


def _generate(job: _Job, batch_size: int, workers: int, progress: bool, skipped: int) -> None:
    """Inference on this thread, PNG encoding and storing on the writer threads. Batches run
    across class boundaries, so every batch is full whatever the per-class counts."""
    from ..copy_reference import one_blas_thread

    gen, targets, filters = job.gen, job.targets, job.filters
    work: list[tuple[int, int]] = []  # (target position, k), in CSV order
    todo: list[int] = []
    for i, t in enumerate(targets):
        ks = [k for k in range(t.count) if job.mine(k) and k not in job.present[t.code]]
        work += [(i, k) for k in ks]
        todo.append(len(ks))
    if progress:
        shard_i, shard_n = job.shard
        print(f"augment: {len(work):,} images to make ({skipped:,} already on disk) with "
              f"{gen.provider}, {job.size}x{job.size} PNG into {job.out}"
              + (f", shard {shard_i}/{shard_n}" if shard_n > 1 else ""), file=sys.stderr)
    label_of = np.array([t.classes[0] for t in targets], dtype=np.int64)
    hot_of = np.zeros((len(targets), len(gen.class_names)), dtype=np.float32)
    for i, t in enumerate(targets):
        hot_of[i, list(t.classes)] = 1.0

    def label_rows(rows: np.ndarray) -> np.ndarray:
        """The generator's label input for targets at positions ``rows``."""
        return hot_of[rows] if gen.label_mode == "multi-hot" else label_of[rows]

    writers = _Writers(job, todo, workers, progress)
    blas = one_blas_thread()  # writer threads resize by matrix products: one BLAS thread each
    blas.__enter__()
    try:
        for start in range(0, len(work), batch_size):
            batch = work[start:start + batch_size]
            t0 = time.perf_counter()
            # contiguous runs of one target: [(target position, first row, end row)]
            cuts = [0] + [j for j in range(1, len(batch)) if batch[j][0] != batch[j - 1][0]]
            runs = [(batch[c][0], c, e) for c, e in zip(cuts, cuts[1:] + [len(batch)],
                                                         strict=True)]
            slot_records: list[SlotRecord | None] | None = None
            if filters.active:
                t1 = t0
                images, slot_records, drops = _filtered_batch(gen, filters, job.seed, targets,
                                                              batch, label_rows)
                assert job.records is not None
                for j, ((i, k), record) in enumerate(zip(batch, slot_records, strict=True)):
                    if record is None:
                        job.unfilled[targets[i].code][k] = drops[j]
                    else:
                        job.records[targets[i].code][k] = record
                _check_privacy_failure(targets, job.unfilled, job.present, job.records, filters)
            else:
                z = np.concatenate([latents(job.seed, targets[i].key,
                                            [k for _, k in batch[c:e]], gen.latent_dim)
                                    for i, c, e in runs])
                t1 = time.perf_counter()
                images = gen.generate(z, label_rows(np.array([i for i, _ in batch], np.int64)))
            t2 = time.perf_counter()
            job.timings["latents_s"] += t1 - t0
            job.timings["inference_s"] += t2 - t1
            step = max(1, -(-len(batch) // workers))
            for i, c, e in runs:
                writers.bar(i)
                for s0 in range(c, e, step):
                    s1 = min(e, s0 + step)
                    pos = [j for j in range(s0, s1)
                           if slot_records is None or slot_records[j] is not None]
                    writers.skip(i, (s1 - s0) - len(pos))  # slots every try failed
                    if pos:
                        texts = (None if slot_records is None else
                                 [slot_records[j].text() for j in pos])  # type: ignore[union-attr]
                        writers.submit(i, images[pos], [batch[j][1] for j in pos], texts)
            writers.wait(2 * workers)
        writers.wait(0)
    except BaseException:
        # Ctrl-C or a write error: keep what is complete, list exactly that, then re-raise
        writers.abandon()
        filters.close()
        blas.__exit__(None, None, None)
        try:
            job.write_outputs(final=False)
        except Exception as exc:  # say so, but the original error is the one to report
            print(f"warning: could not rewrite the CSVs of {job.out} while stopping ({exc}); "
                  "`--resume` rewrites them from the images on disk", file=sys.stderr)
        raise
    writers.close()
    blas.__exit__(None, None, None)
