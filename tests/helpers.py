"""Helpers shared by the test modules (one place; test modules import nothing from each other):
small ONNX generators built with onnx.helper, augment calls and the CLI in a subprocess."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh

from cxraug.synthesis.augment import augment

REPO = Path(__file__).resolve().parents[1]

PAPER7 = ("No Finding", "Atelectasis", "Effusion", "Infiltration", "Mass", "Nodule",
          "Pneumothorax")


#: glibc's malloc settings of the test session: a 64 MiB top pad and a 1 GiB trim threshold
#: instead of trimming the heap whenever 128 KiB at its top is free (benchmarks/malloc.py)
KEPT_HEAP = {"MALLOC_TOP_PAD_": str(64 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def keep_freed_heap() -> bool:
    """This process and every process it starts keep freed heap (glibc only; a user's own
    MALLOC_ variables win). TensorFlow frees and re-allocates the same buffers every step; with
    glibc's trimming each step faults them in again: 3.1 million page faults and 9.5 s of system
    time in a 13-step smoke-32 run, 0.4 million and 2.2 s kept. The wall time of that run alone
    did not change (the faults overlap its threads' work), so the CLI keeps glibc's default (and
    its 120 MiB less peak memory); the suite shares two cores with its background JAX processes,
    where CPU time is wall time. True where this process's malloc was changed."""
    import ctypes
    import ctypes.util

    if not sys.platform.startswith("linux") or any(k in os.environ for k in KEPT_HEAP):
        return False
    os.environ.update(KEPT_HEAP)  # children: glibc reads these at start
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    m_trim_threshold, m_top_pad = -1, -2  # glibc's malloc.h
    return bool(mallopt(m_top_pad, 64 << 20)) and bool(mallopt(m_trim_threshold, 1 << 30))


def make_generator(path: Path, classes: Sequence[str] = PAPER7, latent: int = 8, size: int = 16,
                   label_mode: str = "index", meta: dict[str, str] | None = None,
                   drop_meta: bool = False, channels: int = 4, seed: int = 0,
                   input_names: Sequence[str] | None = None, output_name: str = "image") -> Path:
    """Write a small generator with the cxraug ONNX interface and metadata to ``path``."""
    rng = np.random.default_rng(seed)
    c, s = len(classes), size
    inits = [
        nh.from_array((rng.standard_normal((latent, s * s)) / np.sqrt(latent)).astype(np.float32),
                      "W"),
        nh.from_array((rng.standard_normal((c, s * s)) * 0.5).astype(np.float32), "E"),
        nh.from_array(np.array([-1, 1, s, s], np.int64), "shape1"),
        nh.from_array(np.array([-1, s, s, 1], np.int64), "shape2"),
        nh.from_array((rng.standard_normal((channels, 1, 3, 3)) * 0.5).astype(np.float32), "K1"),
        nh.from_array((rng.standard_normal((1, channels, 3, 3)) * 0.3).astype(np.float32), "K2"),
    ]
    names = list(input_names) if input_names is not None else (
        ["z", "label"] if label_mode == "index" else ["z", "labels"] if label_mode == "multi-hot"
        else ["z"])
    inputs = [oh.make_tensor_value_info(names[0], TensorProto.FLOAT, ["N", latent])]
    nodes = [oh.make_node("MatMul", [names[0], "W"], ["h0"])]
    if label_mode == "index":
        inputs.append(oh.make_tensor_value_info(names[1], TensorProto.INT64, ["N"]))
        nodes += [oh.make_node("Gather", ["E", names[1]], ["emb"]),
                  oh.make_node("Add", ["h0", "emb"], ["h"])]
    elif label_mode == "multi-hot":
        inputs.append(oh.make_tensor_value_info(names[1], TensorProto.FLOAT, ["N", c]))
        nodes += [oh.make_node("MatMul", [names[1], "E"], ["emb"]),
                  oh.make_node("Add", ["h0", "emb"], ["h"])]
    else:
        nodes.append(oh.make_node("Identity", ["h0"], ["h"]))
    nodes += [oh.make_node("Reshape", ["h", "shape1"], ["x1"]),
              oh.make_node("Conv", ["x1", "K1"], ["c1"], pads=[1, 1, 1, 1]),
              oh.make_node("Relu", ["c1"], ["r1"]),
              oh.make_node("Conv", ["r1", "K2"], ["c2"], pads=[1, 1, 1, 1]),
              oh.make_node("Add", ["c2", "x1"], ["sum"]),
              oh.make_node("Tanh", ["sum"], ["t"]),
              oh.make_node("Reshape", ["t", "shape2"], [output_name])]
    output = oh.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N", s, s, 1])
    model = oh.make_model(oh.make_graph(nodes, "generator", inputs, [output], inits),
                          opset_imports=[oh.make_opsetid("", 17)], producer_name="cxraug-tests")
    model.ir_version = 8
    props = {} if drop_meta else {
        "cxraug_version": "0.1.0", "class_names": json.dumps(list(classes)),
        "latent_dim": str(latent), "image_size": str(s), "label_mode": label_mode,
        "recipe": 'name = "test"\n[model]\nimage_size = 16\n', "recipe_name": "test",
        "arch": "test", "data_fingerprint": "f00d", "epoch": "3", "step": "42",
        "exported_at": "2026-01-01T00:00:00+00:00"}
    props.update(meta or {})
    oh.set_model_props(model, props)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


def run(model: Path, out: Path, **kw) -> object:
    kw.setdefault("progress", False)
    kw.setdefault("device", "cpu")
    return augment(model=model, out=out, **kw)


def files(out: Path) -> dict[str, bytes]:
    """Every file under ``out`` except the per-run manifests (they hold timings)."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "manifest.json" and p.parent.name != "parts"}


def cli(*args: str) -> list[str]:
    code = "import sys; from cxraug.cli import main; sys.exit(main(sys.argv[1:]))"
    return [sys.executable, "-c", code, *args]


def start_and_stop(args: list[str], images: Path, at_least: int, sig: int) -> int:
    """Start ``cxraug augment`` in a subprocess, send ``sig`` once ``at_least`` PNGs exist.

    The child gets the default SIGINT disposition: a test runner started in the background by a
    non-interactive shell inherits SIGINT as *ignored*, and Python then never turns Ctrl-C into
    KeyboardInterrupt (the run would just finish, as a user's background job rightly does).
    """
    proc = subprocess.Popen(cli(*args), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if images.is_dir() and len(os.listdir(images)) >= at_least:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before it could be stopped; make it longer"
    os.kill(proc.pid, sig)
    return proc.wait()


# --------------------------------------------------------------- the JAX side of test_backends
JAX_PROBE = REPO / "tests" / "backend_probe.py"
CLUSTER_PEERS = REPO / "tests" / "cluster_peers.py"
#: smoke-32 with EMA, DiffAugment and ADA: all the state a JAX resume must carry
JAX_OVERRIDES = {"train.epochs": 3, "train.checkpoint_every": 1, "train.steps_per_epoch": 3,
                 "train.keep_checkpoints": 5, "train.ema_decay": 0.99,
                 "train.diffaugment": ["translation", "cutout"], "train.ada_target": 0.6}


def start_jax_side() -> dict[str, object]:
    """Start tests/test_backends.py's two processes in the background (niced: the tests in the
    foreground keep the cores first), so that they overlap the rest of the suite. JAX makes its
    own phantom cache, probes every recipe (saving the weights), and trains: straight, cut at step
    4 and resumed; then two ``cxraug train`` processes train together (``--coordinator``, two
    forced CPU devices each: four devices in all), one of them late at the first step, and two
    that give up on a peer later than their timeout (tests/cluster_peers.py); then TensorFlow probes
    the same recipes with those weights."""
    import socket
    import tempfile

    from cxraug.recipe import available_recipes

    try:
        import jax  # noqa: F401
    except ImportError:
        return {}
    root = Path(tempfile.mkdtemp(prefix="cxraug-jax-side-"))
    (root / "weights").mkdir()
    runs = [(root / "a", JAX_OVERRIDES, {"devices": 1}),
            (root / "b", JAX_OVERRIDES, {"devices": 1, "max_steps": 4}),
            (root / "b", JAX_OVERRIDES, {"devices": 1, "resume": True})]
    job = {"make_cache": str(root / "cache.h5"), "data": str(root / "cache.h5"),
           "probe": available_recipes(), "weights": str(root / "weights"),
           "runs": [(str(out), o, kw) for out, o, kw in runs],
           "images": [(str(root / "a"), str(root / "jax.npy"))]}
    (root / "job.json").write_text(json.dumps(job))
    # then TensorFlow probes the recipes with the weights JAX saved (also in the background)
    (root / "tf.json").write_text(json.dumps({"probe": job["probe"],
                                              "weights": job["weights"]}))
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": str(REPO), "JAX_COMPILATION_CACHE_DIR": str(root / "jax-cache"),
           # two devices for the data-parallel run; one compute thread, so that the tests in
           # the foreground keep a core
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2 "
                        "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}
    py, probe = shlex.quote(sys.executable), shlex.quote(str(JAX_PROBE))
    def free_port() -> int:  # for a coordinator
        with socket.socket() as s:
            s.bind(("localhost", 0))
            return s.getsockname()[1]

    port = free_port()
    sets = " ".join(f"--set {k}={','.join(v) if isinstance(v, list) else v}"
                    for k, v in {**JAX_OVERRIDES, "train.epochs": 1}.items())
    worker = (f"{py} -m cxraug.cli train --recipe smoke-32 --data cache.h5 --out cluster {sets} "
              f"--coordinator localhost:{port} --processes 2 --process-id")
    # the two processes (tests/cluster_peers.py) with process 1 late at the first step: until
    # process 0 waited 55 s ("cluster", within the cluster's timeout: it must equal the
    # one-process run); and, with a timeout of 40 s, until process 0 gave up ("gone"). Both at
    # once.
    peers = {"pairs": [
        {"name": name, "hold": hold,
         "cmd": [*shlex.split(worker.replace(f"localhost:{port}", f"localhost:{free_port()}")
                              .replace("--out cluster", f"--out {name}")),
                 "{rank}", "--cluster-timeout", str(timeout)]}
        for name, hold, timeout in (("cluster", 55, 300), ("gone", "inf", 40))]}
    (root / "peers.json").write_text(json.dumps(peers))
    script = (f"{py} {probe} job.json > stdout 2> stderr && "
              f"{py} {shlex.quote(str(CLUSTER_PEERS))} peers.json > peers.out 2> stderr && "
              f"KERAS_BACKEND=tensorflow XLA_FLAGS= {py} {probe} tf.json > tf.stdout 2> stderr")
    proc = subprocess.Popen(["bash", "-c", script], cwd=root, env=env,
                            preexec_fn=lambda: os.nice(10))
    return {"proc": proc, "root": root}
