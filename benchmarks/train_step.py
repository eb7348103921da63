"""Training speed: cxraug's GradientTape step against the paper's way, in one run.

Measures, on this machine, real images per second (global batch images / wall second of a
steady-state step, data already in memory; the streamed input pipeline is measured separately):

* ``paper-128`` in cxraug (FastGradConv2D gradient for the 16x16 convolution, half-batch D steps);
* (a) the same architecture and step with TensorFlow's stock gradient;
* (b) the paper's loop as published, made to train under Keras 3: ``train_on_batch`` on D with a
  real and a fake half batch, then on the combined model with D frozen, toggling ``trainable``
  before each call (the benchmark checks that D's weights move in its own step and stay in G's);
* the same pair at 64x64 (8x8 final kernel), where the stock gradient is not pathological;
* ``cxraug-128`` and ``smoke-32`` steps, the FLOP limit of each step against a large fp32 matmul,
  peak memory, and the memory of streaming a cache of N and of 10N images.

At 128x128 a stock-gradient step takes minutes (``Conv2DBackpropFilter`` of the 16x16 kernel is
~150 s per batch of 8 on 2 cores), so (a) and (b) at 128 are timed *with* the fast layer and the
difference of the two kernel gradients is added: the stock op is timed alone on a batch of 1 and
scaled by the batch (it is linear in the batch; ``--stock-batch 8`` times the whole batch), the
fast one on the full batch. ``--full-stock`` times one real stock step of (a) instead (slow).

    python benchmarks/train_step.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _rss_mib() -> float:
    """Peak resident memory of this process so far, MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_gflops(n: int = 2048, repeat: int = 5) -> float:
    import tensorflow as tf

    a = tf.random.normal([n, n], seed=1)
    b = tf.random.normal([n, n], seed=2)
    mm = tf.function(lambda x, y: tf.matmul(x, y))
    mm(a, b).numpy()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        mm(a, b).numpy()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def _recipe(name: str, batch: int, **model: object):
    from cxraug.recipe import load_recipe

    overrides = {"train.batch_size": batch, **{f"model.{k}": v for k, v in model.items()}}
    return load_recipe(name, overrides=overrides)


def time_trainer(recipe, steps: int, num_classes: int = 7) -> dict[str, float]:
    """Steady-state seconds per step of cxraug's TensorFlow trainer (after one warm-up step)."""
    import tensorflow as tf

    from cxraug import models
    from cxraug.training.step_tf import TFTrainer

    trainer = TFTrainer(recipe, num_classes)
    s = recipe.model.image_size
    real = tf.random.uniform([trainer.real_batch, s, s, 1], -1, 1, seed=1)
    labels = tf.constant(np.arange(trainer.real_batch) % num_classes, tf.int32)
    t = time.perf_counter()
    float(trainer.train_step(real, labels)["g_loss"])
    first = time.perf_counter() - t
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        float(trainer.train_step(real, labels)["g_loss"])
        times.append(time.perf_counter() - t)
    step_s = float(np.median(times))
    return {"step_s": step_s, "img_per_s": recipe.train.batch_size / step_s,
            "first_step_s": first, "g_flops": models.model_flops(trainer.generator),
            "d_flops": models.model_flops(trainer.discriminator)}


