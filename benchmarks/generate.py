"""Generator speed: the exported ONNX model in onnxruntime (CPU) against the same model in Keras.

One run measures, for the paper's architecture and cxraug's default (random weights: speed does
not depend on training), images/s at 128x128:

* Keras at its best: ``model(z, label, training=False)`` under ``tf.function`` (with and without
  XLA) and ``predict_on_batch``;
* onnxruntime on the raw tf2onnx graph and on the cleaned graph that ``cxraug export-onnx`` ships,
  under several session options (optimization level, threads);
* what ``augment`` runs: one label per batch on a session of the graph specialized to that label
  (``cxraug.inference.specialize``), alone and through ``OnnxGenerator.generate``;
* the limit: FLOPs per image (2 x MACs of every Conv/ConvTranspose/MatMul/Gemm in the exported
  graph at batch 1) against the FLOP/s of a large fp32 MatMul in onnxruntime measured in the same
  run: ``limit img/s = matmul FLOP/s / FLOPs per image``.

Run: ``python benchmarks/generate.py`` (about 3-4 minutes on 2 cores). Variants run round-robin
and each keeps its best per-batch time, which keeps load from other processes on a shared machine
out of the numbers.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np


def best_batch_seconds(step: Callable[[], Any], runs: int = 5) -> float:
    """Fastest wall time of one call over ``runs`` calls after a warm-up call."""
    step()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return min(times)


def interleaved_best(steps: dict[str, Callable[[], Any]], budget_s: float,
                     min_rounds: int = 3) -> dict[str, float]:
    """Best per-call seconds of each step, measured round-robin (one call each per round).

    On a machine shared with other jobs, load comes and goes: round-robin spreads it evenly over
    the variants, and the best time of each is the least disturbed one.
    """
    for step in steps.values():
        step()  # warm-up: graph building, allocations, thread pools
    best = dict.fromkeys(steps, float("inf"))
    start, rounds = time.perf_counter(), 0
    while rounds < min_rounds or time.perf_counter() - start < budget_s:
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            best[name] = min(best[name], time.perf_counter() - t0)
        rounds += 1
    return best


def matmul_step(threads: int, n: int = 2048) -> tuple[Callable[[], Any], float]:
    """A call of an fp32 ``[n, n] x [n, n]`` MatMul in onnxruntime, and its FLOPs."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "mm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), session_opts(threads, "all"),
                                   providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {k: rng.standard_normal((n, n)).astype(np.float32) for k in ("a", "b")}
    return (lambda: session.run(None, feeds)), 2.0 * n**3


def matmul_flops(threads: int) -> float:
    """FLOP/s of the large MatMul: the CPU's practical fp32 peak in onnxruntime."""
    step, flops = matmul_step(threads)
    return flops / best_batch_seconds(step, runs=8)


def session_opts(threads: int, level: str, spinning: bool = True) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    opts.log_severity_level = 3
    return opts


def flops_per_image(model: Any) -> float:
    """2 x multiply-accumulates of the compute ops in an ONNX graph, at batch size 1."""
    import onnx
    from onnx import numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    for vi in model.graph.input:
        dim = vi.type.tensor_type.shape.dim
        if dim and not dim[0].HasField("dim_value"):
            dim[0].dim_value = 1
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in list(inferred.graph.value_info) + list(inferred.graph.output)
              + list(inferred.graph.input)}
    weights = {t.name: list(numpy_helper.to_array(t).shape) for t in model.graph.initializer}
    shapes.update(weights)
    total = 0
    for node in model.graph.node:
        out = shapes.get(node.output[0])
        if node.op_type == "Conv":
            w = shapes[node.input[1]]  # [Cout, Cin/g, kh, kw]
            total += 2 * int(np.prod(out)) * int(np.prod(w[1:]))
        elif node.op_type == "ConvTranspose":
            w = shapes[node.input[1]]  # [Cin, Cout/g, kh, kw]
            x = shapes[node.input[0]]
            total += 2 * int(np.prod(x)) * int(np.prod(w[1:]))
        elif node.op_type in ("MatMul", "Gemm"):
            a, b = shapes[node.input[0]], shapes[node.input[1]]
            total += 2 * int(np.prod(a)) * int(b[-1])
    return float(total)


