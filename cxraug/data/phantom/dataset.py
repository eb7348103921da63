"""The phantom data set on disk (``cxraug demo-data``): NIH's layout, a README, swapped into place.

``images/PPPPPPPP_FFF.png`` plus a ``Data_Entry_2017.csv`` with NIH's header quirk, written into a
hidden temporary folder beside the target and renamed into place at the end, so a killed run never
leaves a folder that looks complete.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ...errors import CxrError
from ...io_utils import exit_with_parent
from ...progress import progress_bar
from ..nih import (
    FINDING_LABELS,
    FOLLOW_UP,
    HEIGHT,
    IMAGE_INDEX,
    PATIENT_AGE,
    PATIENT_GENDER,
    PATIENT_ID,
    SPACING_X,
    SPACING_Y,
    VIEW_POSITION,
    WIDTH,
    write_nih_csv,
)
from .plan import ImageSpec, check_options, plan_dataset
from .render import render_image
from .signs import SIGNS

#: Pixel spacing (mm) of NIH's 1024-pixel PNGs; a phantom of side ``size`` covers the same field.
NIH_SPACING_MM = 0.143
CSV_NAME = "Data_Entry_2017.csv"
README_NAME = "README.txt"
README_MARKER = "cxraug phantom data set"


@dataclass
class PhantomResult:
    """What :func:`make_phantom_dataset` wrote."""

    out: Path
    csv_path: Path
    n: int
    size: int
    seed: int
    counts: dict[str, int]  # ``Finding Labels`` value -> images, most frequent first
    workers: int
    seconds: float

    @property
    def n_multi_label(self) -> int:
        return sum(c for k, c in self.counts.items() if "|" in k)

    def summary(self) -> str:
        lines = [f"wrote {self.n} phantom images ({self.size}x{self.size}, seed {self.seed}) "
                 f"to {self.out} in {self.seconds:.1f} s ({self.workers} worker(s))"]
        for name, count in self.counts.items():
            if "|" not in name:
                lines.append(f"  {name:<14} {count:6d}")
        lines.append(f"  {'multi-label':<14} {self.n_multi_label:6d}")
        lines.append(f"labels: {self.csv_path}")
        lines.append(f"next:   cxraug prepare {self.out} --csv {self.csv_path} --top-k 6 "
                     "--size 128 --out cache.h5")
        return "\n".join(lines)


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an 8-bit grayscale image (no timestamps, so bytes are reproducible).

    Pillow's encoder on purpose, not augment's (:mod:`cxraug.synthesis.png`, which the data stage
    may not import): the phantoms stand in for NIH files written by a standard encoder, which
    ``prepare`` must decode, and their bytes stay those of every earlier release.
    """
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse to clobber anything that is not an empty folder or an earlier phantom set."""
    if out.exists() and not out.is_dir():
        raise CxrError(f"--out {out}: exists and is not a folder; choose a folder path")
    if out.is_dir() and any(out.iterdir()):
        readme = out / README_NAME
        ours = readme.is_file() and README_MARKER in readme.read_text(errors="replace")[:200]
        if not overwrite:
            raise CxrError(f"--out {out}: folder is not empty; choose a new folder"
                           + (" or pass --overwrite" if ours else ""))
        if not ours:
            raise CxrError(f"--out {out}: not empty and not a cxraug phantom data set; "
                           "refusing to replace it, choose a new folder")


def readme_text(n: int, size: int, seed: int, mlf: float, counts: dict[str, int]) -> str:
    """The data set's README: what it is, how to make it again, each finding's sign, counts."""
    rows = "\n".join(f"  {k:<28} {v}" for k, v in counts.items())
    signs = "\n".join(f"  {sign.finding:<13} {sign.description}" for sign in SIGNS.values())
    return f"""{README_MARKER}

SYNTHETIC DATA - NOT REAL PATIENTS, NOT FOR CLINICAL OR RESEARCH CONCLUSIONS.

Procedural chest radiograph phantoms drawn by cxraug (cxraug.data.phantom) in the layout of the
NIH ChestX-ray14 download, so every cxraug command can be tried without the real data:

  images/PPPPPPPP_FFF.png   8-bit grayscale, {size}x{size}; patient id and follow-up number
  {CSV_NAME}       NIH's exact CSV layout (header quirk included)

