"""``cxraug doctor``: what this machine offers cxraug, checked rather than assumed.

Each framework is imported and asked for its devices; CUDA libraries are looked up where the
dynamic loader and pip's ``nvidia-*`` wheels put them; every onnxruntime provider that claims to be
available gets a one-node session, and only those that the session really uses count as working
(onnxruntime falls back to the CPU with only a warning).
"""

from __future__ import annotations

import ctypes.util
import importlib
import os
import platform
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .quiet_tf import captured_native_output

CUDA_LIBRARIES = ("cudart", "cublas", "cudnn", "cufft", "nccl")


@dataclass
class Report:
    lines: list[tuple[str, str]] = field(default_factory=list)  # (topic, finding)
    problems: list[str] = field(default_factory=list)

    def add(self, topic: str, finding: str) -> None:
        self.lines.append((topic, finding))

    def text(self) -> str:
        width = max(len(t) for t, _ in self.lines)
        out = [f"{t:<{width}}  {f}" for t, f in self.lines]
        out += [f"! {p}" for p in self.problems] or ["no problems found"]
        return "\n".join(out)


def _version(module: str) -> str | None:
    try:
        return str(importlib.import_module(module).__version__)
    except Exception:  # not installed, or broken: the caller says which
        return None


def cuda_libraries() -> dict[str, list[str]]:
    """Where each CUDA library is found: the loader's search path and pip's nvidia wheels."""
    found: dict[str, list[str]] = {}
    roots = [Path(p) / "nvidia" for p in sys.path if p and (Path(p) / "nvidia").is_dir()]
    for name in CUDA_LIBRARIES:
        places = []
        system = ctypes.util.find_library(name)
        if system:
            places.append(system)
        for root in roots:
            places += sorted(str(p) for p in root.glob(f"*/lib/lib{name}.so*"))[:1]
        found[name] = places
    return found


def _tiny_onnx() -> bytes:
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "doctor",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _reason(lines: list[str]) -> str:
    """The first 'cannot open shared object' / 'Require ...' phrase of onnxruntime's output."""
    for line in lines:
        match = re.search(r"(lib[\w.+-]+\.so[\w.]*): cannot open shared object file", line)
        if match:
            return f"{match.group(1)} not found"
    for line in lines:
        match = re.search(r"(Require .+?)\.?\s+Please", line) or re.search(r"(Require .+)", line)
        if match:
            return match.group(1)
    return "falls back to the CPU"


def working_providers() -> tuple[list[str], list[str], dict[str, str]]:
    """(providers onnxruntime lists, providers a session really runs on, why the others fail)."""
    import numpy as np
    import onnxruntime as ort

    listed = list(ort.get_available_providers())
    working, why = [], {}
    model = _tiny_onnx()
    for provider in listed:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        with captured_native_output((1, 2)) as printed:
            try:
                session = ort.InferenceSession(model, options, providers=[provider])
                used = session.get_providers()[0] == provider
                ok = used and np.allclose(session.run(None, {"x": np.ones(2, np.float32)})[0], 2)
            except Exception as exc:
                ok, printed = False, [str(exc)]
        if ok:
            working.append(provider)
        else:
            why[provider] = _reason(printed)
    return listed, working, why


def _tensorflow(report: Report) -> bool:
    """Reports TensorFlow; returns whether it sees a GPU."""
    version = None
    try:
        from .quiet_tf import import_tensorflow

        tf = import_tensorflow()
        version = tf.__version__
        gpus = tf.config.list_physical_devices("GPU")
        build = tf.sysconfig.get_build_info()
        cuda = build.get("cuda_version", "none")
        report.add("tensorflow", f"{version}, built for CUDA {cuda} / cuDNN "
                   f"{build.get('cudnn_version', 'none')}; GPUs: "
                   f"{', '.join(g.name for g in gpus) or 'none'}")
        return bool(gpus)
    except Exception as exc:
        report.add("tensorflow", f"not usable ({type(exc).__name__}: {str(exc)[:80]})"
                   if version is None else f"{version}, error: {exc}")
    return False


def _jax(report: Report) -> tuple[bool, bool]:
    """Reports JAX; returns (usable, sees a GPU)."""
    try:
        import jax

        devices = jax.devices()
        kinds = sorted({d.platform for d in devices})
        report.add("jax", f"{jax.__version__}; devices: {len(devices)} x "
                   f"{'/'.join(kinds)} ({devices[0].device_kind})")
        return True, "gpu" in kinds
    except ImportError:
        report.add("jax", "not installed (pip install 'cxraug[jax]', or 'cxraug[jax-cuda]' on "
                   "NVIDIA GPUs)")
    except Exception as exc:
        report.add("jax", f"not usable ({type(exc).__name__}: {str(exc)[:80]})")
    return False, False


def diagnose() -> Report:
    report = Report()
    report.add("cxraug", f"{__version__} on Python {platform.python_version()}, "
               f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores")
    backend = os.environ.get("KERAS_BACKEND") or _keras_json_backend() or "tensorflow"
    tf_gpu = _tensorflow(report)  # first: Keras on TensorFlow imports it; this import is quiet
    jax_ok, jax_gpu = _jax(report)
    report.lines.insert(1, ("keras", f"{_version('keras') or 'not installed'}; backend {backend} "
                                     "(KERAS_BACKEND: tensorflow, the default, or jax)"))
    if backend not in ("tensorflow", "jax"):
        report.problems.append(f"KERAS_BACKEND={backend}: cxraug trains on tensorflow or jax")
    found = cuda_libraries()
    report.add("CUDA libraries", "; ".join(
        f"{name}: {Path(places[0]).name if places else 'not found'}"
        for name, places in found.items()))
    try:
        listed, working, why = working_providers()
        import onnxruntime as ort

        report.add("onnxruntime", f"{ort.__version__}; providers that work: "
                   f"{', '.join(working) or 'none'} (listed: {', '.join(listed)})")
        gpu_here = tf_gpu or jax_gpu or Path("/dev/nvidia0").exists()
        if "CUDAExecutionProvider" in why and not gpu_here:
            report.add("onnxruntime CUDA", f"unusable ({why['CUDAExecutionProvider']}); no GPU "
                       "here: augment runs on the CPU")
        elif "CUDAExecutionProvider" in why:
            report.problems.append(
                f"onnxruntime lists CUDAExecutionProvider but a session cannot use it "
                f"({why['CUDAExecutionProvider']}): augment --device cuda would stop, --device "
                "auto runs on the CPU")
    except Exception as exc:
        report.add("onnxruntime", f"not usable ({type(exc).__name__}: {str(exc)[:80]})")
        report.problems.append("onnxruntime does not load: augment cannot run")
    if backend == "jax" and not jax_ok:
        report.problems.append("KERAS_BACKEND=jax but JAX is not usable: train cannot run")
    return report


def _keras_json_backend() -> str | None:
    import json

    path = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "keras.json"
    try:
        return str(json.loads(path.read_text()).get("backend")) or None
    except (OSError, ValueError, AttributeError):
        return None


def main_text() -> str:
    return diagnose().text()


__all__ = ["Report", "cuda_libraries", "diagnose", "main_text", "working_providers"]
