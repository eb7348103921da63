"""The real side of mixed.csv: the real rows of ``--real-csv`` or a cache (``--data``), their
counts per target, and where their PNGs are."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import CxrError


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


@dataclass
class LocatedReal:
    """The real rows as mixed.csv lists them: each one's PNG ("" when not found), how many were
    not found, and the sizes of a few (for the manifest). Empty without real data."""

    data: RealData | None = None
    paths: list[str] | None = None  # None: a shard (it writes no mixed.csv)
    missing: int = 0
    sizes: list[list[int]] = field(default_factory=list)

    @property
    def rows_in_mixed(self) -> int:
        return 0 if self.data is None else len(self.data.rows) - self.missing


def real_from_csv(path: Path, class_names: list[str], multi_label: str,
                  split_list: Path | None) -> RealData:
    from ..data.labels import load_counting_table

    table = load_counting_table(path, classes=class_names, multi_label=multi_label,
                                split_list=split_list, require_rows=True)
    return RealData(source=str(path), rows=table.frame, class_names=list(table.class_names),
                    multi_hot=np.asarray(table.multi_hot, dtype=np.uint8),
                    root=path.resolve().parent)


def real_from_cache(path: Path) -> RealData:
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


def image_sizes(paths: Iterable[str], limit: int = 20) -> list[list[int]]:
    """Distinct ``[width, height]`` of up to ``limit`` images (headers only: cheap)."""
    from PIL import Image

    sizes: set[tuple[int, int]] = set()
    for n, p in enumerate(p for p in paths if p):
        if n >= limit:
            break
        with contextlib.suppress(OSError), Image.open(p) as im:
            sizes.add((int(im.size[0]), int(im.size[1])))
    return [list(s) for s in sorted(sizes)]


def locate_real(real: RealData, real_root: Path | None, notes: list[str],
                progress: bool) -> LocatedReal:
    """mixed.csv's path of each real row ("" when not found), how many were not found (said in
    ``notes``), and their sizes."""
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
    return LocatedReal(real, real_paths, missing)
