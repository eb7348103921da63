"""Nearest-training-image search for memorization: cxraug's chunked search vs the direct one.

Baseline: the straightforward exact search, one float64 distance matrix for all pairs, then argmin
(its memory grows with queries x references). Ours: `cxraug.evaluation.metrics.nearest_neighbors`
(float32 blocks of bounded size, then the best candidates re-measured exactly in float64).
Both must return the same neighbours; the script prints time, peak memory and the ratios.

    python benchmarks/bench_nearest.py [--queries 700] [--refs 6000] [--size 64]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from cxraug.evaluation.metrics import nearest_neighbors


def direct(query: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q = query.reshape(len(query), -1).astype(np.float64)
    r = ref.reshape(len(ref), -1).astype(np.float64)
    d = (q * q).sum(1)[:, None] + (r * r).sum(1)[None, :] - 2.0 * q @ r.T
    idx = d.argmin(1)
    return idx, np.sqrt(np.maximum(d[np.arange(len(q)), idx], 0))


def measure(fn, *args):
    tracemalloc.start()
    t = time.perf_counter()
    out = fn(*args)
    seconds = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, seconds, peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=700)
    ap.add_argument("--refs", type=int, default=6000)
    ap.add_argument("--size", type=int, default=64)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, size=(a.refs, a.size, a.size), dtype=np.uint8)
    query = rng.integers(0, 256, size=(a.queries, a.size, a.size), dtype=np.uint8)
    query[:50] = ref[rng.choice(a.refs, 50, replace=False)]  # some exact copies
    (i0, d0), t0, m0 = measure(direct, query, ref)
    (i1, d1), t1, m1 = measure(nearest_neighbors, query, ref)
    assert (i0 == i1).all(), "different neighbours"
    print(f"{a.queries} queries x {a.refs} references, {a.size}x{a.size} pixels")
    print(f"direct float64 : {t0:7.2f} s  peak {m0 / 2**20:8.1f} MiB  "
          f"copies at distance 0: {(d0[:50] == 0).sum()}/50")
    print(f"cxraug chunked : {t1:7.2f} s  peak {m1 / 2**20:8.1f} MiB  "
          f"copies at distance 0: {(d1[:50] == 0).sum()}/50")
    print(f"speed-up {t0 / t1:.2f}x, memory ratio {m0 / m1:.2f}x")


if __name__ == "__main__":
    main()
