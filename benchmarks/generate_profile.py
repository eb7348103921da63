"""Where generation's time goes: onnxruntime's profile of the graph ``augment`` runs, per node,
against the FLOP rate of a large MatMul measured in the same run.

The generator of ``--recipe`` (random weights: speed does not depend on training) is exported,
specialized to one label as ``OnnxGenerator`` runs it, and profiled at ``--batch`` on all cores
(spinning off, as augment). Every convolution's FLOPs come from its logical shapes (2 x output
elements x Cin/groups x kh x kw), so each gets an achieved GFLOP/s; nodes are grouped into

* convolutions that do arithmetic (3x3 and wider kernels), which can approach the MatMul rate;
* per-channel and 1x1 passes (scale/shift left as a grouped 1x1 convolution, skip-path 1x1
  projections): a few FLOPs per byte, bound by memory bandwidth;
* everything else (upsampling, residual adds, layout reorders), no FLOPs at all.

It prints the share of the time of each group and what the step would reach if each group ran
at the MatMul rate (or in no time), so the gap to the FLOP limit is split into its parts.

    python benchmarks/generate_profile.py [--recipe cxraug-128] [--batch 64] [--runs 10]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402


def conv_flops(args: dict) -> float:
    """2 x MACs of a Conv profile event, from its logical input/weight/output shapes."""
    shapes = [next(iter(s.values())) for s in args["input_type_shape"]]
    out = next(iter(args["output_type_shape"][0].values()))
    weight = shapes[1]  # [Cout, Cin/groups, kh, kw]
    return 2.0 * float(np.prod(out)) * float(np.prod(weight[1:]))


def group_of(op: str, args: dict) -> str:
    if "Conv" not in op:
        return "no FLOPs (upsample, add, reorders, ...)"
    weight = next(iter(args["input_type_shape"][1].values()))
    if int(np.prod(weight[1:])) < 9 * 8:  # 1x1 projections, per-channel (grouped) passes
        return "1x1 and per-channel convolutions"
    return "convolutions (3x3 and wider)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="cxraug-128")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    import keras
    import onnx
    import onnxruntime as ort
    from generate import flops_per_image, matmul_flops, session_opts

    from cxraug.export import onnx_export as ox
    from cxraug.inference.specialize import specialize_for_label
    from cxraug.models import build_generator
    from cxraug.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    keras.utils.set_random_seed(0)
    model = build_generator(recipe.model, 7)
    with tempfile.TemporaryDirectory(prefix="cxraug-prof-") as tmp:
        path = Path(tmp) / "g.onnx"
        ox.export_generator(model, path, {"class_names": [f"c{i}" for i in range(7)],
                                          "arch": recipe.model.arch}, progress=False)
        graph = onnx.load(str(path))
        special = specialize_for_label(graph, "label", np.array([3], np.int64))
        feeds: dict[str, np.ndarray] = {"z": np.random.default_rng(0).standard_normal(
            (args.batch, recipe.model.latent_dim)).astype(np.float32)}
        if special is None:  # the paper's graph: the full graph, as augment runs it
            special = graph
            feeds["label"] = np.full(args.batch, 3, np.int64)
        opts = session_opts(args.threads, "all", spinning=False)
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(special.SerializeToString(), opts,
                                       providers=["CPUExecutionProvider"])
        warm = 3
        for _ in range(warm):
            session.run(None, feeds)
        mm_before = matmul_flops(args.threads)
        start = time.perf_counter()
        for _ in range(args.runs):
            session.run(None, feeds)
        seconds = (time.perf_counter() - start) / args.runs
        mm = (mm_before + matmul_flops(args.threads)) / 2
        events = json.loads(Path(session.end_profiling()).read_text())
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    per_run = len(nodes) // (warm + args.runs)
    nodes = nodes[warm * per_run:]
    groups: dict[str, list[float]] = {}
    for e in nodes:
        op = e["args"]["op_name"]
        flops = conv_flops(e["args"]) if "Conv" in op else 0.0
        g = groups.setdefault(group_of(op, e["args"]), [0.0, 0.0])
        g[0] += e["dur"] * 1e-6 / args.runs
        g[1] += flops / args.runs
    kernel = sum(g[0] for g in groups.values())
    flops_img = flops_per_image(special)
    limit = mm / flops_img
    rate = args.batch / seconds
    print(f"{args.recipe}, batch {args.batch}, {args.threads} threads, onnxruntime "
          f"{ort.__version__}: {rate:.1f} img/s; {flops_img / 1e9:.3f} GFLOP/img; MatMul "
          f"{mm / 1e9:.0f} GFLOP/s (before and after); limit {limit:.1f} img/s; "
          f"ratio {rate / limit:.3f}")
    print(f"kernel time {kernel * 1e3:.1f} ms of {seconds * 1e3:.1f} ms per batch (the rest: "
          "session overhead, thread hand-offs)")
    print(f"{'group':42s} {'time':>7s} {'GFLOP/s':>8s} {'of MatMul':>9s}")
    for name, (sec, flops) in sorted(groups.items(), key=lambda kv: -kv[1][0]):
        gfs = flops / sec / 1e9 if flops else 0.0
        print(f"{name:42s} {sec / kernel:7.1%} {gfs:8.0f} {gfs * 1e9 / mm:9.2f}")
    wide = groups.get("convolutions (3x3 and wider)", [0.0, 0.0])
    at_mm = seconds - wide[0] + wide[1] / mm
    print(f"if the wide convolutions ran at the MatMul rate: {args.batch / at_mm:.1f} img/s "
          f"({args.batch / at_mm / limit:.3f} of the limit); if, in addition, nothing else took "
          f"time: {limit:.1f} (1.000)")
    thin = groups.get("1x1 and per-channel convolutions", [0.0, 0.0])
    bare = seconds - sum(g[0] for g in groups.values())  # outside any kernel
    ideal_rest = bare + wide[0] + thin[1] / mm
    print(f"if the passes without FLOPs took no time and the 1x1/per-channel ones ran at the "
          f"MatMul rate: {args.batch / ideal_rest:.1f} img/s "
          f"({args.batch / ideal_rest / limit:.3f} of the limit)")

if __name__ == "__main__":
    main()
