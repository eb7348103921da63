"""Training cost of the small-data recipes on this CPU: kimg per CPU-hour against the machine's
FLOP limit, TensorFlow and JAX side by side, in one run.

    python benchmarks/realism_compute.py [--steps 20] [--recipes small-data-64,...]
        [--set model.d_channels=32 ...] [--backends tensorflow,jax]

For each recipe (and backend, each in its own process): the steady-state training step (D update,
G update, EMA, ADA, R1 where the recipe has it; data already in memory; the realism tracker and
checkpoints are not in it) as images/s and kimg per hour, the step's FLOPs (convolutions and dense
layers: forward 1 pass, forward + backward 3) and the achieved GFLOP/s against a large float32
matrix product timed in the same process (the machine's limit). ``--compare-old`` adds the
previous small-data-64 (d_channels 32, bilinear, brightness/contrast augmentation, 16-channel
floor) under the name ``small-data-64@old``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
#: The recipe as it was before the realism issue (issue 20), for the side-by-side row.
OLD_SMALL_DATA = {"model.g_min_channels": 16, "model.d_channels": 32,
                  "model.upsample": "bilinear",
                  "train.diffaugment": ["cutout", "brightness", "contrast"]}


def matmul_gflops(n: int = 2048, repeat: int = 5) -> float:
    """The float32 matrix-product rate of this machine, in numpy (the same BLAS threads)."""
    a = np.random.default_rng(1).standard_normal((n, n)).astype(np.float32)
    b = np.random.default_rng(2).standard_normal((n, n)).astype(np.float32)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeat))
    return 2 * n ** 3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def step_flops(trainer) -> float:
    """FLOPs of one step: fakes for D, D forward+backward on reals and fakes, G and D
    forward+backward for G (R1 adds a second backward through D on the reals)."""
    from cxraug.models import model_flops

    fg, fd = model_flops(trainer.generator), model_flops(trainer.discriminator)
    b, n = trainer.batch_size, trainer.real_batch
    d_update = n * fg + 3 * fd * 2 * n + (2 * fd * n if trainer.needs_real_grads else 0)
    return float(d_update + 3 * fg * b + 3 * fd * b)


def one(recipe_name: str, overrides: dict, steps: int) -> dict:
    """Time one recipe on the backend of this process."""
    import keras

    from cxraug.recipe import load_recipe
    from cxraug.training.backends import make_trainer

    recipe = load_recipe(recipe_name, overrides=overrides)
    trainer = make_trainer(recipe, 15, devices=1)
    rng = np.random.default_rng(0)
    n, size = trainer.real_batch, recipe.model.image_size
    real = rng.uniform(-1, 1, (n, size, size, 1)).astype(np.float32)
    labels = (rng.random((n, 15)) < 0.15).astype(np.float32)

    def sync(out: dict) -> None:
        for v in out.values():
            np.asarray(v)

    start = time.perf_counter()
    for _ in range(3):
        out = trainer.train_step(real, labels)
    sync(out)
    warm = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        out = trainer.train_step(real, labels)
    sync(out)
    step_s = (time.perf_counter() - start) / steps
    flops = step_flops(trainer)
    limit = matmul_gflops()
    return {"backend": keras.backend.backend(), "step_s": step_s,
            "img_per_s": trainer.batch_size / step_s,
            "kimg_per_hour": trainer.batch_size / step_s * 3.6,
            "step_gflop": flops / 1e9, "gflops": flops / step_s / 1e9,
            "matmul_gflops": limit, "ratio": flops / step_s / 1e9 / limit,
            "warmup_s": warm, "g_params": int(trainer.generator.count_params()),
            "d_params": int(trainer.discriminator.count_params())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", default="small-data-64")
    ap.add_argument("--backends", default="tensorflow,jax")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a recipe override for every recipe (JSON values)")
    ap.add_argument("--compare-old", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    if args.child:
        name, extra = json.loads(args.child)
        print("RESULT " + json.dumps(one(name, {**overrides, **extra}, args.steps)))
        return
    jobs = [(name, {}) for name in args.recipes.split(",")]
    if args.compare_old:
        jobs.append(("small-data-64@old", OLD_SMALL_DATA))
    print(f"{'recipe':22s} {'backend':11s} {'img/s':>7s} {'kimg/h':>7s} {'GFLOP/step':>10s} "
          f"{'GFLOP/s':>8s} {'matmul':>7s} {'ratio':>6s} {'G params':>9s} {'D params':>9s}")
    for name, extra in jobs:
        for backend in args.backends.split(","):
            env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=str(ROOT))
            proc = subprocess.run(
                [sys.executable, __file__, "--steps", str(args.steps),
                 *sum((["--set", s] for s in args.set), []),
                 "--child", json.dumps([name.split("@")[0], extra])],
                env=env, capture_output=True, text=True, timeout=3600)
            lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if not lines:
                print(f"{name:22s} {backend:11s} failed: {proc.stderr[-500:]}")
                continue
            r = json.loads(lines[-1][7:])
            print(f"{name:22s} {backend:11s} {r['img_per_s']:7.1f} {r['kimg_per_hour']:7.0f} "
                  f"{r['step_gflop']:10.2f} {r['gflops']:8.1f} {r['matmul_gflops']:7.0f} "
                  f"{r['ratio']:6.2f} {r['g_params']:9d} {r['d_params']:9d}", flush=True)


if __name__ == "__main__":
    main()
