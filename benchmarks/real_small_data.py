"""Benchmark: real chest X-rays from a few hundred real images, quality against compute.

Trains cxraug's small-data recipe and the paper's recipe (both at 64x64) on the 401 real NIH
images of ``../shared/nih-sample`` and measures what each makes, at several budgets of images
shown (kimg; each budget resumes the previous one, so one run gives the whole curve), against
``../shared/nih-heldout``: 122 real NIH images of OTHER patients, never trained on. Printed per
recipe and budget, with the real-vs-real reference measured in the same run:

* ``c2st``: classifier two-sample test, synthetic vs held-out real (logistic regression on
  per-image standardized 32x32 pixels, 5-fold CV, equal numbers a side; 0.5 = indistinguishable).
  ``bal``: class-balanced synthetic images, as ``augment --per-class`` writes them; ``match``:
  one synthetic image per held-out image, drawn with that image's label (as ``evaluate`` does);
  ``c2st own``: class-balanced synthetic images vs the sample's own patient-level test split (the
  sample's patients, never trained on; 38 images, so a wide interval);
* ``div``: mean pairwise pixel distance of synthetic thumbnails over that of held-out images;
* ``copies``: share of synthetic images closer to a sample (training) image than 95% of held-out
  patients are;
* ``swap``: same-z label swap (pixel distance between G(z, c) and G(z, c'), over that between
  G(z, c) and G(z', c)); 0 = the label changes nothing;
* the checkpoint measured is the one export uses (``best`` when the recipe tracks realism).

    python benchmarks/real_small_data.py --kimg 25,50,100,200 --work /tmp/rsd

Run it on an idle machine: the minutes column is the training wall time of each budget.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared"
ALL_CLASSES = ["No Finding", "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion",
               "Emphysema", "Fibrosis", "Hernia", "Infiltration", "Mass", "Nodule",
               "Pleural_Thickening", "Pneumonia", "Pneumothorax"]
#: recipe -> (overrides, prepare options): each recipe gets the data it is built for.
RECIPES = {
    "small-data-64": ({}, {"classes": ALL_CLASSES, "multi_label": "keep"}),
    # the paper's 140 single-label images make one 128-image step per epoch: grids and
    # checkpoints every step would dominate its time, so every 100 epochs (12.8 kimg)
    "paper-128": ({"model.image_size": 64, "train.sample_every": 100,
                   "train.checkpoint_every": 100},
                  {"classes": ["No Finding", "Atelectasis", "Effusion", "Infiltration", "Mass",
                               "Nodule", "Pneumothorax"], "multi_label": "drop"}),
}


def _prepare(root: Path, out: Path, options: dict, size: int, split: bool) -> Path:
    from cxraug.data.cache import prepare

    if not out.is_file():
        extra = {} if split else {"val_fraction": 0.0, "test_fraction": 0.0}
        prepare(data_root=root, csv=root / "Data_Entry_2017.csv", out=out, size=size,
                classes=options["classes"], multi_label=options["multi_label"], seed=0,
                progress=False, **extra)
    return out


def _images(cache: Path, split: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from cxraug.data.cache import CacheReader

    with CacheReader(cache) as reader:
        rows = (np.arange(reader.n) if split is None
                else np.sort(np.asarray(reader.indices(split))))
        return (np.asarray(reader.read(rows)), np.asarray(reader.labels)[rows],
                np.asarray(reader.multi_hot)[rows])


def measure(run: Path, heldout: Path, train_cache: Path, per_class: int, seed: int = 0,
            own_test: np.ndarray | None = None) -> dict[str, float]:
    """The numbers of one checkpoint (the one export would use) against the held-out images."""
    from cxraug.evaluation import realism as R
    from cxraug.grid import to_uint8
    from cxraug.training.run import load_generator

    g = load_generator(run)
    names = g.class_names
    key = "labels" if g.label_mode == "multi-hot" else "label"
    rng = np.random.default_rng(seed)

    def generate(labels: np.ndarray) -> np.ndarray:
        z = rng.standard_normal((len(labels), g.recipe.model.latent_dim)).astype(np.float32)
        out = [np.asarray(g.model({"z": z[i:i + 256], key: labels[i:i + 256]}, training=False))
               for i in range(0, len(z), 256)]
        return to_uint8(np.concatenate(out))

    def as_input(index: np.ndarray) -> np.ndarray:
        if key == "labels":
            return np.eye(len(names), dtype=np.float32)[index]
        return index.astype(np.int32)

    held, held_labels, held_mh = _images(heldout)
    from cxraug.data.cache import CacheReader

    with CacheReader(heldout) as reader:
        held_names = list(reader.class_names)
    train, _, _ = _images(train_cache, "train")
    held_t = R.thumbnails(held)
    balanced = generate(as_input(np.repeat(np.arange(len(names)), per_class)))
    bal_t = R.thumbnails(balanced)
    # label-matched: each held-out image the generator can label, with its own label
    if key == "labels":
        cols = [held_names.index(n) for n in names]
        mh = held_mh[:, cols].astype(np.float32)
        ok = mh.sum(1) == held_mh.sum(1)
        matched = generate(mh[ok])
    else:
        index = np.array([names.index(held_names[v]) if v >= 0 and held_names[v] in names
                          else -1 for v in held_labels])
        ok = index >= 0
        matched = generate(index[ok].astype(np.int32))
    copies, _ = R.near_copies(balanced, train, held)  # the one near-copy rule, on images
    # same-z label swap in pixels
    z = rng.standard_normal((16, g.recipe.model.latent_dim)).astype(np.float32)
    swap = np.stack([np.asarray(g.model({"z": z, key: as_input(np.full(16, c))}, training=False)
                                ).reshape(16, -1) for c in range(len(names))])
    label_d = np.mean([np.linalg.norm(swap[a] - swap[b], axis=1).mean()
                       for a in range(len(names)) for b in range(len(names)) if a != b])
    z_d = np.mean([np.linalg.norm(swap[c][:, None] - swap[c][None], axis=2).sum() / (16 * 15)
                   for c in range(len(names))])
    return {"checkpoint": g.checkpoint, "kimg_at": g.step * g.recipe.train.batch_size / 1000,
            "c2st_bal": R.two_sample_test(bal_t, held_t, seed=seed).accuracy,
            "c2st_match": R.two_sample_test(R.thumbnails(matched), held_t[ok], seed=seed).accuracy,
            "c2st_own": R.two_sample_test(bal_t, own_test, seed=seed).accuracy
            if own_test is not None else float("nan"),
            "div": R.diversity_ratio(bal_t, held_t), "copies": copies.fraction,
            "swap": float(label_d / z_d), "grid": balanced}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=Path, default=SHARED / "nih-sample")
    parser.add_argument("--heldout", type=Path, default=SHARED / "nih-heldout")
    parser.add_argument("--kimg", default="25,50,100,200", help="budgets, comma-separated")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--work", type=Path, default=Path("/tmp/cxraug-real-small-data"))
    parser.add_argument("--grids", type=Path, default=None, help="folder for sample grids")
    args = parser.parse_args()

    from PIL import Image

    from cxraug.evaluation import realism as R
    from cxraug.recipe import load_recipe
    from cxraug.training.loop import train

    budgets = [float(k) for k in args.kimg.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"work folder {args.work}; cores {os.cpu_count()}, load {os.getloadavg()[0]:.1f}",
          flush=True)
    all_options = {"classes": ALL_CLASSES, "multi_label": "keep"}
    heldout = _prepare(args.heldout, args.work / "heldout64.h5", all_options, 64, split=False)
    reference = _prepare(args.sample, args.work / "sample64-all.h5", all_options, 64, split=True)
    held_t = R.thumbnails(_images(heldout)[0])
    sample_t = R.thumbnails(_images(reference, "train")[0])
    own_test = R.thumbnails(_images(reference, "test")[0])
    real = R.two_sample_test(sample_t, held_t)
    print(f"real vs real (sample training images vs held-out patients): c2st {real.accuracy:.3f}"
          f" ({real.low:.2f}-{real.high:.2f}), div {R.diversity_ratio(sample_t, held_t):.3f}, "
          f"n={real.n_per_side} a side", flush=True)

    rows = []
    for name in args.recipes.split(","):
        overrides, options = RECIPES[name]
        cache = _prepare(args.sample, args.work / f"sample64-{name}.h5", options, 64, split=True)
        run = args.work / "runs" / name
        spent = 0.0
        for kimg in budgets:
            recipe = load_recipe(name, overrides={**overrides, "train.kimg": kimg})
            tick = time.perf_counter()
            train(recipe, data=cache, out=run, resume=run.is_dir(), progress=False)
            spent += time.perf_counter() - tick
            m = measure(run, heldout, cache, args.per_class, own_test=own_test)
            grid = m.pop("grid")
            rows.append({"recipe": name, "kimg": kimg, "minutes": spent / 60, **m})
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v
                              for k, v in rows[-1].items()}), flush=True)
            if args.grids:
                args.grids.mkdir(parents=True, exist_ok=True)
                classes = len(grid) // args.per_class
                tiles = grid.reshape(classes, args.per_class, 64, 64)[:, :8]
                Image.fromarray(tiles.transpose(0, 2, 1, 3).reshape(classes * 64, 8 * 64)).save(
                    args.grids / f"real_small_data_{name}_{int(kimg)}kimg.png")

    print(f"\n{'recipe':16s} {'kimg':>6s} {'min':>6s} {'ckpt':>10s} {'c2st bal':>9s} "
          f"{'c2st match':>11s} {'c2st own':>9s} {'div':>6s} {'copies':>7s} {'swap':>6s}")
    own_real = R.two_sample_test(sample_t, own_test).accuracy
    print(f"{'real vs real':16s} {'':>6s} {'':>6s} {'':>10s} {real.accuracy:9.3f} {'':>11s} "
          f"{own_real:9.3f} {R.diversity_ratio(sample_t, held_t):6.3f} {'':>7s} {'':>6s}")
    for r in rows:
        print(f"{r['recipe']:16s} {r['kimg']:6.0f} {r['minutes']:6.1f} {r['checkpoint']:>10s} "
              f"{r['c2st_bal']:9.3f} {r['c2st_match']:11.3f} {r['c2st_own']:9.3f} {r['div']:6.3f} "
              f"{r['copies']:7.3f} {r['swap']:6.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
