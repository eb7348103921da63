"""Training on a GPU with Keras on JAX: images/s, share of the chip's bf16 peak, and a check that
a short GPU run computes what the CPU computes. One prepared script for the lent GPU machine
(one H200, JAX with CUDA, no TensorFlow), sized to finish in under 8 minutes there.

    KERAS_BACKEND=jax python benchmarks/gpu.py [--out results.json] [--peak-tflops 790]

On the lent H200 (Python 3.12, JAX with CUDA 13, no Keras there): carry Keras and the two
packages it needs that the machine lacks, as wheels in ``.whl/`` (ignored by git)::

    python -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 -d .whl keras==3.15.1 namex optree

and run (device tool, ``carry: [".whl"]``, ``timeout_s`` 560)::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit; \
    KERAS_BACKEND=jax PYTHONUNBUFFERED=1 timeout 500 python3 benchmarks/gpu.py \
      --out $OUT/gpu.json 2>&1 | tee $OUT/gpu.log

What it measures, in one run:

* for ``cxraug-128`` and ``paper-128`` at 128x128 (the recipes as shipped; ``--recipes``), the
  whole jitted training step (D update, G update, EMA, ADA: :class:`JaxTrainer`) with XLA and
  bfloat16 compute (``train.mixed_precision``; float32 weights), at two batch sizes
  (``--batches 64,256``): steady-state images/s (real images per second, the batch already on the
  device; timed with ``block_until_ready`` after two warm-up steps, best of ``--repeats``);
* the step's FLOPs from the networks' convolution and dense layers (``models.model_flops``:
  2 x multiply-adds per image) times the passes a step makes (forward = 1, forward + backward =
  3: G on the fakes for D, D forward+backward on reals and fakes, G and D forward+backward for G),
  and its share of the bf16 peak (``--peak-tflops``, an H200's ~790 dense);
* a short run (``--check-steps`` steps of ``small-data-64`` in float32, same seed and batches) on
  the GPU and on the CPU: the per-step losses must agree within noise (first step within 1%, the
  last half's mean within the CPU run's own step-to-step spread);
* the reference: StyleGAN2-ADA's default config, ~147 img/s at 128x128 on one A100 (its README:
  6.79 s/kimg).

Without a GPU it still runs (``--quick``: smoke-32, small batches) so the script is checked here;
the numbers then say so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

STYLEGAN2_ADA_A100 = 147.0  # img/s at 128x128, its README's 6.79 s/kimg


def step_flops(trainer) -> float:
    """FLOPs of one training step (see the module docstring)."""
    from cxraug.models import model_flops

    fg, fd = model_flops(trainer.generator), model_flops(trainer.discriminator)
    b, n = trainer.batch_size, trainer.real_batch
    d_update = n * fg + 3 * fd * 2 * n  # fakes made, D on reals + fakes (both half steps alike)
    g_update = 3 * fg * b + 3 * fd * b
    return float(d_update + g_update)


def _batch(trainer, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n, size = trainer.real_batch, trainer.recipe.model.image_size
    real = rng.uniform(-1, 1, (n, size, size, 1)).astype(np.float32)
    if trainer.label_mode == "multi-hot":
        labels = (rng.random((n, trainer.num_classes)) < 0.2).astype(np.float32)
    else:
        labels = rng.integers(0, trainer.num_classes, n).astype(np.int32)
    return real, labels


def time_steps(name: str, batch: int, steps: int, repeats: int, bf16: bool) -> dict:
    import jax

    from cxraug.recipe import load_recipe
    from cxraug.training.step_jax import JaxTrainer

    recipe = load_recipe(name, overrides={"train.batch_size": batch,
                                          "train.mixed_precision": bf16})
    t0 = time.perf_counter()
    trainer = JaxTrainer(recipe, num_classes=14 if trainer_multi(recipe) else 7, devices=1)
    real, labels = _batch(trainer, np.random.default_rng(0))
    device = jax.devices()[0]
    real, labels = jax.device_put(real, device), jax.device_put(labels, device)
    for _ in range(2):  # compile + one more warm-up step
        out = trainer.train_step(real, labels)
    jax.block_until_ready(out)
    compile_s = time.perf_counter() - t0
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            out = trainer.train_step(real, labels)
        jax.block_until_ready((out, trainer.state))
        best = min(best, (time.perf_counter() - start) / steps)
    flops = step_flops(trainer)
    losses = {k: float(v) for k, v in out.items()}
    return {"recipe": name, "batch": batch, "bf16": bf16, "step_s": best,
            "image_size": recipe.model.image_size,
            "img_per_s": trainer.real_batch / best, "step_tflop": flops / 1e12,
            "achieved_tflops": flops / best / 1e12, "build_compile_s": compile_s,
            "finite": all(np.isfinite(v) for v in losses.values()), "losses": losses}


def trainer_multi(recipe) -> bool:
    return recipe.model.label_mode == "multi-hot"


def short_run(name: str, steps: int, batch: int, device_kind: str) -> list[dict[str, float]]:
    """Per-step losses of a float32 run on one device kind (``gpu`` or ``cpu``)."""
    import jax

    from cxraug.recipe import load_recipe
    from cxraug.training.step_jax import JaxTrainer

    device = jax.devices(device_kind)[0]
    recipe = load_recipe(name, overrides={"train.batch_size": batch})
    with jax.default_device(device):
        import keras

        keras.utils.set_random_seed(0)
        trainer = JaxTrainer(recipe, num_classes=14 if trainer_multi(recipe) else 7, devices=1)
        trainer.state = jax.device_put(trainer.state, device)
        rng = np.random.default_rng(1)
        rows = []
        for _ in range(steps):
            real, labels = _batch(trainer, rng)
            out = trainer.train_step(jax.device_put(real, device), jax.device_put(labels, device))
            rows.append({k: float(v) for k, v in out.items()})
    return rows


def compare_runs(gpu: list[dict], cpu: list[dict]) -> dict:
    """First step within 1%; the last half's mean within the CPU run's step-to-step spread."""
    out = {}
    for key in ("d_loss", "g_loss"):
        g = np.array([r[key] for r in gpu])
        c = np.array([r[key] for r in cpu])
        half = len(c) // 2
        spread = float(np.std(np.diff(c[half:]))) if len(c) > 3 else float("nan")
        first = abs(g[0] - c[0]) / max(abs(c[0]), 1e-6)
        late = abs(float(np.mean(g[half:]) - np.mean(c[half:])))
        out[key] = {"first_step_rel_diff": float(first), "late_mean_diff": late,
                    "cpu_step_spread": spread,
                    "ok": bool(first < 0.01 and late <= max(spread, 1e-3))}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", default="cxraug-128,paper-128")
    parser.add_argument("--batches", default="64,256")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=790.0,
                        help="the chip's dense bf16 peak (H200: ~790)")
    parser.add_argument("--check-recipe", default="small-data-64")
    parser.add_argument("--check-steps", type=int, default=20)
    parser.add_argument("--check-batch", type=int, default=32)
    parser.add_argument("--quick", action="store_true",
                        help="smoke-32 at small batches (to check the script without a GPU)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON")
    args = parser.parse_args()
    import jax
    import keras

    if args.quick:
        args.recipes, args.batches, args.steps, args.repeats = "smoke-32", "8,16", 3, 1
        args.check_recipe, args.check_steps, args.check_batch = "smoke-32", 6, 8
    gpus = [d for d in jax.devices() if d.platform == "gpu"]
    started = time.perf_counter()
    print(f"jax {jax.__version__}, keras {keras.__version__}, backend "
          f"{keras.backend.backend()}; devices: {jax.devices()} ({jax.devices()[0].device_kind});"
          f" python {platform.python_version()}", flush=True)
    if not gpus:
        print("no GPU: these numbers are CPU numbers (the peak share is meaningless)", flush=True)
    rows = []
    for name in args.recipes.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            row = time_steps(name, batch, args.steps, args.repeats, bf16=bool(gpus))
            row["peak_share"] = row["achieved_tflops"] / args.peak_tflops
            rows.append(row)
            versus = (f" ({row['img_per_s'] / STYLEGAN2_ADA_A100:.2f}x StyleGAN2-ADA's 128x128 "
                      "config on an A100)" if row["image_size"] == 128 else "")
            print(f"{name:12s} batch {batch:4d} {'bf16' if row['bf16'] else 'fp32'}: "
                  f"{row['img_per_s']:9.1f} img/s{versus}, step {row['step_s'] * 1e3:.1f} ms, "
                  f"{row['step_tflop']:.3f} TFLOP/step, {row['achieved_tflops']:.1f} TFLOP/s = "
                  f"{row['peak_share']:.1%} of {args.peak_tflops:.0f}; build+compile "
                  f"{row['build_compile_s']:.0f} s; finite {row['finite']}", flush=True)
    check = None
    if gpus or args.quick:
        kind = "gpu" if gpus else "cpu"
        first = short_run(args.check_recipe, args.check_steps, args.check_batch, kind)
        cpu = short_run(args.check_recipe, args.check_steps, args.check_batch, "cpu")
        check = compare_runs(first, cpu)
        for key, c in check.items():
            print(f"{kind} vs cpu, {args.check_recipe} float32, {args.check_steps} steps, {key}: "
                  f"first step rel diff {c['first_step_rel_diff']:.2e}, last-half mean diff "
                  f"{c['late_mean_diff']:.4f} vs the CPU's step-to-step spread "
                  f"{c['cpu_step_spread']:.4f}: {'ok' if c['ok'] else 'NOT within noise'}",
                  flush=True)
    print(f"total {time.perf_counter() - started:.0f} s", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "check": check,
                                        "devices": [str(d) for d in jax.devices()]}, indent=2))
    ok = all(r["finite"] for r in rows) and (check is None or all(c["ok"] for c in
                                                                    check.values()))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
