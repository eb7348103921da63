"""glibc's malloc as it comes vs kept freed heap (the test session's setting, tests/helpers.py
``keep_freed_heap``), on the work the suite does most.

Baseline: glibc's default (it trims the top of its heap whenever 128 KiB is free there). Ours:
``MALLOC_TOP_PAD_`` 64 MiB and ``MALLOC_TRIM_THRESHOLD_`` 1 GiB in the environment. The same
commands in fresh processes, alternated (default, ours, default, ours, ...) so that a change in
the machine's load hits both: a short ``cxraug train`` (smoke-32, 0.4 kimg, realism checks
every epoch, as tests/test_training.py's kimg test) and the CNN probe on 122 images a side.
Prints wall seconds, system seconds, minor page faults and peak memory of each, their medians,
and the load average.

    python benchmarks/malloc.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CNN = ("import numpy as np\nfrom cxraug.probes import cnn\nrng = np.random.default_rng(0)\n"
       "a = rng.integers(0, 256, (122, 64, 64), dtype=np.uint8)\n"
       "b = rng.integers(0, 256, (122, 64, 64), dtype=np.uint8)\n"
       "cnn.cnn_two_sample_test(a, b, epochs=4)\n")


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int, float]:
    """(wall s, system s, minor page faults, peak resident MiB) of one process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if status:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_stime, usage.ru_minflt, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    py = sys.executable
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    base["TF_CPP_MIN_LOG_LEVEL"] = "3"
    kept = {"MALLOC_TOP_PAD_": str(64 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}
    envs = {"glibc default": base, "kept heap (ours)": {**base, **kept}}
    print(f"cores {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        subprocess.run([py, "-m", "cxraug.cli", "demo-data", "--out", str(root / "p"), "--n", "400",
                        "--size", "64", "--seed", "0"], check=True, capture_output=True)
        subprocess.run([py, "-m", "cxraug.cli", "prepare", str(root / "p"), "--csv",
                        str(root / "p" / "Data_Entry_2017.csv"), "--out", str(root / "c.h5"),
                        "--size", "32", "--top-k", "3", "--workers", "1"], check=True,
                       capture_output=True)
        jobs = {
            "train smoke-32 0.4 kimg": lambda out: [
                py, "-m", "cxraug.cli", "train", "--recipe", "smoke-32", "--data",
                str(root / "c.h5"), "--out", out, "--set", "train.kimg=0.4",
                "--set", "train.checkpoint_every=1", "--set", "train.eval_every=1",
                "--set", "train.eval_images=64"],
            "CNN probe 122 a side": lambda out: [py, "-c", CNN],
        }
        for job, cmd in jobs.items():
            results: dict[str, list[tuple[float, float, int, float]]] = {k: [] for k in envs}
            for r in range(a.rounds):
                for name, env in envs.items():
                    out = str(root / f"run-{len(os.listdir(root))}")
                    results[name].append(timed(cmd(out), env))
                    w, s, f, m = results[name][-1]
                    print(f"{job} | {name} | round {r + 1}: {w:6.1f} s wall {s:5.1f} s system "
                          f"{f:>9,} minor faults {m:6.0f} MiB peak", flush=True)
            med = {k: [statistics.median(x[i] for x in v) for i in range(4)]
                   for k, v in results.items()}
            (w0, s0, f0, m0), (w1, s1, f1, m1) = med.values()
            print(f"{job}: median wall {w0:.1f} -> {w1:.1f} s ({w0 / w1:.2f}x), system "
                  f"{s0:.1f} -> {s1:.1f} s, faults {f0:,.0f} -> {f1:,.0f}, peak memory "
                  f"{m0:.0f} -> {m1:.0f} MiB")
    print(f"load average after {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
