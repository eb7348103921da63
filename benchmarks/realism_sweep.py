"""Which recipe changes make real-looking chest X-rays: train variants side by side, then measure
every checkpoint of each with every realism probe against held-out real patients.

    python benchmarks/realism_sweep.py --data nih64.h5 --out W [--minutes 5] [--parallel 8]
        [--variants base,g32,...] [--backend jax]

Phase 1 trains each variant of ``small-data-64`` (:data:`VARIANTS`: recipe overrides) with
``cxraug train`` in its own process, all at once (``--parallel``), for ``--minutes`` each,
keeping a checkpoint every ``--ckpt-kimg`` kimg; the realism tracker (val split) picks each run's
best checkpoint as in a normal run. Phase 2 measures every kept checkpoint of every run against
the cache's **test** split (held-out patients; measuring only, nothing is chosen by it): each test
image gets a synthetic image drawn with its own labels, and the probe battery
(:mod:`cxraug.probes.battery`) compares the two sets, beside the same battery between as many
training images and the test images (two sets of real patients). Phase 3 prints one table
(variant, kimg, probes, gap; ``*`` marks the checkpoint the val tracker chose) and writes
``results.json``, a side-by-side grid (real test images | the variant's best checkpoint) per
variant, and each best checkpoint's generator weights as a small run folder (``export-onnx``
reads it), packed in ``best_runs.tar``.

On the lent GPU machine (JAX, no TensorFlow; Keras carried as wheels as in benchmarks/gpu.py) the
runs share the one GPU; ``--minutes`` is wall time per run, so kimg per variant depends on how
many share it. Quality per kimg is what transfers to a CPU run; ``benchmarks/realism_compute.py``
gives the CPU's kimg per hour of each variant.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: Recipe overrides over small-data-64, one variant each (one change at a time against base or
#: against g32, the first change).
_C: dict[str, object] = {"model.g_min_channels": 32, "model.d_channels": 16,
                         "train.diffaugment": ["cutout"]}
VARIANTS: dict[str, dict[str, object]] = {
    "base": {},
    "g32": {"model.g_min_channels": 32},
    "g32_d16": {"model.g_min_channels": 32, "model.d_channels": 16},
    "g32_cutout": {"model.g_min_channels": 32, "train.diffaugment": ["cutout"]},
    "g32_ema999": {"model.g_min_channels": 32, "train.ema_decay": 0.999},
    "g32_nearest": {"model.g_min_channels": 32, "model.upsample": "nearest"},
    "g256_32": {"model.g_channels": 256, "model.g_min_channels": 32},
    "g32_bce": {"model.g_min_channels": 32, "train.loss": "bce"},
    # round 2 (after round 1: ADA's p sat at 1 with D overfitting, r_t ~0.97; brightness and
    # contrast augmentation always on let G's contrast drift; a smaller D and cutout alone were
    # the two best): "c" = g32 + d16 + cutout only, then one change each
    "c": {**_C},
    "c_tr": {**_C, "train.diffaugment": ["translation", "cutout"]},
    "c_r1": {**_C, "train.loss": "bce", "train.r1_gamma": 0.1},
    "c_tr_r1": {**_C, "train.diffaugment": ["translation", "cutout"], "train.loss": "bce",
                "train.r1_gamma": 0.1},
    "c_nearest": {**_C, "model.upsample": "nearest"},
    "c_dlr": {**_C, "train.d_lr": 2e-4},
    "c_g64": {**_C, "model.g_min_channels": 64},
    "c_tr_fixed": {**_C, "train.diffaugment": ["translation", "cutout"], "train.ada_target": 0.0},
}


def _toml(value: object) -> str:
    from cxraug.recipe import _toml_value

    return _toml_value(value)


def write_recipe(path: Path, overrides: dict[str, object], minutes: float, ckpt_epochs: int,
                 eval_epochs: int) -> None:
    from cxraug.recipe import load_recipe

    sweep = {"train.kimg": 5000.0, "train.minutes": float(minutes),
             "train.checkpoint_every": ckpt_epochs, "train.keep_checkpoints": 200,
             "train.sample_every": ckpt_epochs, "train.eval_every": eval_epochs}
    recipe = load_recipe("small-data-64", overrides={**overrides, **sweep})
    recipe.name = path.stem
    path.write_text(recipe.to_toml(), encoding="utf-8")


def train_all(args: argparse.Namespace, names: list[str]) -> dict[str, float]:
    """Phase 1: every variant in its own ``cxraug train`` process, ``--parallel`` at a time."""
    from cxraug.recipe import load_recipe

    spe = load_recipe("small-data-64").train.steps_per_epoch
    batch = load_recipe("small-data-64").train.batch_size
    epoch_kimg = spe * batch / 1000
    ckpt_epochs = max(1, round(args.ckpt_kimg / epoch_kimg))
    eval_epochs = max(1, round(args.eval_kimg / epoch_kimg)) if args.eval_kimg > 0 else 0
    (args.out / "recipes").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, KERAS_BACKEND=args.backend, XLA_PYTHON_CLIENT_PREALLOCATE="false",
               OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads),
               MKL_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    pending, running, seconds = list(names), {}, {}
    while pending or running:
        while pending and len(running) < args.parallel:
            name = pending.pop(0)
            recipe = args.out / "recipes" / f"{name}.toml"
            write_recipe(recipe, VARIANTS[name], args.minutes, ckpt_epochs, eval_epochs)
            log = open(args.out / f"train_{name}.log", "w")  # closed below
            cmd = [sys.executable, "-m", "cxraug.cli", "train", "--data", str(args.data),
                   "--out", str(args.out / "runs" / name), "--recipe", str(recipe)]
            running[name] = (subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT),
                             log, time.time())
            print(f"train {name}: started", flush=True)
        for name, (proc, log, started) in list(running.items()):
            if proc.poll() is not None:
                log.close()
                seconds[name] = time.time() - started
                print(f"train {name}: exit {proc.returncode} after {seconds[name]:.0f} s",
                      flush=True)
                if proc.returncode:
                    print((args.out / f"train_{name}.log").read_text()[-3000:], flush=True)
                del running[name]
        time.sleep(2)
    return seconds


def _spread(entries: list[dict], most: int) -> list[dict]:
    """At most ``most`` checkpoints evenly spread over the run, the best one always among them."""
    best = [e for e in entries if e.get("reason") == "best"]
    rest = [e for e in entries if e.get("reason") != "best"]
    if len(rest) > most:
        rest = [rest[round(i)] for i in np.linspace(0, len(rest) - 1, most)]
    return best + rest  # the best first: measured even when a deadline cuts the rest


def measure_run(run: Path, data: Path, out: Path, cnn_epochs: int, max_measured: int) -> None:
    """Phase 2 for one run: every checkpoint against the test split (a child process)."""
    from cxraug.contract import inputs_for, label_mode_of
    from cxraug.data.cache import CacheReader
    from cxraug.grid import to_uint8
    from cxraug.near_copy import NearCopyReference
    from cxraug.probes.battery import realism_gap, run_probes, summarize, worst
    from cxraug.probes.stats import diversity_ratio, thumbnails
    from cxraug.training.run import load_generator, read_checkpoint_index

    with CacheReader(data) as reader:
        split = np.asarray(reader.split)
        test_rows = np.flatnonzero(split == "test")
        train_rows = np.flatnonzero(split == "train")
        val_rows = np.flatnonzero(split == "val")
        test = np.asarray(reader.read(test_rows))
        train = np.asarray(reader.read(train_rows))
        labels = np.asarray(reader.multi_hot)[test_rows].astype(np.float32)
        heldout_for_copies = np.asarray(reader.read(np.concatenate([val_rows, test_rows])))
    rng = np.random.default_rng(0)
    ref = summarize(test)
    pick = np.sort(rng.choice(len(train), len(test), replace=False))
    real = run_probes(train[pick], ref, cnn_epochs=cnn_epochs)
    copy_rule = NearCopyReference.fit(train, heldout_for_copies)  # the one near-copy rule
    entries = read_checkpoint_index(run)
    rows = []
    generator = None
    for entry in _spread(sorted(entries, key=lambda e: e["step"]), max_measured):
        loaded = load_generator(run, entry["name"]) if generator is None else None
        if loaded is not None:
            generator = loaded
        else:
            from cxraug.training.jax_checkpoint import SUFFIX, load_generator_weights
            from cxraug.training.run import checkpoint_prefix

            load_generator_weights(generator.model, Path(checkpoint_prefix(run, entry) + SUFFIX),
                                   generator.ema)
        z = rng.standard_normal((len(labels), generator.recipe.model.latent_dim)).astype(
            np.float32)
        inputs = inputs_for(label_mode_of(generator.recipe.model), z, labels)
        images = to_uint8(np.asarray(generator.model(inputs, training=False)))
        probes = run_probes(images, ref, cnn_epochs=cnn_epochs)
        for name, p in probes.items():
            p.real, p.real_score = real[name].value, real[name].score
        syn_t = thumbnails(images)
        rows.append({"checkpoint": entry["name"], "reason": entry.get("reason"),
                     "step": entry["step"],
                     "kimg": entry["step"] * generator.recipe.train.batch_size / 1000,
                     "realism_gap": realism_gap(probes), "worst": worst(probes),
                     "probes": {k: p.value for k, p in probes.items()},
                     "near_copy": float(copy_rule.check(images).copy.mean()),
                     "diversity": diversity_ratio(syn_t, thumbnails(test)),
                     "val": {k: entry.get(k) for k in ("realism_gap", "worst", "contrast",
                                                       "hf_energy", "cnn_c2st", "c2st_val")}})
        if entry.get("reason") == "best":
            _side_by_side(test, images, out.with_suffix(".png"))
        print(f"{run.name} {entry['name']}: {rows[-1]['realism_gap']:+.2f}", flush=True)
        # written after every checkpoint: a deadline keeps what was measured
        out.write_text(json.dumps({"run": run.name, "real_vs_real": {
            k: p.value for k, p in real.items()}, "rows": sorted(rows, key=lambda r: r["step"])},
            indent=1))


def _side_by_side(real: np.ndarray, synthetic: np.ndarray, path: Path, n: int = 32) -> None:
    """Left: real test images; right: synthetic ones with the same labels; same scale."""
    from PIL import Image

    def block(x: np.ndarray) -> np.ndarray:
        tiles = x[:n].reshape(n // 4, 4, *x.shape[1:])
        return np.concatenate([np.concatenate(list(r), axis=1) for r in tiles], axis=0)

    gap = np.full((block(real).shape[0], 8), 255, np.uint8)
    Image.fromarray(np.concatenate([block(real), gap, block(synthetic)], axis=1)).save(path)


def compact_best(run: Path, dest: Path) -> None:
    """The run's best checkpoint as a small run folder: recipe, run.json, the EMA generator's
    arrays only (float32), an index naming it."""
    from cxraug.training.run import read_checkpoint_index

    best = [e for e in read_checkpoint_index(run) if e.get("reason") == "best"]
    if not best:
        return
    entry = best[-1]
    (dest / "checkpoints").mkdir(parents=True, exist_ok=True)
    for name in ("recipe.toml", "run.json", "metrics.csv", "log.txt"):
        if (run / name).is_file():
            (dest / name).write_bytes((run / name).read_bytes())
    with np.load(run / "checkpoints" / f"{entry['name']}.npz") as data:
        keep = {k: data[k] for k in data.files
                if k.split("/")[0] in ("ema", "ema_stats", "format")}
    np.savez(dest / "checkpoints" / f"{entry['name']}.npz", **keep)
    (dest / "checkpoints" / "index.json").write_text(json.dumps([entry], indent=1))
    samples = sorted((run / "samples").glob("epoch_*.png"))
    if samples:
        (dest / "samples").mkdir(exist_ok=True)
        (dest / "samples" / samples[-1].name).write_bytes(samples[-1].read_bytes())


def report(args: argparse.Namespace, names: list[str], seconds: dict[str, float]) -> None:
    cols = ["contrast", "dynamic_range", "exposure_spread", "brightness", "histogram_c2st",
            "hf_energy", "spectrum_c2st", "cnn_c2st", "pixel_c2st"]
    short = ["contr", "range", "expo", "bright", "hist", "hf", "spec", "cnn", "pix"]
    results = {}
    for name in names:
        path = args.out / f"measure_{name}.json"
        if not path.is_file():
            print(f"{name}: no measurements", flush=True)
            continue
        results[name] = json.loads(path.read_text())
    print("\nvariant       kimg  " + " ".join(f"{s:>6}" for s in short) +
          "    gap  copies   div  | val gap")
    for name, res in results.items():
        rr = res["real_vs_real"]
        print(f"{'real vs real':12s}      " + " ".join(f"{rr[c]:6.2f}" for c in cols))
        for row in res["rows"]:
            mark = "*" if row["reason"] == "best" else " "
            vg = row["val"].get("realism_gap")
            print(f"{name:12s}{mark}{row['kimg']:6.0f}  " +
                  " ".join(f"{row['probes'][c]:6.2f}" for c in cols) +
                  f" {row['realism_gap']:6.2f} {row['near_copy']:6.3f} {row['diversity']:5.2f}"
                  + (f"  | {vg:6.2f}" if vg is not None else ""))
    (args.out / "results.json").write_text(json.dumps(
        {"minutes": args.minutes, "train_seconds": seconds, "variants":
         {n: VARIANTS[n] for n in names}, "results": results}, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2, help="BLAS threads per process")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--backend", default="jax")
    ap.add_argument("--ckpt-kimg", type=float, default=40.0)
    ap.add_argument("--eval-kimg", type=float, default=40.0,
                    help="the val tracker's interval (0: off, no best checkpoint; faster)")
    ap.add_argument("--cnn-epochs", type=int, default=16)
    ap.add_argument("--max-measured", type=int, default=8,
                    help="checkpoints measured per run (evenly spread, plus the best)")
    ap.add_argument("--measure-run", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--measure-out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--skip-train", action="store_true", help="measure runs already in --out")
    ap.add_argument("--deadline", type=float, default=1e9,
                    help="seconds from the start after which measuring stops (then the report)")
    args = ap.parse_args()
    if args.measure_run:
        measure_run(args.measure_run, args.data, args.measure_out, args.cnn_epochs,
                    args.max_measured)
        return
    names = [n for n in args.variants.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        sys.exit(f"error: unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    seconds = {} if args.skip_train else train_all(args, names)
    print(f"training done after {time.time() - started:.0f} s", flush=True)
    env = dict(os.environ, KERAS_BACKEND=args.backend, XLA_PYTHON_CLIENT_PREALLOCATE="false",
               OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads),
               PYTHONUNBUFFERED="1", JAX_PLATFORMS=os.environ.get("SWEEP_MEASURE_PLATFORM", ""))
    procs = []
    for name in names:
        run = args.out / "runs" / name
        if not (run / "checkpoints").is_dir():
            continue
        procs.append(subprocess.Popen(
            [sys.executable, __file__, "--data", str(args.data), "--out", str(args.out),
             "--cnn-epochs", str(args.cnn_epochs), "--max-measured", str(args.max_measured),
             "--measure-run", str(run),
             "--measure-out", str(args.out / f"measure_{name}.json")], env=env))
    for p in procs:
        try:
            p.wait(timeout=max(1.0, args.deadline - (time.time() - started)))
        except subprocess.TimeoutExpired:
            p.kill()
            print("measuring cut at the deadline; the report holds what was measured",
                  flush=True)
    print(f"measuring done after {time.time() - started:.0f} s", flush=True)
    report(args, names, seconds)
    packs = [names[i::2] for i in range(2)]
    for i, group in enumerate(packs):
        with tarfile.open(args.out / f"best_runs_{i}.tar", "w") as tar:
            for name in group:
                run = args.out / "runs" / name
                if not run.is_dir():
                    continue
                dest = args.out / "best" / name
                compact_best(run, dest)
                if dest.is_dir():
                    tar.add(dest, arcname=name)
                png = args.out / f"measure_{name}.png"
                if png.is_file():
                    tar.add(png, arcname=f"{name}/side_by_side.png")
                log = args.out / f"train_{name}.log"
                if log.is_file():
                    tar.add(log, arcname=f"{name}/train.log")
    print(f"all done after {time.time() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
