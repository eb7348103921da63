"""Benchmark ``cxraug prepare``: throughput against this machine's PNG-decoding limit, and memory.

Usage (from the repository root, with the NIH sample beside the checkout):

    python benchmarks/prepare.py [--sample ../shared/nih-sample] [--workers 2] [--size 128]
                                 [--images N] [--downsample 512] [--repeat 10]

``--images N`` takes the first N images only (start-up weighs more); ``--downsample 512`` first
writes a 512x512 PNG copy of each (Lanczos, Pillow's default PNG compression), as the downsampled
NIH copies that circulate are.

1. Limits: the rate at which Pillow alone decodes the sample's PNGs on one core
   (``Image.open(p).load()``), times the number of workers; and the rate of decoding + converting
   + resizing to ``--size`` (``load_gray``, the work prepare cannot skip), times the workers.
   Measured in the same run, before and after ours, after one pass that warms the page cache
   (prepare then reads warm files too). Also measured directly: that many Pillow-only processes
   decoding the files at once (the honest limit on a shared machine, where the scheduler shares
   CPU between sessions). And per CPU second, which no contention distorts.
2. Ours: ``prepare`` on all 401 images (every label kept), wall time of the whole call: label
   reading, indexing, decoding, resizing, HDF5 writing and the atomic rename. Its start-up: the
   same call on one image.
3. Memory: ``prepare`` in a fresh process for N=401 and for N=4,010 (the sample repeated ten times
   under distinct names, hard links in a temporary root); the peak of the summed RSS of that process
   and its decoder children, sampled from /proc every 20 ms (in runs separate from the timed one).
   Flat memory means a ratio near 1.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def pillow_rate(paths: list[Path]) -> tuple[float, float]:
    """Images per second decoded by Pillow alone on one core: per wall second, per CPU second."""
    from PIL import Image

    start, cpu = time.perf_counter(), time.process_time()
    for p in paths:
        with Image.open(p) as im:
            im.load()
    return (len(paths) / (time.perf_counter() - start),
            len(paths) / (time.process_time() - cpu))


def gray_rate(paths: list[Path], size: int) -> float:
    """Images per wall second of decode + gray + resize (``load_gray``) on one core."""
    from cxraug.data.images import load_gray

    start = time.perf_counter()
    for p in paths:
        load_gray(p, size)
    return len(paths) / (time.perf_counter() - start)


def make_subset(sample: Path, tmp: Path, images: int | None, downsample: int | None,
                ) -> Path:
    """The first ``images`` rows of the sample (all by default), copied, or written at
    ``downsample`` x ``downsample``; a folder with ``images/`` and its Data_Entry_2017.csv."""
    from PIL import Image

    from cxraug.data.labels import read_nih_csv
    from cxraug.data.nih import IMAGE_INDEX, write_nih_csv

    frame = read_nih_csv(sample / "Data_Entry_2017.csv")
    frame = frame[[(sample / "images" / n).is_file() for n in frame[IMAGE_INDEX]]]
    frame = frame.sort_values(IMAGE_INDEX).head(images or len(frame))
    root = tmp / f"subset-{images}-{downsample}"
    (root / "images").mkdir(parents=True)
    for name in frame[IMAGE_INDEX]:
        if downsample:
            with Image.open(sample / "images" / name) as im:
                im.convert("L").resize((downsample, downsample), Image.Resampling.LANCZOS).save(
                    root / "images" / name)
        else:
            shutil.copyfile(sample / "images" / name, root / "images" / name)
    write_nih_csv(frame, root / "Data_Entry_2017.csv")
    return root


def _decode_all(paths: list[Path]) -> None:
    from PIL import Image

    for p in paths:
        with Image.open(p) as im:
            im.load()


def parallel_pillow_rate(paths: list[Path], workers: int) -> float:
    """Images per wall second of ``workers`` Pillow-only processes decoding the files between them.

    On an idle machine this equals the one-core rate times ``workers``; on a shared one it is the
    limit this session can actually reach (the kernel's autogroup scheduler shares CPU between
    sessions, not processes), so ``prepare`` is compared with it too.
    """
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_decode_all, args=(paths[i::workers],)) for i in range(workers)]
    start = time.perf_counter()
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    return len(paths) / (time.perf_counter() - start)


def _cpu_seconds() -> float:
    """CPU time of this process and its reaped children (the decoder pool), user + system."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _tree_rss(pid: int) -> int:
    """Summed resident memory (bytes) of ``pid`` and all its descendants.

    Walks ``/proc/<pid>/task/<tid>/children`` so a sample reads a handful of files, not all of
    /proc: the sampler runs in the same session as the measured run and must stay cheap.
    """
    total, stack = 0, [pid]
    page = os.sysconf("SC_PAGE_SIZE")
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/statm") as fh:
                total += int(fh.read().split()[1]) * page
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as fh:
                    stack.extend(int(c) for c in fh.read().split())
        except (OSError, ValueError):
            continue
    return total