def bench_arch(recipe_name: str, batch: int, seconds: float, threads: int,
               tmp: Path) -> list[tuple[str, float]]:
    """Rows (variant, images/s) for one architecture; prints as it goes."""
    import tensorflow as tf

    from cxraug.export import onnx_export as ox
    from cxraug.models import build_generator
    from cxraug.recipe import load_recipe

    recipe = load_recipe(recipe_name)
    classes = [f"class{i}" for i in range(7)]
    keras.utils.set_random_seed(0)
    model = build_generator(recipe.model, len(classes))
    spec = ox.generator_spec(model)
    rng = np.random.default_rng(0)
    z = rng.standard_normal((batch, spec.latent_dim)).astype(np.float32)
    label = (np.arange(batch) % len(classes)).astype(np.int64)
    rows: list[tuple[str, float]] = []

    import onnx
    import onnxruntime as ort

    raw = ox.to_onnx(model)
    out = tmp / f"{recipe_name}.onnx"
    result = ox.export_generator(model, out, {"class_names": classes,
                                              "arch": recipe.model.arch}, progress=False)
    shipped = onnx.load(str(out))

    # ---- Keras, its fastest ways
    z_tf, l_tf = tf.constant(z), tf.constant(label.astype(np.int32))
    fn = tf.function(lambda a, b: model([a, b], training=False))
    xla = tf.function(lambda a, b: model([a, b], training=False), jit_compile=True)
    steps: dict[str, Callable[[], Any]] = {
        "keras tf.function": lambda: fn(z_tf, l_tf).numpy(),
        "keras tf.function(jit_compile=True)": lambda: xla(z_tf, l_tf).numpy(),
        "keras predict_on_batch": lambda: model.predict_on_batch([z, label.astype(np.int32)]),
    }
    # ---- onnxruntime: raw tf2onnx graph vs the shipped (cleaned) file, several session options
    feeds = {"z": z, "label": label}
    t = f"{threads} threads"
    variants = [(f"raw tf2onnx, ALL, {t}", raw, threads, "all", True),
                (f"raw tf2onnx, ALL, {t}, no spinning", raw, threads, "all", False),
                (f"cxraug export, BASIC, {t}, no spinning", shipped, threads, "basic", False),
                (f"cxraug export, EXTENDED, {t}, no spinning", shipped, threads, "extended",
                 False),
                ("cxraug export, ALL, 1 thread", shipped, 1, "all", True),
                (f"cxraug export, ALL, {t}", shipped, threads, "all", True),
                (f"cxraug export, ALL, {t}, no spinning", shipped, threads, "all", False)]
    if recipe.model.arch != "cxraug":
        # The paper's generator: every onnxruntime session keeps activation buffers of ~0.5 GB
        # per tensor at batch 64, and below ALL its 16x16 convolution goes through an im2col
        # buffer of 2 GB per image; measure only the full-optimization variants.
        variants = [v for v in variants if v[3] == "all" and v[2] == threads]
    for name, proto, n_threads, level, spin in variants:
        session = ort.InferenceSession(proto.SerializeToString(),
                                       session_opts(n_threads, level, spinning=spin),
                                       providers=["CPUExecutionProvider"])
        steps["ort " + name] = lambda s=session: s.run(None, feeds)
    # ---- what augment runs: one label per batch, on the graph specialized to that label
    # (cxraug.inference.specialize; the paper's graph declines). Same z, every row class 3.
    from cxraug.inference.generator import OnnxGenerator
    from cxraug.inference.specialize import specialize_for_label

    special = specialize_for_label(shipped, "label", np.array([3], np.int64))
    if special is not None:
        check = ort.InferenceSession(shipped.SerializeToString(), session_opts(threads, "all"),
                                     providers=["CPUExecutionProvider"])
        same = {"z": z, "label": np.full(batch, 3, np.int64)}
        for spin in (True, False):
            session = ort.InferenceSession(special.SerializeToString(),
                                           session_opts(threads, "all", spinning=spin),
                                           providers=["CPUExecutionProvider"])
            diff = float(np.max(np.abs(session.run(None, {"z": z})[0]
                                       - check.run(None, same)[0])))
            name = (f"ort cxraug export, class-specialized, ALL, {t}"
                    + ("" if spin else ", no spinning"))
            steps[name] = lambda s=session: s.run(None, {"z": z})
            print(f"  {recipe_name:11s} {name}: max |diff| vs full graph {diff:.1e}", flush=True)
        gen = OnnxGenerator(out, device="cpu", threads=threads, spinning=False)
        labels3 = np.full(batch, 3, np.int64)
        steps["OnnxGenerator.generate (augment's call), one class"] = (
            lambda: gen.generate(z, labels3))
    else:
        print(f"  {recipe_name:11s} class specialization: not possible for this graph", flush=True)
    try:
        steps["keras tf.function(jit_compile=True)"]()
    except Exception as exc:  # XLA may reject an op; the other Keras ways still count
        print(f"  {recipe_name:11s} XLA failed: {type(exc).__name__}")
        del steps["keras tf.function(jit_compile=True)"]
    mm_step, mm_flops = matmul_step(threads)
    steps["matmul"] = mm_step  # the limit, measured under the same load as the variants
    best = interleaved_best(steps, budget_s=seconds, min_rounds=2)
    rows.append(("__peak__", mm_flops / best.pop("matmul")))
    for name, sec in best.items():
        rows.append((name, batch / sec))
        print(f"  {recipe_name:11s} {name:50s} {batch / sec:8.1f} img/s", flush=True)
    flops = flops_per_image(shipped)
    rows.append(("__flops__", flops))
    rows.append(("__diff__", result.max_abs_diff))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64, help="batch of the cxraug generator")
    parser.add_argument("--paper-batch", type=int, default=16,
                        help="batch of the paper's generator (10x the FLOPs and memory per image)")
    parser.add_argument("--seconds", type=float, default=45.0,
                        help="round-robin time budget per architecture (at least 2 rounds)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--recipes", default="paper-128,cxraug-128")
    args = parser.parse_args(argv)

    global keras
    import keras
    import onnxruntime as ort
    import tensorflow as tf

    ort.set_default_logger_severity(3)  # the raw graph's deprecated-attribute warnings
    print(f"tensorflow {tf.__version__}, keras {keras.__version__}, onnxruntime "
          f"{ort.__version__}, {os.cpu_count()} CPUs, batch {args.batch} (paper "
          f"{args.paper_batch})", flush=True)
    started = time.perf_counter()
    peak = matmul_flops(args.threads)
    print(f"onnxruntime fp32 MatMul 2048^3 alone: {peak / 1e9:.0f} GFLOP/s", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.recipes.split(","):
            batch = args.paper_batch if name.startswith("paper") else args.batch
            results[name] = bench_arch(name, batch, args.seconds, args.threads, Path(tmp))

    print("\nsummary (images/s at 128x128, CPU)")
    print(f"{'recipe':11s} {'GFLOP/img':>9s} {'GFLOP/s':>7s} {'limit':>7s} {'keras*':>7s} "
          f"{'ort raw':>8s} {'ort full':>8s} {'ort':>7s} {'ort/keras':>9s} {'ort/limit':>9s} "
          f"{'parity':>8s}")
    for name, rows in results.items():
        d = dict(rows)
        flops = d.pop("__flops__")
        diff = d.pop("__diff__")
        peak = d.pop("__peak__")
        keras_best = max(v for k, v in d.items() if k.startswith("keras"))
        raw = max(v for k, v in d.items() if "raw" in k)
        ort_best_name, ort_best = max(((k, v) for k, v in d.items()
                                       if k.startswith("ort cxraug")), key=lambda kv: kv[1])
        full_best = max(v for k, v in d.items()
                        if k.startswith("ort cxraug") and "specialized" not in k)
        limit = peak / flops
        print(f"{name:11s} {flops / 1e9:9.3f} {peak / 1e9:7.0f} {limit:7.1f} {keras_best:7.1f} "
              f"{raw:8.1f} {full_best:8.1f} {ort_best:7.1f} {ort_best / keras_best:9.2f} "
              f"{ort_best / limit:9.2f} {diff:8.1e}   best: {ort_best_name}")
    print(f"\n(keras* = fastest Keras way; ort full = best session of the exported graph with "
          f"any labels; ort = best of all, including class-specialized sessions (one label per "
          f"batch, as augment runs); GFLOP/s = the 2048^3 MatMul, measured round-robin with "
          f"the variants; limit = GFLOP/s / GFLOP per image; total "
          f"{time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