def time_paper_keras_loop(recipe, steps: int, num_classes: int = 7) -> dict[str, float]:
    """(b): the paper's train_on_batch loop, corrected for Keras 3 by toggling ``trainable``."""
    import keras

    from cxraug import models

    keras.utils.set_random_seed(0)
    cfg = recipe.model
    g = models.build_generator(cfg, num_classes)
    d = models.build_discriminator(cfg, num_classes)
    bce = keras.losses.BinaryCrossentropy(from_logits=True)  # = the paper's sigmoid + BCE
    d.compile(optimizer=keras.optimizers.Adam(2e-4, beta_1=0.5), loss=bce)
    z_in = keras.Input((cfg.latent_dim,), name="z")
    y_in = keras.Input((), dtype="int32", name="label")
    def ordered(model: keras.Model, named: dict) -> list:
        """The model's inputs in its own order (it may have been built from a list)."""
        return [named[t.name] for t in model.inputs]

    gan = keras.Model([z_in, y_in], d(ordered(d, {"image": g(ordered(g, {"z": z_in,
                                                                          "label": y_in})),
                                                   "label": y_in})))
    gan.compile(optimizer=keras.optimizers.Adam(2e-4, beta_1=0.5), loss=bce)
    b = recipe.train.batch_size
    half = b // 2
    rng = np.random.default_rng(0)
    s = cfg.image_size
    reals = rng.uniform(-1, 1, (half, s, s, 1)).astype(np.float32)
    real_labels = (np.arange(half) % num_classes).astype(np.int32)

    def step() -> np.ndarray:
        """One step as in the paper; returns D's first kernel right after D's own updates."""
        z = rng.standard_normal((half, cfg.latent_dim)).astype(np.float32)
        fake_labels = rng.integers(0, num_classes, half).astype(np.int32)
        fakes = g.predict_on_batch(ordered(g, {"z": z, "label": fake_labels}))
        d.trainable = True
        d.train_on_batch(ordered(d, {"image": reals, "label": real_labels}), np.ones((half, 1)))
        d.train_on_batch(ordered(d, {"image": fakes, "label": fake_labels}),
                         np.zeros((half, 1)))
        d_after = d.weights[0].numpy().copy()
        d.trainable = False
        z = rng.standard_normal((b, cfg.latent_dim)).astype(np.float32)
        gan.train_on_batch([z, rng.integers(0, num_classes, b).astype(np.int32)],
                           np.ones((b, 1)))
        return d_after

    d0 = d.weights[0].numpy().copy()
    g0 = g.trainable_weights[0].numpy().copy()
    t = time.perf_counter()
    d_after = step()
    first = time.perf_counter() - t
    d_moves = not np.array_equal(d0, d_after)
    d_frozen_in_g = np.array_equal(d_after, d.weights[0].numpy())
    g_moves = not np.array_equal(g0, g.trainable_weights[0].numpy())
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    step_s = float(np.median(times))
    return {"step_s": step_s, "img_per_s": b / step_s, "first_step_s": first,
            "d_weights_move": d_moves, "d_frozen_in_g_step": d_frozen_in_g,
            "g_weights_move": g_moves}


