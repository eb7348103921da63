"""Benchmark: does the label change the disease? The paper's architecture against cxraug's default.

Both are trained on the same phantom data set (whose classes differ visibly), for the same
number of epochs at the same batch size, through the same training loop; each keeps its own
losses and options (the paper: BCE, half-batch D steps, uniform fake labels, no EMA, no
augmentation; cxraug: hinge, projection D with an auxiliary class head, TTUR learning rates,
conditional BN, EMA, DiffAugment, class-balanced sampling). Then one judge classifier trained on
the real images scores both generators with `cxraug evaluate`: label fidelity (AUROC and
accuracy of the requested label on synthetic images, beside real held-out images), the same-z
label swap (the paper's Figure 9 as a number), FID and KID. Prints a table and the ratios
cxraug / paper.

    python benchmarks/conditioning.py --n 1400 --epochs 50
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _fmt(value: object) -> str:
    return f"{value:9.3f}" if isinstance(value, float) else f"{str(value):>9s}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1400, help="phantom images")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--size", type=int, default=32, help="training image size")
    parser.add_argument("--n-per-class", type=int, default=100)
    parser.add_argument("--judge-epochs", type=int, default=15)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    from cxraug.data.cache import prepare
    from cxraug.data.phantom import make_phantom_dataset
    from cxraug.evaluation.classifier import train_classifier
    from cxraug.evaluation.report import evaluate
    from cxraug.export.onnx_export import export_run
    from cxraug.recipe import load_recipe
    from cxraug.training.loop import train

    work = args.workdir or Path(tempfile.mkdtemp(prefix="cxraug-conditioning-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work folder {work}; cores {os.cpu_count()}, load {os.getloadavg()[0]:.1f}", flush=True)
    phantom, cache = work / "phantom", work / "cache.h5"
    if not (phantom / "Data_Entry_2017.csv").is_file():
        make_phantom_dataset(out=phantom, n=args.n, size=64, seed=0, overwrite=True,
                             progress=False)
    if not cache.is_file():
        prepare(data_root=phantom, csv=phantom / "Data_Entry_2017.csv", out=cache,
                size=args.size, top_k=6, multi_label="drop", seed=0, progress=False)
    judge = work / "judge"
    if not (judge / "classifier.json").is_file():
        start = time.perf_counter()
        train_classifier(data=cache, out=judge, epochs=args.judge_epochs, seed=0, progress=False)
        print(f"judge trained in {time.perf_counter() - start:.0f}s", flush=True)

    common = {"model.image_size": args.size, "train.epochs": args.epochs,
              "train.batch_size": args.batch_size, "train.checkpoint_every": args.epochs,
              "train.sample_every": args.epochs}
    contenders = {
        "paper": load_recipe("paper-128", overrides=common),
        "cxraug": load_recipe("cxraug-128", overrides={
            **common, "model.g_channels": 64, "model.d_channels": 16,
            "model.latent_dim": 32, "model.embedding_dim": 16}),
    }
    results: dict[str, dict] = {}
    for name, recipe in contenders.items():
        run, model, report = work / f"run-{name}", work / f"{name}.onnx", work / f"report-{name}"
        start = time.perf_counter()
        if not (run / "run.json").is_file() or "finished" not in (run / "run.json").read_text():
            train(recipe, data=cache, out=run, resume=(run / "run.json").is_file(),
                  progress=False)
        train_s = time.perf_counter() - start
        export_run(run=run, out=model, progress=False)
        result = evaluate(model=model, data=cache, out=report, classifier=judge, split="val",
                          n_per_class=args.n_per_class, seed=0, progress=False)
        overall = result.report["overall"]
        results[name] = {"train_s": train_s, **overall}
        print(f"\n{name}: trained {args.epochs} epochs in {train_s:.0f}s\n{result.summary()}",
              flush=True)

    keys = [("synthetic_auroc", "judge AUROC, synthetic (higher better)"),
            ("real_auroc", "judge AUROC, real held-out (reference)"),
            ("synthetic_accuracy", "judge accuracy, synthetic (higher better)"),
            ("real_accuracy", "judge accuracy, real held-out (reference)"),
            ("label_swap_feature_ratio", "same-z label swap / new z, features (higher better)"),
            ("label_swap_pixel_ratio", "same-z label swap / new z, pixels"),
            ("fid", "FID vs held-out real (lower better)"),
            ("baseline_fid", "FID real train vs held-out (reference)"),
            ("kid_mean", "KID vs held-out real (lower better)"),
            ("train_s", "training seconds")]
    print(f"\n{'metric (macro mean over classes)':55s} {'paper':>9s} {'cxraug':>9s} {'ratio':>7s}")
    for key, label in keys:
        p, c = results["paper"].get(key), results["cxraug"].get(key)
        ratio = f"{c / p:7.2f}" if isinstance(p, float) and isinstance(c, float) and p else ""
        print(f"{label:55s} {_fmt(p)} {_fmt(c)} {ratio}")
    (work / "conditioning.json").write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