def peak_memory_run(args: list[str], sample_memory: bool = True) -> tuple[float, dict]:
    """Run ``args`` and sample its process tree's RSS; return (peak MiB, the JSON it printed)."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while sample_memory and not done.is_set():
            peak = max(peak, _tree_rss(proc.pid))
            time.sleep(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, _ = proc.communicate()
    done.set()
    thread.join()
    if proc.returncode != 0:
        raise SystemExit(f"child failed: {args}")
    return peak / 2**20, json.loads(out.strip().splitlines()[-1])


def child(root: str, csv_path: str, out: str, size: int, workers: int) -> None:
    """Run one prepare (every label kept) and print its numbers as JSON."""
    from cxraug.data.cache import prepare
    from cxraug.data.nih import ALL_LABELS

    start, cpu = time.perf_counter(), _cpu_seconds()
    result = prepare(data_root=root, csv=csv_path, out=out, size=size, classes=list(ALL_LABELS),
                     multi_label="keep", workers=workers, overwrite=True, progress=False)
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
    kid = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"n": result.n_written, "seconds": seconds, "cpu": cpu,
                      "skipped": result.n_skipped, "parent_maxrss": own, "child_maxrss": kid}))


def make_repeated(sample: Path, tmp: Path, times: int) -> tuple[Path, Path]:
    """A root holding the sample ``times`` over under distinct NIH names, and its CSV."""
    import pandas as pd

    from cxraug.data.labels import read_nih_csv
    from cxraug.data.nih import IMAGE_INDEX, PATIENT_ID, image_name, write_nih_csv

    root = tmp / "root"
    src = root / "images_000"
    src.mkdir(parents=True)
    frame = read_nih_csv(sample / "Data_Entry_2017.csv")
    for name in frame[IMAGE_INDEX]:
        shutil.copyfile(sample / "images" / name, src / name)
    parts = []
    for k in range(times):
        copy = frame.copy()
        copy[PATIENT_ID] = copy[PATIENT_ID] + k * 1_000_000
        copy[IMAGE_INDEX] = [image_name(p, 0) for p in copy[PATIENT_ID]]
        if k:
            folder = root / f"images_{k:03d}"
            folder.mkdir()
            for old, new in zip(frame[IMAGE_INDEX], copy[IMAGE_INDEX], strict=True):
                os.link(src / old, folder / new)
        parts.append(copy)
    csv_path = tmp / "Data_Entry_2017.csv"
    write_nih_csv(pd.concat(parts, ignore_index=True), csv_path)
    return root, csv_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=Path, default=ROOT.parent / "shared" / "nih-sample")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=10,
                        help="N multiplier for the memory test (1: skip it)")
    parser.add_argument("--images", type=int, default=None, help="the first N images only")
    parser.add_argument("--downsample", type=int, default=None,
                        help="prepare PNG copies at this size first (e.g. 512)")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        root, csv_path, out, size, workers = args.child
        child(root, csv_path, out, int(size), int(workers))
        return

    with tempfile.TemporaryDirectory(prefix="cxraug-bench-") as tmp_name:
        tmp = Path(tmp_name)
        sample = args.sample
        if args.images or args.downsample:
            sample = make_subset(sample, tmp, args.images, args.downsample)
        paths = sorted((sample / "images").glob("*.png"))
        if not paths:
            raise SystemExit(f"no PNGs under {sample / 'images'}")
        with Image.open(paths[0]) as im:
            shape = "x".join(map(str, im.size))
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; "
              f"{len(paths)} PNGs of {shape}; workers {args.workers}; size {args.size}")
        for p in paths:  # warm the page cache for both sides
            p.read_bytes()
        one = make_subset(sample, tmp, 1, None)
        base, base_cpu = pillow_rate(paths)
        gray = gray_rate(paths, args.size)
        par = parallel_pillow_rate(paths, args.workers)
        small_args = [sys.executable, __file__, "--child", str(sample),
                      str(sample / "Data_Entry_2017.csv"), str(tmp / "small.h5"), str(args.size),
                      str(args.workers)]
        _, ours = peak_memory_run(small_args, sample_memory=False)  # timing: nothing else runs
        _, first = peak_memory_run(
            [sys.executable, __file__, "--child", str(one), str(one / "Data_Entry_2017.csv"),
             str(tmp / "one.h5"), str(args.size), str(args.workers)], sample_memory=False)
        par_after = parallel_pillow_rate(paths, args.workers)
        gray_after = gray_rate(paths, args.size)
        after, after_cpu = pillow_rate(paths)  # once more: the machine is shared, bracket ours
        par_mean = (par + par_after) / 2
        rate = ours["n"] / ours["seconds"]
        limit = (base + after) / 2 * args.workers
        per_cpu = ours["n"] / ours["cpu"]
        base_per_cpu = (base_cpu + after_cpu) / 2
        print(f"pillow decode only, 1 core : {base:7.1f} img/s (again after: {after:.1f})")
        print(f"limit = that x {args.workers} workers : {limit:7.1f} img/s")
        print(f"prepare (whole call)       : {rate:7.1f} img/s  ({ours['n']} images, "
              f"{ours['seconds']:.2f} s wall)")
        print(f"ratio prepare / limit      : {rate / limit:7.3f}  (target >= 0.85; wall clock: "
              "meaningful on an otherwise idle machine)")
        gray_limit = (gray + gray_after) / 2 * args.workers
        print(f"decode + gray + resize to {args.size}, 1 core: {gray:.1f} img/s (after: "
              f"{gray_after:.1f}); x {args.workers} = {gray_limit:.1f} img/s; the resize costs "
              f"{limit / gray_limit - 1:.1%} of decoding")
        print(f"ratio prepare / that limit : {rate / gray_limit:7.3f}  (the work prepare cannot "
              "skip)")
        print(f"start-up (prepare of 1 image): {first['seconds']:.3f} s = "
              f"{first['seconds'] / ours['seconds']:.1%} of this run; ratio without it "
              f"{ours['n'] / max(ours['seconds'] - first['seconds'], 1e-9) / gray_limit:.3f} of "
              "decode + resize")
        print(f"{args.workers} Pillow processes at once : {par_mean:7.1f} img/s (before {par:.1f}, "
              f"after {par_after:.1f})")
        print(f"ratio prepare / that       : {rate / par_mean:7.3f}  (the same limit, measured "
              "directly in this session)")
        print(f"per CPU second             : pillow {base_per_cpu:.1f} img/s, prepare "
              f"{per_cpu:.1f} img/s (all its processes)")
        print(f"CPU efficiency             : {per_cpu / base_per_cpu:7.3f}  (decoding alone's CPU "
              "cost per image / prepare's; robust on a shared machine)")
        busy = ours["cpu"] / ours["seconds"]
        print(f"cores kept busy            : {busy:7.2f} of {args.workers}")

        if args.repeat <= 1:
            return
        peak_small, small = peak_memory_run(small_args)
        root, csv_big = make_repeated(sample, tmp, args.repeat)
        peak_big, big = peak_memory_run(
            [sys.executable, __file__, "--child", str(root), str(csv_big), str(tmp / "big.h5"),
             str(args.size), str(args.workers)])
        for run, peak in ((small, peak_small), (big, peak_big)):
            print(f"peak RSS (process tree), N={run['n']:>5}: {peak:7.1f} MiB  (maxrss: parent "
                  f"{run['parent_maxrss']:.1f} MiB, largest decoder {run['child_maxrss']:.1f} MiB;"
                  f" {run['n'] / run['seconds']:.1f} img/s)")
        print(f"memory ratio N={big['n']} / N={small['n']}: {peak_big / peak_small:.3f}")


if __name__ == "__main__":
    main()