def filter_grad_times(size: int, batch: int, stock_batch: int) -> dict[str, float]:
    """Kernel gradient of the paper's final S/8 convolution: stock op vs FastGradConv2D's."""
    import tensorflow as tf

    from cxraug.models.layers import fast_grad_conv2d

    k, c = size // 8, 128
    rng = np.random.default_rng(0)
    w = tf.constant(rng.normal(scale=0.01, size=(k, k, c, 1)).astype(np.float32))

    def fast(x: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            tape.watch(w)
            y = fast_grad_conv2d(x, w, padding="SAME")
        return tape.gradient(y, w)

    fast_fn = tf.function(fast)
    x = tf.constant(rng.normal(size=(batch, size, size, c)).astype(np.float32))
    fast_fn(x).numpy()
    t = time.perf_counter()
    fast_fn(x).numpy()
    fast_s = time.perf_counter() - t
    xs = tf.constant(rng.normal(size=(stock_batch, size, size, c)).astype(np.float32))
    dy = tf.ones([stock_batch, size, size, 1])
    t = time.perf_counter()
    tf.raw_ops.Conv2DBackpropFilter(input=xs, filter_sizes=[k, k, c, 1], out_backprop=dy,
                                    strides=[1, 1, 1, 1], padding="SAME").numpy()
    stock_s = (time.perf_counter() - t) * batch / stock_batch
    return {"fast_s": fast_s, "stock_s": stock_s, "stock_measured_batch": stock_batch}


def _write_cache(path: Path, n: int, size: int) -> None:
    """A synthetic cache in the contract's layout, written with h5py in chunks."""
    import h5py

    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        images = f.create_dataset("images", (n, size, size), np.uint8, chunks=(1, size, size))
        for start in range(0, n, 1000):
            stop = min(n, start + 1000)
            images[start:stop] = rng.integers(0, 256, (stop - start, size, size), np.uint8)
        labels = (np.arange(n) % 7).astype(np.int16)
        f["label"] = labels
        f["multi_hot"] = np.eye(7, dtype=np.uint8)[labels]
        f["patient_id"] = np.arange(n, dtype=np.int64)
        f.create_dataset("image_index", data=[f"{i:08d}_000.png" for i in range(n)],
                         dtype=h5py.string_dtype())
        f["split"] = np.zeros(n, np.uint8)
        f.attrs.update({"format": "cxraug-cache-1", "class_names": json.dumps(
            [f"c{i}" for i in range(7)]), "size": size, "multi_label": "drop",
            "split_names": json.dumps(["train", "val", "test"]), "fingerprint": f"bench{n}"})


_STREAM = """
import sys, time
def hwm():  # this process's peak RSS (VmHWM starts afresh at exec, unlike ru_maxrss)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
from cxraug.training.dataset import CacheDataset
import tensorflow as tf
ds = CacheDataset(sys.argv[1], batch_size=64, seed=0)
base = hwm()
t = time.perf_counter(); n = 0
for images, labels in ds.dataset(0):
    n += int(images.shape[0])
dt = time.perf_counter() - t
print(n, dt, base, hwm())
"""


def stream_memory(n: int, size: int) -> list[dict[str, float]]:
    """Peak RSS of streaming one epoch of a cache of N and of 10N images (fresh processes)."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for count in (n, 10 * n):
            path = Path(tmp) / f"cache{count}.h5"
            _write_cache(path, count, size)
            res = subprocess.run([sys.executable, "-c", _STREAM, str(path)], capture_output=True,
                                 text=True, check=True, env={**os.environ,
                                                             "TF_CPP_MIN_LOG_LEVEL": "3"})
            images, secs, base, peak = res.stdout.split()[-4:]
            out.append({"images": int(images), "cache_mib": path.stat().st_size / 2**20,
                        "stream_s": float(secs), "rss_before_stream_mib": float(base),
                        "peak_rss_mib": float(peak),
                        "float32_in_ram_mib": count * size * size * 4 / 2**20})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    ap.add_argument("--batch128", type=int, default=8, help="batch of the 128x128 paper steps")
    ap.add_argument("--batch64", type=int, default=32)
    ap.add_argument("--stock-batch", type=int, default=1)
    ap.add_argument("--full-stock", action="store_true", help="time one real stock step of (a)")
    ap.add_argument("--stream-n", type=int, default=1000)
    ap.add_argument("--quick", action="store_true", help="skip cxraug-128 and the memory test")
    ap.add_argument("--memory-only", action="store_true", help="only the streaming memory test")
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    started = time.perf_counter()
    if args.memory_only:
        print(json.dumps(stream_memory(args.stream_n, 128)))
        return
    res: dict[str, object] = {"cpus": os.cpu_count(), "load_avg_start": os.getloadavg()}
    res["matmul_gflops"] = gflops = matmul_gflops()
    print(f"fp32 matmul: {gflops:.0f} GFLOP/s", flush=True)

    def report(name: str, r: dict[str, float], half: bool) -> None:
        # FLOPs per image of the batch: forward = 1x, forward + backward = 3x per network pass.
        # Half batches: G fwd on B/2 + G fwd/bwd on B; D fwd/bwd on B/2 + B/2 + B. Otherwise
        # G fwd on B + fwd/bwd on B; D fwd/bwd on 2B + B. The matmul rate is measured again
        # right after the configuration, because other work on the machine changes it.
        gf, df = r["g_flops"], r["d_flops"]
        per_img = (3.5 * gf + 6 * df) if half else (4 * gf + 9 * df)
        rate = r["matmul_gflops"] = matmul_gflops(repeat=3)
        r["step_gflop_per_img"] = per_img / 1e9
        r["flop_limit_img_per_s"] = rate * 1e9 / per_img
        print(f"{name}: {r['img_per_s']:.2f} img/s (step {r['step_s']:.2f} s; FLOP limit "
              f"{r['flop_limit_img_per_s']:.2f} img/s at {per_img / 1e9:.2f} GFLOP/img and "
              f"{rate:.0f} GFLOP/s)", flush=True)

    # ------------------------------------------------------------------- 128x128, paper
    b128 = args.batch128
    fast128 = time_trainer(_recipe("paper-128", b128), args.steps)
    report("paper-128 cxraug (fast grad)", fast128, half=True)
    fg = filter_grad_times(128, b128, args.stock_batch)
    print(f"16x16 kernel gradient, batch {b128}: stock {fg['stock_s']:.1f} s (timed on batch "
          f"{args.stock_batch}), fast {fg['fast_s']:.3f} s", flush=True)
    extra = fg["stock_s"] - fg["fast_s"]  # one G backward per step in both loops
    if args.full_stock:
        stock128 = time_trainer(_recipe("paper-128", b128, fast_conv_grad=False), 1)
        stock_step = stock128["step_s"]
    else:
        stock_step = fast128["step_s"] + extra
    res["paper128_fast"], res["filter_grad_128"] = fast128, fg
    res["paper128_stock_a"] = {"step_s": stock_step, "img_per_s": b128 / stock_step,
                               "measured": "full step" if args.full_stock else
                               "fast step + (stock - fast) kernel gradient"}
    print(f"(a) paper-128 stock gradient: {b128 / stock_step:.3f} img/s", flush=True)
    keras128 = time_paper_keras_loop(_recipe("paper-128", b128), args.steps)
    keras128["step_s_with_stock"] = keras128["step_s"] + extra
    keras128["img_per_s_with_stock"] = b128 / keras128["step_s_with_stock"]
    res["paper128_keras_b"] = keras128
    print(f"(b) paper loop 128 (train_on_batch): {keras128['img_per_s_with_stock']:.3f} img/s "
          f"(its Keras loop with the fast layer: {keras128['img_per_s']:.2f} img/s); D moves "
          f"{keras128['d_weights_move']}, D frozen in G step {keras128['d_frozen_in_g_step']}, "
          f"G moves {keras128['g_weights_move']}", flush=True)
    # -------------------------------------------------------------------- 64x64, paper
    b64 = args.batch64
    fast64 = time_trainer(_recipe("paper-128", b64, image_size=64), args.steps)
    report("paper-64 cxraug (fast grad)", fast64, half=True)
    keras64 = time_paper_keras_loop(_recipe("paper-128", b64, image_size=64,
                                            fast_conv_grad=False), args.steps)
    res["paper64_fast"], res["paper64_keras_b"] = fast64, keras64
    print(f"(b) paper loop 64 (stock gradient): {keras64['img_per_s']:.2f} img/s; D moves "
          f"{keras64['d_weights_move']}", flush=True)
    # -------------------------------------------------------------------- other recipes
    smoke = time_trainer(_recipe("smoke-32", 32), args.steps)
    report("smoke-32", smoke, half=False)
    res["smoke32"] = smoke
    if not args.quick:
        cx = time_trainer(_recipe("cxraug-128", 16), args.steps)
        report("cxraug-128 (batch 16)", cx, half=False)
        res["cxraug128"] = cx
    res["peak_rss_mib"] = _rss_mib()
    if not args.quick:
        res["stream_memory"] = mem = stream_memory(args.stream_n, 128)
        for m in mem:
            print(f"stream {m['images']} images ({m['cache_mib']:.0f} MiB cache): peak RSS "
                  f"{m['peak_rss_mib']:.0f} MiB (before streaming "
                  f"{m['rss_before_stream_mib']:.0f}); "
                  f"in RAM as float32 it would add {m['float32_in_ram_mib']:.0f} MiB", flush=True)
    ratios = {
        "128: cxraug vs (a) stock gradient": fast128["img_per_s"] / res["paper128_stock_a"][
            "img_per_s"],
        "128: cxraug vs (b) paper loop": fast128["img_per_s"] / keras128["img_per_s_with_stock"],
        "64: cxraug vs (b) paper loop": fast64["img_per_s"] / keras64["img_per_s"],
    }
    res["ratios"] = ratios
    res["devices"] = [d.name for d in tf.config.list_logical_devices()]
    res["load_avg_end"] = os.getloadavg()
    res["wall_s"] = time.perf_counter() - started
    print("ratios: " + "; ".join(f"{k} {v:.1f}x" for k, v in ratios.items()))
    print(f"peak RSS {res['peak_rss_mib']:.0f} MiB; total {res['wall_s']:.0f} s; load average "
          f"{res['load_avg_start'][0]:.1f} -> {res['load_avg_end'][0]:.1f}")
    print(json.dumps(res, default=str))


if __name__ == "__main__":
    main()
