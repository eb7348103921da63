"""Where the CPU training step's time goes: every convolution and dense layer of G and D timed on
its own (forward, and forward + both gradients), against the whole step and a large MatMul, all
measured in the same run.

Each layer with FLOPs (``cxraug.models.model_flops``) is called alone under ``tf.function`` on a
random input of its own shape at the step's batch, forward and then forward + the gradients of
its input and its weights (what the step needs of it: 3x the forward FLOPs). The sum over layers
is the time the arithmetic layers need; the whole step (``TFTrainer.train_step``, as
``benchmarks/train_step.py`` times it) minus the layers' share is what everything else costs
(batch norm, activations, DiffAugment, the optimizers, TensorFlow's own overhead). The slowest
layers per FLOP are listed.

    python benchmarks/train_step_profile.py [--recipe paper-128] [--batch 8] [--top 6]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))



def best_seconds(fn, repeat: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def layer_times(model, batch: int, repeat: int) -> list[dict]:
    """Forward and forward+backward seconds of each arithmetic layer of ``model`` at ``batch``."""
    import tensorflow as tf

    from cxraug.models import _layer_flops

    rows = []
    for layer in model.layers:
        flops = _layer_flops(layer)
        if not flops:
            continue
        shape = [batch, *tuple(layer.input.shape)[1:]]
        x = tf.random.normal(shape, seed=1)
        weights = layer.trainable_variables

        @tf.function
        def forward(x=x, layer=layer):
            return layer(x)

        @tf.function
        def both(x=x, layer=layer, weights=weights):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x)
                loss = tf.reduce_sum(y * y)
            return tape.gradient(loss, [x, *weights])

        fwd = best_seconds(lambda f=forward: tf.nest.map_structure(lambda t: t.numpy(), f()),
                           repeat)
        fb = best_seconds(lambda f=both: [t.numpy() for t in f() if t is not None], repeat)
        kernel = getattr(layer, "kernel_size", None)
        rows.append({"name": f"{model.name}/{layer.name}", "kind": type(layer).__name__,
                     "kernel": "x".join(map(str, kernel)) if kernel else "-",
                     "shape": "x".join(map(str, shape[1:])), "flops": flops * batch,
                     "fwd_s": fwd, "fb_s": fb})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="paper-128")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--top", type=int, default=6)
    args = parser.parse_args()

    import tensorflow as tf
    from train_step import _recipe, matmul_gflops, time_trainer

    recipe = _recipe(args.recipe, args.batch)
    mm_before = matmul_gflops()
    step = time_trainer(recipe, args.steps)
    from cxraug.training.step_tf import TFTrainer

    trainer = TFTrainer(recipe, 7)
    half = trainer.half
    rows = (layer_times(trainer.generator, args.batch, args.repeat)
            + layer_times(trainer.discriminator, trainer.real_batch, args.repeat))
    mm = (mm_before + matmul_gflops()) / 2 * 1e9
    # what the step asks of each network (as benchmarks/train_step.py counts it): G forward +
    # backward once, D forward + backward on real and fake (twice with half batches) and once more
    # for G's loss; in FLOPs: 3.5 G + 6 D forwards per image (half batches), 4 G + 9 D otherwise
    g_rows = [r for r in rows if r["name"].startswith(trainer.generator.name + "/")]
    d_rows = [r for r in rows if r not in g_rows]
    g_fb = sum(r["fb_s"] for r in g_rows)
    g_f = sum(r["fwd_s"] for r in g_rows)
    d_fb = sum(r["fb_s"] for r in d_rows)  # at the real half batch (or the batch)
    if half:   # D fwd+bwd on real half, fake half; G step: D fwd+bwd on a full batch (2 halves)
        layers_s = g_fb + g_f + 4 * d_fb
    else:      # D fwd+bwd on real and fake batches, then on G's batch
        layers_s = g_fb + g_f + 3 * d_fb
    step_flops = args.batch * ((3.5 * step["g_flops"] + 6 * step["d_flops"]) if half
                               else (4 * step["g_flops"] + 9 * step["d_flops"]))
    limit_s = step_flops / mm
    print(f"{args.recipe}, batch {args.batch}, tensorflow {tf.__version__}: MatMul "
          f"{mm / 1e9:.0f} GFLOP/s (before {mm_before:.0f})")
    print(f"step {step['step_s']:.3f} s ({args.batch / step['step_s']:.2f} img/s); FLOP limit "
          f"{limit_s:.3f} s: ratio {limit_s / step['step_s']:.3f}")
    print(f"the arithmetic layers alone, as often as the step runs them: {layers_s:.3f} s "
          f"({layers_s / step['step_s']:.1%} of the step; {limit_s / layers_s:.3f} of the MatMul "
          f"rate); everything else: {step['step_s'] - layers_s:.3f} s "
          f"({1 - layers_s / step['step_s']:.1%})")
    print(f"\n{'layer':38s} {'kind':16s} {'kernel':>6s} {'input':>12s} {'fwd+bwd s':>9s} "
          f"{'GFLOP/s':>8s} {'of MM':>6s}")
    for r in sorted(rows, key=lambda r: -r["fb_s"])[:args.top]:
        gfs = 3 * r["flops"] / r["fb_s"] / 1e9
        print(f"{r['name'][:38]:38s} {r['kind'][:16]:16s} {r['kernel']:>6s} {r['shape']:>12s} "
              f"{r['fb_s']:9.4f} {gfs:8.1f} {gfs * 1e9 / mm:6.2f}")


if __name__ == "__main__":
    main()
