"""``cxraug prepare``: NIH PNGs -> one HDF5 training cache; :class:`CacheReader`; ``cxraug info``.

Layout (the contract in docs/ARCHITECTURE.md): ``images`` uint8 [N, H, W] chunked (1, H, W),
uncompressed so a random batch costs one small read per image; ``label`` int16; ``multi_hot``
uint8 [N, C]; ``patient_id`` int64; ``image_index`` UTF-8 str; ``split`` uint8 (0 train, 1 val,
2 test); attributes ``format``, ``class_names``, ``size``, ``multi_label``, ``csv_sha256``,
``csv_path``, ``options``, ``cxraug_version``, ``created``, ``fingerprint``, ``split_names``.

How it runs: labels are read and split first (fast), the data root is indexed once, then a pool of
decoder processes (one per core) decodes images in order while the parent streams them into the
file in slabs. At most a few tasks are in flight, so memory stays flat however many images there
are. The file is written beside ``out`` under a temporary name and renamed only when complete; a
killed run leaves at most a hidden ``.tmp`` file. Images that are missing, refused (path escapes)
or fail to decode are skipped and listed in ``<out>.report.csv``; the run fails only when no image
is usable. This module does not import TensorFlow.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .. import __version__
from ..errors import CxrError
from ..io_utils import atomic_path, sha256_file, write_text_atomic
from ..progress import progress_bar
from .images import index_images, load_gray
from .labels import SPLIT_NAMES, LabelTable, load_label_table

FORMAT = "cxraug-cache-1"
_DATASETS = ("images", "label", "multi_hot", "patient_id", "image_index", "split")
_SLAB_BYTES = 8 << 20  # images buffered in the parent before one write
_TASK_BYTES = 2 << 20  # decoded pixels returned per pool task


def report_path_for(out: str | os.PathLike) -> Path:
    """Where ``prepare`` lists skipped images: ``<out>.report.csv`` beside the cache."""
    out = Path(out)
    return out.with_name(out.name + ".report.csv")


# --------------------------------------------------------------------------------- decoding
def _worker_init() -> None:
    """Decoder processes leave Ctrl-C to the parent, which stops the pool and cleans up, and
    end on their own when the parent is killed outright."""
    from ..io_utils import exit_with_parent

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    exit_with_parent()


@contextlib.contextmanager
def _interruptible() -> Iterator[threading.Event]:
    """Ctrl-C and SIGTERM stop the run at the next decoded image, so the temp file is removed.

    The handler only sets the yielded event, which the writer loop checks: an exception raised
    at an arbitrary point (inside the process pool's bookkeeping, or during a fork) can leave the
    pool deadlocked or be swallowed. A second signal raises at once.
    """
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def interrupt(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _decode_one(path: str, size: int) -> tuple[np.ndarray | None, str]:
    try:
        return load_gray(path, size), ""
    except MemoryError:
        return None, "unreadable: out of memory while decoding"
    except Exception as exc:  # any decoder failure is a skip with its reason
        text = " ".join(str(exc).split()) or type(exc).__name__
        return None, f"unreadable: {type(exc).__name__}: {text}"[:300]


_Decoded = tuple[int, "np.ndarray | None", str]


def _decode_task(task: tuple[int, list[tuple[int, str]]]) -> list[_Decoded]:
    size, items = task
    return [(pos, *_decode_one(path, size)) for pos, path in items]


def _mp_context() -> multiprocessing.context.BaseContext:
    """fork is fastest on Linux; after TensorFlow was imported, forking is unsafe: use spawn."""
    if sys.platform.startswith("linux") and "tensorflow" not in sys.modules:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def decode_stream(
    items: Sequence[tuple[int, str]], size: int, workers: int
) -> Generator[tuple[int, np.ndarray | None, str], None, None]:
    """Decode ``(position, path)`` items, yielding ``(position, pixels or None, reason)`` in order.

    With several workers a bounded window of tasks is kept in flight (no ``imap`` read-ahead of
    the whole result stream), so memory does not grow with the number of images.
    """
    if workers <= 1 or len(items) <= 1:
        for pos, path in items:
            yield (pos, *_decode_one(path, size))
        return
    # small tasks: the last ones finish together (no core idles through a long tail) and the
    # per-task cost (~1 ms) stays small against ~4 images x 16 ms of decoding
    per_task = max(1, min(4, _TASK_BYTES // (size * size)))
    per_task = max(1, min(per_task, math.ceil(len(items) / (workers * 8))))
    tasks = ((size, list(items[i: i + per_task])) for i in range(0, len(items), per_task))
    window: deque[Future] = deque()
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=_mp_context(),
                               initializer=_worker_init)
    try:
        for task in tasks:
            window.append(pool.submit(_decode_task, task))
            if len(window) >= workers * 4:
                yield from window.popleft().result()
        while window:
            yield from window.popleft().result()
    except BrokenProcessPool:
        raise CxrError("a decoder process died (killed, out of memory or crashed in the image "
                       "library); rerun with --workers 1 to decode in one process") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------------- prepare
@dataclass
class PrepareResult:
    """What ``prepare`` wrote; :meth:`summary` is what the CLI prints."""

    out: Path
    report_path: Path
    n_written: int
    n_skipped: int
    n_csv_rows: int
    class_names: list[str]
    counts: dict[str, dict[str, int]]  # split -> class -> images (multi-hot column sums)
    split_sizes: dict[str, int] = field(default_factory=dict)  # split -> images
    dropped: dict[str, int] = field(default_factory=dict)
    skip_reasons: dict[str, int] = field(default_factory=dict)
    size: int = 128
    seconds: float = 0.0
    fingerprint: str = ""
    n_duplicate_names: int = 0  # file names found in several folders (the first sorted path won)

    def summary(self) -> str:
        rate = self.n_written / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"wrote {self.out}: {self.n_written} images at {self.size}x{self.size}, "
            f"{len(self.class_names)} classes, fingerprint {self.fingerprint} "
            f"({self.seconds:.1f} s, {rate:.0f} images/s)",
            "split: " + ", ".join(f"{s} {self.split_sizes.get(s, 0)}" for s in SPLIT_NAMES),
        ]
        if self.dropped:
            lines.append(f"{self.n_csv_rows} CSV rows; left out by the label policy: "
                         + ", ".join(f"{v} {k}" for k, v in self.dropped.items()))
        if self.n_duplicate_names:
            lines.append(f"{self.n_duplicate_names} image names exist in several folders under "
                         "the data root; the first in sorted path order was used")
        if self.n_skipped:
            reasons = ", ".join(f"{v} {k}" for k, v in sorted(self.skip_reasons.items()))
            lines.append(f"skipped {self.n_skipped} images ({reasons}); listed in "
                         f"{self.report_path}")
        return "\n".join(lines)


def _reason_kind(reason: str) -> str:
    return reason.split(":", 1)[0]


def _write_report(path: Path, skipped: list[tuple[str, str]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["image", "reason"])
    writer.writerows(skipped)
    write_text_atomic(path, buf.getvalue())
    _umask_permissions(path)


def _options(size: int, table: LabelTable, classes: Sequence[str] | None, top_k: int | None,
             view: str | None, val_fraction: float, test_fraction: float, seed: int,
             train_val_list: Path | None, test_list: Path | None) -> dict[str, Any]:
    def listed(p: Path | None) -> dict[str, str] | None:
        return None if p is None else {"name": p.name, "sha256": sha256_file(p)}

    return {
        "size": size, "classes": list(classes) if classes is not None else None, "top_k": top_k,
        "class_names": table.class_names, "multi_label": table.multi_label, "view": view,
        "val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed,
        "train_val_list": listed(train_val_list), "test_list": listed(test_list),
        # names the split algorithm, so a change to it changes the fingerprint
        "split_method": "patient, stratified by rarest class, v1",
    }


def fingerprint_of(csv_sha256: str, options: dict[str, Any], n: int) -> str:
    """A short identity of the data: same CSV + options + image count -> same fingerprint."""
    blob = f"{csv_sha256}\n{json.dumps(options, sort_keys=True)}\n{n}".encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def prepare(
    data_root: str | os.PathLike,
    csv: str | os.PathLike,
    out: str | os.PathLike,
    size: int = 128,
    classes: Sequence[str] | None = None,
    top_k: int | None = None,
    multi_label: str = "drop",
    view: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    train_val_list: str | os.PathLike | None = None,
    test_list: str | os.PathLike | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> PrepareResult:
    """Decode the labelled images under ``data_root`` into an HDF5 cache at ``out``.

    Options follow :func:`cxraug.data.labels.load_label_table`. Returns a :class:`PrepareResult`.
    Raises :class:`CxrError` for bad input, an existing ``out`` (without ``overwrite``), or when
    no image could be used (the report still lists why).
    """
    started = time.perf_counter()
    out = Path(out)
    csv_path = Path(csv)
    size = int(size)
    if not 8 <= size <= 4096:
        raise CxrError(f"--size {size}: choose a side between 8 and 4096 pixels (e.g. 128)")
    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise CxrError(f"--workers {workers}: need at least 1")
    if out.is_dir():
        raise CxrError(f"{out}: is a folder; --out names the cache file to write, e.g. cache.h5")
    if out.exists() and not overwrite:
        raise CxrError(f"{out}: already exists; pass --overwrite to replace it or choose another "
                       "--out")
    list_paths = [Path(p) if p is not None else None for p in (train_val_list, test_list)]
    table = load_label_table(
        csv_path, classes=classes, top_k=top_k, multi_label=multi_label, view=view, split=True,
        val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
        train_val_list=list_paths[0], test_list=list_paths[1])
    csv_sha = sha256_file(csv_path)
    index = index_images(data_root)
    names = table.image_index
    items: list[tuple[int, str]] = []
    skipped: list[tuple[str, str]] = []
    for pos, name in enumerate(names):
        path, reason = index.lookup(name)
        if path is None:
            skipped.append((name, reason))
        else:
            items.append((pos, path))
    report = report_path_for(out)
    if not items:
        _write_report(report, skipped)
        raise CxrError(f"{data_root}: none of the {len(names)} labelled images was found under the "
                       f"data root (see {report}); point DATA_ROOT at the folder holding the PNGs")
    options = _options(size, table, classes, top_k, view, val_fraction, test_fraction, seed,
                       *list_paths)
    kept = np.zeros(len(names), dtype=bool)
    with _interruptible() as stop, atomic_path(out, suffix=".h5") as tmp:
        stream = contextlib.closing(decode_stream(items, size, workers))
        with stream as decoded, h5py.File(tmp, "w") as h5:
            images = h5.create_dataset("images", shape=(len(items), size, size),
                                       maxshape=(None, size, size), dtype=np.uint8,
                                       chunks=(1, size, size))
            written = _stream_images(decoded, images, names, kept, skipped, size,
                                     len(items), progress, stop)
            if written == 0:
                h5.close()
                _write_report(report, skipped)
                raise CxrError(f"{data_root}: none of the {len(items)} images found could be "
                               f"decoded (see {report}); check the files")
            images.resize((written, size, size))
            fingerprint = fingerprint_of(csv_sha, options, written)
            _write_metadata(h5, table, kept, options, csv_path, csv_sha, fingerprint, data_root,
                            len(skipped))
            _umask_permissions(tmp)
        _write_report(report, skipped)
    final = table.subset(kept)
    assert final.split is not None  # load_label_table(split=True) made one
    counts = {s: final.counts(s) for s in SPLIT_NAMES}
    reasons: dict[str, int] = {}
    for _, reason in skipped:
        reasons[_reason_kind(reason)] = reasons.get(_reason_kind(reason), 0) + 1
    return PrepareResult(
        out=out, report_path=report, n_written=int(kept.sum()), n_skipped=len(skipped),
        n_csv_rows=len(table) + sum(table.dropped.values()), class_names=table.class_names,
        counts=counts, split_sizes={s: int((final.split == i).sum()) for i, s in
                                    enumerate(SPLIT_NAMES)},
        dropped=dict(table.dropped), skip_reasons=reasons, size=size,
        seconds=time.perf_counter() - started, fingerprint=fingerprint,
        n_duplicate_names=sum(1 for n in names if n in index.duplicates),
    )


def _umask_permissions(path: Path) -> None:
    """Temporary files are created 0600; give the finished cache the usual umask permissions."""
    from ..io_utils import file_mode

    os.chmod(path, file_mode())


def _stream_images(stream: Iterator[tuple[int, np.ndarray | None, str]], images: h5py.Dataset,
                   names: np.ndarray, kept: np.ndarray, skipped: list[tuple[str, str]],
                   size: int, total: int, progress: bool, stop: threading.Event) -> int:
    """Write decoded images to ``images`` in slabs as they arrive; return how many were written."""
    slab_n = max(1, _SLAB_BYTES // (size * size))
    buffer: list[np.ndarray] = []
    written = 0
    bar = progress_bar(total=total, desc="prepare", unit="img", disable=not progress,
                       file=sys.stderr, dynamic_ncols=True, mininterval=0.5)
    try:
        for pos, pixels, reason in stream:
            if stop.is_set():
                raise KeyboardInterrupt
            bar.update(1)
            if pixels is None:
                skipped.append((str(names[pos]), reason))
                continue
            kept[pos] = True
            buffer.append(pixels)
            if len(buffer) >= slab_n:
                images[written: written + len(buffer)] = np.stack(buffer)
                written += len(buffer)
                buffer.clear()
        if buffer:
            images[written: written + len(buffer)] = np.stack(buffer)
            written += len(buffer)
    finally:
        bar.close()
    return written


def _write_metadata(h5: h5py.File, table: LabelTable, kept: np.ndarray, options: dict[str, Any],
                    csv_path: Path, csv_sha: str, fingerprint: str,
                    data_root: str | os.PathLike, n_skipped: int) -> None:
    assert table.split is not None
    h5.create_dataset("label", data=table.label[kept].astype(np.int16))
    h5.create_dataset("multi_hot", data=table.multi_hot[kept].astype(np.uint8))
    h5.create_dataset("patient_id", data=table.patient_id[kept].astype(np.int64))
    h5.create_dataset("image_index", data=[str(n) for n in table.image_index[kept]],
                      dtype=h5py.string_dtype("utf-8"))
    split = h5.create_dataset("split", data=table.split[kept].astype(np.uint8))
    split.attrs["split_names"] = json.dumps(list(SPLIT_NAMES))
    attrs = {
        "format": FORMAT,
        "class_names": json.dumps(table.class_names),
        "size": int(options["size"]),
        "multi_label": table.multi_label,
        "csv_sha256": csv_sha,
        "csv_path": str(csv_path.resolve()),
        "options": json.dumps(options, sort_keys=True),
        "cxraug_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "fingerprint": fingerprint,
        "split_names": json.dumps(list(SPLIT_NAMES)),
        "data_root": str(Path(data_root).resolve()),
        "n_skipped": int(n_skipped),
        "dropped_by_policy": json.dumps(table.dropped),
        "view_counts": json.dumps(view_counts(table.frame, kept, table.split[kept])),
    }
    for key, value in attrs.items():
        h5.attrs[key] = value


def view_counts(frame: Any, kept: np.ndarray, split_codes: np.ndarray) -> dict[str, dict[str, int]]:
    """``View Position`` counts of the cached images per split (``""``: not recorded), so a
    generator can say which view it was trained on (``augment`` writes it into synthetic rows)."""
    from .nih import VIEW_POSITION

    if VIEW_POSITION in frame.columns:
        views = frame[VIEW_POSITION][kept].astype("string").fillna("").str.strip().str.upper()
        views = views.to_numpy(dtype=object)
    else:
        views = np.full(int(np.count_nonzero(kept)), "", dtype=object)
    out: dict[str, dict[str, int]] = {}
    for code, name in enumerate(SPLIT_NAMES):
        names, counts = np.unique(views[split_codes == code].astype(str), return_counts=True)
        out[name] = {str(k): int(v) for k, v in zip(names, counts, strict=True)}
    return out


def main_view(options: dict[str, Any], counts: dict[str, dict[str, int]] | None,
              split: str = "train") -> str:
    """The view a split's images show: ``prepare --view`` when given, else the most common
    recorded view of the split ("" when none is recorded or the cache predates view counts)."""
    if options.get("view"):
        return str(options["view"]).upper()
    known = {k: v for k, v in (counts or {}).get(split, {}).items() if k}
    return max(sorted(known), key=lambda k: known[k]) if known else ""


# ----------------------------------------------------------------------------------- reading
def _attr(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if isinstance(value, np.generic):
        value = value.item()
    return value


class CacheReader:
    """Read a cache written by :func:`prepare`; labels and ids are loaded once, images on demand.

    Use as a context manager (or call :meth:`close`). ``read(indices)`` returns images in the
    requested order (duplicates allowed) while giving h5py the sorted unique indices it needs.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise CxrError(f"{self.path}: cache not found; make one with `cxraug prepare`")
        try:
            self._h5 = h5py.File(self.path, "r")
        except OSError:
            raise CxrError(f"{self.path}: not an HDF5 file; pass a cache written by "
                           "`cxraug prepare`") from None
        try:
            fmt = _attr(self._h5.attrs.get("format"))
            if fmt != FORMAT:
                raise CxrError(f"{self.path}: not a cxraug cache (format {fmt!r}, expected "
                               f"{FORMAT!r}); make one with `cxraug prepare`")
            missing = [d for d in _DATASETS if d not in self._h5]
            if missing:
                raise CxrError(f"{self.path}: incomplete cxraug cache (no {', '.join(missing)}); "
                               "rerun `cxraug prepare --overwrite`")
            self.attrs: dict[str, Any] = {k: _attr(v) for k, v in self._h5.attrs.items()}
            for key in ("class_names", "options", "split_names", "dropped_by_policy",
                        "view_counts"):
                if isinstance(self.attrs.get(key), str):
                    self.attrs[key] = json.loads(self.attrs[key])
            self.class_names: list[str] = list(self.attrs["class_names"])
            self.size = int(self.attrs["size"])
            self.fingerprint = str(self.attrs["fingerprint"])
            self.multi_label = str(self.attrs.get("multi_label", "drop"))
            self.split_names: list[str] = list(self.attrs.get("split_names", SPLIT_NAMES))
            self.options: dict[str, Any] = dict(self.attrs.get("options") or {})
            self._images = self._h5["images"]
            self.labels = self._h5["label"][()].astype(np.int16)
            self.multi_hot = self._h5["multi_hot"][()].astype(np.uint8)
            self.patient_ids = self._h5["patient_id"][()].astype(np.int64)
            self.image_index = np.array(self._h5["image_index"].asstr()[()], dtype=object)
            self.split_codes = self._h5["split"][()].astype(np.uint8)
        except CxrError:
            self._h5.close()
            raise
        except (KeyError, ValueError, TypeError) as exc:
            self._h5.close()
            raise CxrError(f"{self.path}: damaged cxraug cache ({exc}); rerun `cxraug prepare "
                           "--overwrite`") from None
        self.n = int(self._images.shape[0])
        self.split = np.array(self.split_names, dtype=object)[self.split_codes]

    def __len__(self) -> int:
        return self.n

    def __enter__(self) -> CacheReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._h5.id.valid:
            self._h5.close()

    @property
    def images(self) -> h5py.Dataset:
        """The raw ``images`` dataset (for streaming readers that slice it themselves)."""
        return self._images

    def view(self, split: str = "train") -> str:
        """The View Position a split's images show ("" when unknown); see :func:`main_view`."""
        return main_view(self.options, self.attrs.get("view_counts"), split)

    def indices(self, split: str) -> np.ndarray:
        """Row numbers of one split (``train``, ``val`` or ``test``), ascending."""
        if split not in self.split_names:
            raise CxrError(f"{self.path}: unknown split {split!r}; choose one of "
                           f"{', '.join(self.split_names)}")
        return np.flatnonzero(self.split_codes == self.split_names.index(split))

    def read(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Images ``uint8 [B, H, W]`` for ``indices``, in the order given."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            return np.zeros((0, self.size, self.size), dtype=np.uint8)
        if idx.min() < 0 or idx.max() >= self.n:
            raise IndexError(f"image indices must be in [0, {self.n}); "
                             f"got {idx.min()}..{idx.max()}")
        unique, inverse = np.unique(idx, return_inverse=True)
        data = np.empty((len(unique), self.size, self.size), dtype=np.uint8)
        # One slice read per run of consecutive rows. h5py's fancy indexing (``ds[sorted_list]``)
        # builds a point selection that measured 10-50x slower than this for random batches.
        breaks = np.flatnonzero(np.diff(unique) != 1) + 1
        starts = np.concatenate([[0], breaks])
        stops = np.concatenate([breaks, [len(unique)]])
        for a, b in zip(starts.tolist(), stops.tolist(), strict=True):
            first = int(unique[a])
            data[a:b] = self._images[first: first + (b - a)]
        return data[inverse.reshape(-1)]

    def counts(self, split: str | None = None) -> dict[str, int]:
        """Images per class (an image with several classes counts for each)."""
        mask = slice(None) if split is None else self.split_codes == self.split_names.index(split)
        sums = self.multi_hot[mask].sum(axis=0, dtype=np.int64)
        return {c: int(n) for c, n in zip(self.class_names, sums, strict=True)}


def describe_cache(path: str | os.PathLike) -> str:
    """``cxraug info``: counts per class and split, size, source CSV and fingerprint."""
    with CacheReader(path) as cache:
        a = cache.attrs
        width = max([len("patients"), *map(len, cache.class_names)])
        head = f"{'class':<{width}}  " + "  ".join(f"{s:>7}" for s in cache.split_names)
        lines = [
            f"{cache.path}: {cache.n} images, {cache.size}x{cache.size} uint8, "
            f"{len(cache.class_names)} classes, multi-label {cache.multi_label}",
            f"source: {a.get('csv_path')} (sha256 {str(a.get('csv_sha256', ''))[:12]}), "
            f"fingerprint {cache.fingerprint}",
            f"made by cxraug {a.get('cxraug_version')} on {a.get('created')}; "
            f"{a.get('n_skipped', 0)} images skipped",
            "",
            head + f"  {'total':>7}",
        ]
        per_split = {s: cache.counts(s) for s in cache.split_names}
        for name in cache.class_names:
            row = [per_split[s][name] for s in cache.split_names]
            lines.append(f"{name:<{width}}  " + "  ".join(f"{n:>7}" for n in row)
                         + f"  {sum(row):>7}")
        totals = [int((cache.split_codes == i).sum()) for i in range(len(cache.split_names))]
        lines.append(f"{'images':<{width}}  " + "  ".join(f"{n:>7}" for n in totals)
                     + f"  {cache.n:>7}")
        several = int((cache.labels < 0).sum())
        if several:
            lines.append(f"({several} images carry several classes and count once for each)")
        patients = [len(np.unique(cache.patient_ids[cache.split_codes == i]))
                    for i in range(len(cache.split_names))]
        lines.append(f"{'patients':<{width}}  " + "  ".join(f"{n:>7}" for n in patients)
                     + f"  {len(np.unique(cache.patient_ids)):>7}")
        return "\n".join(lines)
