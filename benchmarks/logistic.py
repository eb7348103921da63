"""The linear two-sample test's logistic regression (cxraug/probes/stats.py): Newton steps solved
in the features' space (baseline, what ``fit_logistic`` did before) vs in the images' space
(``fit_logistic`` now, when there are fewer images than features).

Baseline: the primal Newton iteration, a (D+1) x (D+1) Hessian formed and solved every step,
written out here as it was. Ours: ``fit_logistic``. The same data; the script prints both times,
their ratio and the largest difference between the two fits' weights, for the pixel test's shapes
(standardized 32x32 thumbnails: D = 1024; N = the training folds of 122 and of 500 images a side),
then a whole ``two_sample_test``: the baseline (primal steps, BLAS threads as numpy gives them),
the images' space with threaded BLAS, and ours (the images' space on one BLAS thread), with the
machine's core count and load average.

    python benchmarks/logistic.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import time
from unittest import mock

import numpy as np

from cxraug.blas import one_blas_thread
from cxraug.probes import stats


def primal_fit(x: np.ndarray, y: np.ndarray, c: float = 1.0, iterations: int = 50,
               tol: float = 1e-8) -> tuple[np.ndarray, float]:
    """``fit_logistic`` before: the (D+1)-sized Newton system every step."""
    n, d = x.shape
    xb = np.hstack([x, np.ones((n, 1))])
    reg = np.full(d + 1, 1.0 / c)
    reg[-1] = 0.0
    beta = np.zeros(d + 1)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(xb @ beta)))
        grad = xb.T @ (p - y) + reg * beta
        hess = (xb.T * (p * (1.0 - p))) @ xb
        hess[np.diag_indices_from(hess)] += reg + 1e-10
        step = np.linalg.solve(hess, grad)
        beta -= step
        if float(np.abs(step).max()) < tol:
            break
    return beta[:-1], float(beta[-1])


def best_of(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    print(f"cores {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}")
    rng = np.random.default_rng(0)
    for per_side in (122, 500):
        n = 2 * per_side * 4 // 5  # a training fold of 5
        x = rng.standard_normal((n, 1024))
        y = np.arange(n) % 2 * 1.0
        x[y == 1] += 0.03
        w0, b0 = primal_fit(x, y)
        w1, b1 = stats.fit_logistic(x, y)
        t0 = best_of(lambda: primal_fit(x, y), a.repeats)  # noqa: B023
        t1 = best_of(lambda: stats.fit_logistic(x, y), a.repeats)  # noqa: B023
        with one_blas_thread():
            t2 = best_of(lambda: stats.fit_logistic(x, y), a.repeats)  # noqa: B023
        print(f"fit N={n} D=1024: baseline {t0 * 1e3:7.1f} ms  ours {t1 * 1e3:7.1f} ms "
              f"({t0 / t1:4.1f}x), on one BLAS thread {t2 * 1e3:6.1f} ms ({t0 / t2:5.1f}x)  "
              f"max |w diff| {max(np.abs(w0 - w1).max(), abs(b0 - b1)):.1e}")
    a_set = rng.standard_normal((122, 1024))
    b_set = rng.standard_normal((122, 1024)) + 0.02
    args = (5, 0, 1.0, 1000)  # folds, seed, c, max_per_side: two_sample_test's defaults

    def threaded() -> stats.TwoSample:  # BLAS threads as numpy gives them
        return stats._two_sample_test(a_set, b_set, *args)

    with mock.patch.object(stats, "fit_logistic", primal_fit):
        base = threaded()
        t0 = best_of(threaded, a.repeats)
    t_dual = best_of(threaded, a.repeats)
    ours = stats.two_sample_test(a_set, b_set)
    t1 = best_of(lambda: stats.two_sample_test(a_set, b_set), a.repeats)
    print(f"two_sample_test 122 a side, 5 folds: baseline (primal, threaded BLAS) {t0:.2f} s "
          f"(accuracy {base.accuracy:.4f}); images' space, threaded BLAS {t_dual:.2f} s; ours "
          f"(images' space, one BLAS thread) {t1:.2f} s (accuracy {ours.accuracy:.4f}): "
          f"{t0 / t1:.1f}x")
    print(f"load average after {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
