"""Benchmark: ``demo-data`` (phantom data set) on every core against one process.

Both sides call :func:`cxraug.data.phantom.make_phantom_dataset` with the same ``(n, size, seed)``:
the baseline with ``workers=1``, ours with ``workers=os.cpu_count()``; the two folders must be
byte-identical (the output never depends on the worker count). Reported: images/s of each, their
ratio, the single-process CPU time per image (drawing and PNG encoding), and the wall time the
issue's default job (2,000 images at 256x256) would take on idle cores at that CPU cost. The load
average is printed too: on a shared machine the wall times depend on what else runs.

    python benchmarks/phantom.py [--n 400] [--size 256] [--workers N]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

from cxraug.data.phantom import make_phantom_dataset


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="cxraug-bench-phantom-"))
    try:
        print(f"n={args.n} size={args.size} cores={os.cpu_count()} "
              f"load average before: {os.getloadavg()[0]:.1f}")
        cpu0, t0 = time.process_time(), time.perf_counter()
        base = make_phantom_dataset(tmp / "one", n=args.n, size=args.size, progress=False,
                                    workers=1)
        base_wall, base_cpu = time.perf_counter() - t0, time.process_time() - cpu0
        t0 = time.perf_counter()
        ours = make_phantom_dataset(tmp / "all", n=args.n, size=args.size, progress=False,
                                    workers=args.workers)
        ours_wall = time.perf_counter() - t0
        same = _digest(tmp / "one") == _digest(tmp / "all")
        cpu_per_image = base_cpu / args.n
        cores = min(args.workers, os.cpu_count() or 1)
        print(f"baseline 1 process : {args.n / base_wall:7.1f} img/s ({base_wall:.1f} s)")
        rate = args.n / ours_wall
        print(f"ours {ours.workers:2d} processes: {rate:7.1f} img/s ({ours_wall:.1f} s)")
        print(f"ratio ours/baseline: {base_wall / ours_wall:.2f}x   byte-identical: {same}")
        print(f"CPU per image (draw + PNG, 1 process): {cpu_per_image * 1000:.1f} ms")
        print(f"projected 2000 images at this size on {cores} idle core(s): "
              f"{2000 * cpu_per_image / cores:.0f} s")
        print(f"load average after: {os.getloadavg()[0]:.1f}")
        assert base.counts == ours.counts and same, "worker count changed the output"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
