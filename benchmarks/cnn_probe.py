"""The CNN two-sample probe (cxraug/probes/cnn.py): BLAS threads as the machine gives them vs one.

Baseline: the same test under the process's default BLAS thread count (what the probe did before
it limited itself). Ours: ``cnn_two_sample_test``, which runs with one BLAS thread. The same
images, folds and seed; the script prints both times, their ratio, the two accuracies, the
machine's core count and load average (other jobs on the machine slow the threaded run most), and
the time of the first layer's weight-gradient product alone, both ways.

    python benchmarks/cnn_probe.py [--n 150] [--size 64] [--epochs 4]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from cxraug.probes import cnn


def product_ms(threads: int | None, repeats: int = 20) -> float:
    rng = np.random.default_rng(0)
    cols = rng.standard_normal((16 * 32 * 32, 16)).astype(np.float32)
    grad = rng.standard_normal((16 * 32 * 32, 16)).astype(np.float32)
    with threadpool_limits(limits=threads, user_api="blas"):
        start = time.perf_counter()
        for _ in range(repeats):
            cols.T @ grad
        return (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=150, help="images a side")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=4)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, size=(a.n, a.size, a.size), dtype=np.uint8)
    other = (rng.integers(0, 256, size=(a.n, a.size, a.size)) * 0.8).astype(np.uint8)
    blas = [f"{i['internal_api']} {i['version']} ({i['num_threads']} threads)"
            for i in threadpool_info() if i["user_api"] == "blas"]
    print(f"cores {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}, BLAS {blas}")
    print(f"first layer's weight gradient [16, 16384] @ [16384, 16]: default threads "
          f"{product_ms(None):.2f} ms, one thread {product_ms(1):.2f} ms")

    start = time.perf_counter()
    with threadpool_limits(limits=None, user_api="blas"):
        threaded = cnn._cnn_two_sample_test(real, other, 5, 0, a.epochs, 500)
    t_threaded = time.perf_counter() - start
    start = time.perf_counter()
    ours = cnn.cnn_two_sample_test(real, other, seed=0, epochs=a.epochs)
    t_ours = time.perf_counter() - start
    print(f"CNN two-sample test, {a.n} images a side at {a.size}px, 5 folds x {a.epochs} epochs:")
    print(f"  default BLAS threads: {t_threaded:7.1f} s  accuracy {threaded.accuracy:.3f}")
    print(f"  one BLAS thread:      {t_ours:7.1f} s  accuracy {ours.accuracy:.3f}")
    print(f"  speed-up {t_threaded / t_ours:.1f}x")


if __name__ == "__main__":
    main()