Regenerate byte for byte (same cxraug, numpy and Pillow versions) with:
  cxraug demo-data --out DIR --n {n} --size {size} --seed {seed} --multi-label-fraction {mlf}

Each finding has a drawn sign whose place, size and density vary:
{signs}
Brightness and contrast are normalized to random targets per image, so global intensity carries
no label information. Patients have 1-4 follow-ups that share anatomy.

Images per Finding Labels value:
{rows}
"""


def _render_job(job: tuple[ImageSpec, int, int, str]) -> int:
    """Worker: draw one image and write it; returns its byte count."""
    spec, size, seed, folder = job
    data = encode_png(render_image(spec, size, seed))
    with open(os.path.join(folder, spec.name), "wb") as handle:
        handle.write(data)
    return len(data)


def _auto_workers(n: int, size: int) -> int:
    """Processes worth starting for ``n`` images of ``size`` (one for small jobs)."""
    cores = os.cpu_count() or 1
    est_s = n * (0.002 + 0.022 * (size / 256) ** 2)  # rough single-core cost per image
    if cores == 1 or est_s < 2.0:
        return 1  # starting processes would cost more than it saves
    return max(1, min(cores, n // 16))


def make_phantom_dataset(
    out: str | os.PathLike[str],
    n: int = 2000,
    size: int = 256,
    seed: int = 0,
    multi_label_fraction: float = 0.1,
    overwrite: bool = False,
    progress: bool = True,
    workers: int | None = None,
) -> PhantomResult:
    """Write ``n`` phantom radiographs and their NIH CSV into ``out``.

    Everything is written into a hidden temporary folder beside ``out`` and renamed into place at
    the end, so a killed run never leaves a folder that looks complete. ``workers`` (default: all
    cores for large jobs) changes only the speed, never a byte of the output.
    """
    start = time.perf_counter()
    check_options(n, size, seed, multi_label_fraction)
    out = Path(out)
    prepare_out(out, overwrite)
    specs = plan_dataset(n, seed, multi_label_fraction)
    if workers is None:
        workers = _auto_workers(n, size)
    if workers < 1:
        raise CxrError(f"workers={workers}: use 1 or more processes")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        (tmp / "images").mkdir()
        jobs = [(spec, size, seed, str(tmp / "images")) for spec in specs]
        bar = progress_bar(total=n, desc="phantoms", unit="img", file=sys.stderr,
                           dynamic_ncols=True, disable=not progress)
        if workers == 1:
            for job in jobs:
                _render_job(job)
                bar.update(1)
        else:
            method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() \
                else "spawn"  # never fork: the caller may hold threads (TensorFlow, BLAS)
            ctx = multiprocessing.get_context(method)
            with ctx.Pool(workers, initializer=exit_with_parent) as pool:
                chunk = max(1, min(16, n // (8 * workers)))
                for _ in pool.imap(_render_job, jobs, chunksize=chunk):
                    bar.update(1)
        bar.close()

        rows = pd.DataFrame({
            IMAGE_INDEX: [sp.name for sp in specs],
            FINDING_LABELS: [sp.finding_labels for sp in specs],
            FOLLOW_UP: [sp.follow_up for sp in specs],
            PATIENT_ID: [sp.patient_id for sp in specs],
            PATIENT_AGE: [sp.age for sp in specs],
            PATIENT_GENDER: [sp.gender for sp in specs],
            VIEW_POSITION: [sp.view for sp in specs],
            WIDTH: size,
            HEIGHT: size,
            SPACING_X: round(NIH_SPACING_MM * 1024 / size, 6),
            SPACING_Y: round(NIH_SPACING_MM * 1024 / size, 6),
        })
        counts = {str(k): int(c) for k, c in rows[FINDING_LABELS].value_counts().items()}
        counts = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        (tmp / README_NAME).write_text(readme_text(n, size, seed, multi_label_fraction, counts))
        write_nih_csv(rows, tmp / CSV_NAME)  # the CSV last: its presence marks a complete set
        swap_into_place(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return PhantomResult(out=out, csv_path=out / CSV_NAME, n=n, size=size, seed=seed,
                         counts=counts, workers=workers, seconds=time.perf_counter() - start)


def swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished folder to ``out``; an old set is moved aside first, then deleted."""
    old = None
    if out.is_dir():
        if any(out.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / out.name)
        else:
            out.rmdir()
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
