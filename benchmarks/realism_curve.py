"""Quality against compute for one training run: every kept checkpoint measured with every
realism probe against held-out real patients, with the minutes and kimg it took, and a grid.

    python benchmarks/realism_curve.py --run runs/A --data nih64.h5 [--split test]
        [--draws 2] [--grids DIR] [--json out.json]

Each checkpoint is exported to ONNX (``cxraug export-onnx``'s code, a temporary file) and, as
``evaluate`` does, every held-out image the generator can label gets a synthetic image drawn with
its own labels (``--draws`` synthetic sets; two-sample tests average them); the battery of
:mod:`cxraug.probes.battery` compares them, beside the same battery between as many real
training images and the held-out ones (two sets of real patients, measured once). Also: the
share of near-copies by the privacy filter's rule (closer to a training image than 95% of the
cache's val + test patients are), pixel diversity against the held-out images, and the minutes
of training behind the checkpoint (``metrics.csv``'s wall clock, so a machine shared with other
work shows as slower). The val tracker's choice (``best-<step>``) is marked ``*``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COLUMNS = ("contrast", "dynamic_range", "exposure_spread", "brightness", "histogram_c2st",
           "hf_energy", "spectrum_c2st", "cnn_c2st", "pixel_c2st")
SHORT = ("contr", "range", "expo", "bright", "hist", "hf", "spec", "cnn", "pix")


def minutes_at(run: Path) -> dict[int, float]:
    """Training minutes at the end of each logged step (metrics.csv's wall_s summed)."""
    out, total = {}, 0.0
    with open(run / "metrics.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            total += float(row["wall_s"] or 0)
            out[int(row["step"])] = total / 60
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--draws", type=int, default=2)
    ap.add_argument("--grids", type=Path, help="folder for a side-by-side picture per checkpoint")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--every", type=int, default=1, help="measure every N-th checkpoint")
    args = ap.parse_args()

    from cxraug.copy_reference import TrainReference
    from cxraug.data.cache import CacheReader
    from cxraug.data.reference import build_reference
    from cxraug.errors import CxrError
    from cxraug.evaluation.render import side_by_side
    from cxraug.export.onnx_export import export_run
    from cxraug.grid import to_uint8
    from cxraug.inference.generator import OnnxGenerator
    from cxraug.probes.battery import realism_gap, run_probes, summarize, worst
    from cxraug.probes.stats import diversity_ratio, thumbnails
    from cxraug.training.run import read_checkpoint_index

    with CacheReader(args.data) as reader:
        split = np.asarray(reader.split)
        held_rows = np.flatnonzero(split == args.split)
        train_rows = np.flatnonzero(split == "train")
        held = np.asarray(reader.read(held_rows))
        train = np.asarray(reader.read(train_rows))
        labels = np.asarray(reader.multi_hot)[held_rows].astype(np.float32)
    rng = np.random.default_rng(0)
    ref = summarize(held)
    real = run_probes(train[np.sort(rng.choice(len(train), len(held), replace=False))], ref)
    held_t = thumbnails(held)
    minutes = minutes_at(args.run)
    entries = sorted(read_checkpoint_index(args.run), key=lambda e: e["step"])
    entries = [e for i, e in enumerate(entries) if e.get("reason") == "best" or
               i % args.every == 0]
    rows = []
    print(f"{'checkpoint':12s} {'kimg':>5s} {'min':>5s} " + " ".join(f"{s:>6s}" for s in SHORT)
          + f" {'gap':>6s} {'copies':>6s} {'div':>5s}")
    print(f"{'real vs real':24s}" + " ".join(f"{real[c].value:6.2f}" for c in COLUMNS))
    with tempfile.TemporaryDirectory() as tmp:
        ref_path = build_reference(args.data, Path(tmp) / "ref.trainref.h5")
        for entry in entries:
            onnx_path = Path(tmp) / f"{entry['name']}.onnx"
            try:
                export_run(args.run, onnx_path, checkpoint=entry["name"], progress=False)
            except CxrError as exc:  # a live run replaced it meanwhile
                print(f"{entry['name']}: skipped ({exc})", flush=True)
                continue
            gen = OnnxGenerator(onnx_path, device="cpu")
            draws = []
            for d in range(args.draws):
                z = np.random.default_rng([d, entry["step"]]).standard_normal(
                    (len(labels), gen.latent_dim)).astype(np.float32)
                draws.append(to_uint8(gen.generate(z, labels)))
            synthetic = np.concatenate(draws)
            probes = run_probes(synthetic, ref, repeats=args.draws)
            for name, p in probes.items():
                p.real, p.real_score = real[name].value, real[name].score
            with TrainReference(ref_path) as privacy:
                copies = float(privacy.check(synthetic).copy.mean())
            kimg = entry["step"] * _batch_size(str(gen.meta.get("recipe", ""))) / 1000
            row = {"checkpoint": entry["name"], "step": entry["step"], "kimg": kimg,
                   "minutes": minutes.get(entry["step"], float("nan")),
                   "best": entry.get("reason") == "best",
                   "probes": {k: p.value for k, p in probes.items()},
                   "passed": {k: p.passed for k, p in probes.items()},
                   "realism_gap": realism_gap(probes), "worst": worst(probes),
                   "near_copies": copies,
                   "diversity": diversity_ratio(thumbnails(draws[0]), held_t)}
            rows.append(row)
            print(f"{entry['name']:11s}{'*' if row['best'] else ' '} {kimg:5.0f} "
                  f"{row['minutes']:5.1f} " + " ".join(f"{row['probes'][c]:6.2f}" for c in COLUMNS)
                  + f" {row['realism_gap']:6.2f} {copies:6.3f} {row['diversity']:5.2f}",
                  flush=True)
            if args.grids:
                args.grids.mkdir(parents=True, exist_ok=True)
                (args.grids / f"{entry['name']}.png").write_bytes(side_by_side(held, draws[0]))
    if args.json:
        args.json.write_text(json.dumps({"run": str(args.run), "data": str(args.data),
                                         "split": args.split, "n_per_side": len(held),
                                         "real_vs_real": {k: p.value for k, p in real.items()},
                                         "rows": rows}, indent=1))


def _batch_size(recipe_toml: str) -> int:
    import tomllib

    try:
        return int(tomllib.loads(recipe_toml)["train"]["batch_size"])
    except (tomllib.TOMLDecodeError, KeyError, TypeError):
        return 32


if __name__ == "__main__":
    main()
