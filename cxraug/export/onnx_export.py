"""Export a generator to one self-describing ONNX file, checked against Keras before it is kept.

Why each step exists:

* **Named signature.** tf2onnx converts a ``tf.function`` whose inputs are ``z`` (float32) and
  ``label`` (int64) or ``labels`` (float32 multi-hot); the Keras model takes int32 labels, so the
  cast lives inside the graph and every ONNX client feeds NumPy's default integer type.
* **Graph clean-up.** tf2onnx keeps TensorFlow's NHWC layout at the graph edges and wraps each NCHW
  ``Conv`` in ``Transpose`` pairs; the transposes it cannot cancel sit around per-sample
  (class-conditional) scale/shift tensors. :func:`optimize_graph` sinks them through those
  element-wise ops, drops no-op ``Slice``/``Identity`` nodes, turns layout changes that only
  move size-1 axes into free ``Reshape`` nodes, gives integer nearest ``Resize`` nodes the
  ``asymmetric``/``floor`` form that onnxruntime's fast (NCHWc) upsampling handles, runs 1x1
  convolutions before (instead of after) an upsampling, and splits one-output-channel
  convolutions (the last layer; onnxruntime computes outputs in blocks of 8) by kernel rows,
  so onnxruntime sees a plain NCHW
  ``Conv -> Mul -> Add -> Relu -> Resize`` chain. Every rewrite is exact, and everything is plain
  ONNX: the file runs on any provider (onnxruntime's own provider-specific fusions, e.g. NCHWc,
  happen at session start, so no ORT-optimized file is shipped).
* **Metadata.** ``metadata_props`` carry everything ``augment``/``evaluate``/``inspect`` need
  (docs/ARCHITECTURE.md, "ONNX generator"), so the file alone describes itself.
* **Parity.** The exported file is run in onnxruntime (CPU) and compared with the Keras model in
  inference mode on the same 256 inputs *before* it is renamed into place: a file at ``out`` has
  always passed the check, and a failed export leaves nothing behind.
* **fp16.** :func:`convert_float16` keeps the inputs/outputs float32 (Casts inside the graph) and
  converts only ops known to be numerically safe in half precision.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..contract import IMAGE, INPUTS, LABEL, LABELS, META_KEYS, Z
from ..errors import CxrError
from ..io_utils import atomic_path
from ..onnx_passes import convert_float16, optimize_graph

#: Inputs of the ONNX file per label mode and its output (docs/ARCHITECTURE.md).
ONNX_INPUTS = INPUTS
OUTPUT_NAME = IMAGE
PARITY_N = 256
PARITY_TOL = 1e-4
FP16_TOL = 2e-2
#: tf2onnx accepts opsets 9-18; Resize with the modes used here needs 13+.
OPSETS = range(13, 19)


@dataclass
class ExportResult:
    """What was written and how closely it matches Keras."""

    path: Path
    fp16_path: Path | None
    max_abs_diff: float
    fp16_max_abs_diff: float | None
    provider: str
    n_checked: int
    metadata: dict[str, str]
    op_counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    source: str = ""
    reference: str = ""  # the privacy filter's training reference, or why there is none

    def summary(self) -> str:
        size = self.path.stat().st_size / 1e6 if self.path.exists() else float("nan")
        ops = ", ".join(f"{k} {v}" for k, v in sorted(self.op_counts.items(),
                                                        key=lambda kv: (-kv[1], kv[0]))[:6])
        meta = self.metadata
        mode = meta.get("label_mode", "?")
        inputs = {"index": "z float32 [N, {l}], label int64 [N]",
                  "multi-hot": "z float32 [N, {l}], labels float32 [N, {c}]",
                  "none": "z float32 [N, {l}]"}[mode].format(
            l=meta.get("latent_dim"), c=len(json.loads(meta.get("class_names", "[]"))))
        s = meta.get("image_size")
        lines = [
            f"wrote {self.path} ({size:.1f} MB{', ' + self.source if self.source else ''})",
            f"  inputs {inputs}; output image float32 [N, {s}, {s}, 1] in [-1, 1]",
            f"  graph: {sum(self.op_counts.values())} nodes ({ops})",
            f"  checked against Keras on {self.n_checked} inputs with onnxruntime "
            f"{self.provider}: max |diff| {self.max_abs_diff:.2e} (limit {PARITY_TOL:.0e})",
        ]
        if self.fp16_path is not None:
            lines.append(f"  float16 copy {self.fp16_path}: max |diff| "
                         f"{self.fp16_max_abs_diff:.2e} (limit {FP16_TOL:.0e})")
        if self.reference:
            lines.append(f"  {self.reference}")
        lines.append(f"  done in {self.seconds:.1f} s; `cxraug inspect {self.path}` shows the card")
        return "\n".join(lines)


# ------------------------------------------------------------------------------ model contract
@dataclass(frozen=True)
class GeneratorSpec:
    """The interface of a Keras generator, read from its inputs and output."""

    label_mode: str
    latent_dim: int
    image_size: int
    num_labels: int | None  # multi-hot width; None for index/none models
    keras_inputs: tuple[tuple[str, str], ...]  # (name, dtype) in the model's input order


def generator_spec(model: Any) -> GeneratorSpec:
    """Read and check the models contract: inputs ``z`` + ``label``/``labels``, output NHWC x1."""
    inputs = list(getattr(model, "inputs", None) or [])
    if not inputs:
        raise ValueError("the generator must be a functional Keras model with named inputs")
    named = {_input_name(t): t for t in inputs}
    if set(named) == {Z}:
        mode = "none"
    elif set(named) == {Z, LABEL}:
        mode = "index"
    elif set(named) == {Z, LABELS}:
        mode = "multi-hot"
    else:
        raise ValueError(f"generator inputs {sorted(named)} do not follow the models contract "
                         "(z, and label or labels)")
    z_shape = tuple(named[Z].shape)
    if len(z_shape) != 2 or not z_shape[1]:
        raise ValueError(f"generator input z must be [N, latent], got {z_shape}")
    out_shape = tuple(model.outputs[0].shape)
    if len(out_shape) != 4 or out_shape[3] != 1 or out_shape[1] != out_shape[2] or not out_shape[1]:
        raise ValueError(f"generator output must be [N, H, H, 1], got {out_shape}")
    num_labels = None
    if mode == "multi-hot":
        num_labels = int(tuple(named[LABELS].shape)[-1])
    return GeneratorSpec(
        label_mode=mode, latent_dim=int(z_shape[1]), image_size=int(out_shape[1]),
        num_labels=num_labels,
        keras_inputs=tuple((_input_name(t), str(t.dtype)) for t in inputs),
    )


def _input_name(tensor: Any) -> str:
    return str(tensor.name).split(":")[0]


# ------------------------------------------------------------------------------ conversion
def to_onnx(model: Any, opset: int = 17) -> Any:
    """Convert with tf2onnx from a ``tf.function`` with the ONNX contract's named signature."""
    import tensorflow as tf

    spec = generator_spec(model)
    onnx_specs = {Z: tf.TensorSpec([None, spec.latent_dim], tf.float32, name=Z),
                  LABEL: tf.TensorSpec([None], tf.int64, name=LABEL),
                  LABELS: tf.TensorSpec([None, spec.num_labels], tf.float32, name=LABELS)}
    names = ONNX_INPUTS[spec.label_mode]
    signature = [onnx_specs[n] for n in names]
    keras_dtypes = dict(spec.keras_inputs)
    order = [name for name, _ in spec.keras_inputs]

    @tf.function(input_signature=signature)
    def generate(*args: Any) -> dict[str, Any]:
        given = dict(zip(names, args, strict=True))
        feeds = [tf.cast(given[n], keras_dtypes[n]) if keras_dtypes[n] != given[n].dtype.name
                 else given[n] for n in order]
        image = model(feeds if len(feeds) > 1 else feeds[0], training=False)
        return {OUTPUT_NAME: tf.cast(image, tf.float32)}

    import tf2onnx

    with _quiet_tf2onnx():
        proto, _ = tf2onnx.convert.from_function(generate, input_signature=signature,
                                                 opset=opset)
    return proto


@contextlib.contextmanager
def _quiet_tf2onnx() -> Any:
    """tf2onnx logs every pass at INFO/WARNING; users only need our own summary."""
    loggers = [logging.getLogger(n) for n in ("tf2onnx", "tensorflow")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


# ------------------------------------------------------------------------------ metadata
def build_metadata(spec: GeneratorSpec, metadata: dict[str, Any]) -> dict[str, str]:
    """Strings for ``metadata_props``: the caller's facts plus what the model itself says."""
    given = dict(metadata)
    names = list(given.pop("class_names", []) or [])
    if spec.label_mode != "none" and not names:
        raise ValueError("metadata['class_names'] is required for a conditional generator")
    if spec.num_labels is not None and len(names) != spec.num_labels:
        raise ValueError(f"{len(names)} class names for a {spec.num_labels}-wide labels input")
    if "label_mode" in given and given["label_mode"] != spec.label_mode:
        raise ValueError(f"metadata label_mode {given['label_mode']!r} but the model's inputs "
                         f"say {spec.label_mode!r}")
    out = {
        "cxraug_version": __version__,
        "class_names": json.dumps(names),
        "latent_dim": str(spec.latent_dim),
        "image_size": str(spec.image_size),
        "label_mode": spec.label_mode,
        "recipe": "", "recipe_name": "", "arch": "", "data_fingerprint": "", "epoch": "",
        "step": "",
        "exported_at": datetime.now(timezone.utc).replace(microsecond=0).isoformat()
        .replace("+00:00", "Z"),
    }
    for key, value in given.items():
        if key in ("latent_dim", "image_size", "label_mode"):
            continue
        out[key] = value if isinstance(value, str) else json.dumps(value, default=str)
    return out


def _stamp(model: Any, meta: dict[str, str], spec: GeneratorSpec) -> None:
    del model.metadata_props[:]
    for key in (*META_KEYS, *sorted(set(meta) - set(META_KEYS))):
        if key in meta:
            entry = model.metadata_props.add()
            entry.key, entry.value = key, meta[key]
    model.producer_name = "cxraug"
    model.producer_version = __version__
    model.domain = "org.cxraug"
    model.model_version = 1
    what = {"index": "class index", "multi-hot": "multi-hot labels", "none": "no label"}
    model.doc_string = (
        f"cxraug {meta.get('arch') or 'GAN'} generator: z float32 [N, {spec.latent_dim}] + "
        f"{what[spec.label_mode]} -> image float32 [N, {spec.image_size}, {spec.image_size}, 1] "
        f"in [-1, 1]. Classes: {', '.join(json.loads(meta['class_names'])) or '-'}. "
        "Made by `cxraug export-onnx`; see `cxraug inspect`.")
    graph_doc = {Z: "latent vector, standard normal", LABEL: "class index (int64)",
                 LABELS: "multi-hot class vector (float32 0/1)"}
    for vi in list(model.graph.input) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "N"  # one name for the batch axis of every input and output
    for vi in model.graph.input:
        vi.doc_string = graph_doc.get(vi.name, "")
    for vi in model.graph.output:
        vi.doc_string = "grayscale image in [-1, 1]; uint8 = round((x + 1) * 127.5)"


# ------------------------------------------------------------------------------ parity
def parity_inputs(spec: GeneratorSpec, num_classes: int, n: int = PARITY_N,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic check inputs covering every class (and random multi-hot combinations)."""
    rng = np.random.default_rng(seed)
    feeds = {Z: rng.standard_normal((n, spec.latent_dim)).astype(np.float32)}
    if spec.label_mode == "index":
        feeds[LABEL] = (np.arange(n) % num_classes).astype(np.int64)
    elif spec.label_mode == "multi-hot":
        hot = (rng.random((n, num_classes)) < 0.3).astype(np.float32)
        hot[np.arange(n) % 4 == 0] = 0.0  # "No Finding"-style all-zero rows too
        feeds[LABELS] = hot
    return feeds


def keras_outputs(model: Any, spec: GeneratorSpec, feeds: dict[str, np.ndarray],
                  batch: int = 64) -> np.ndarray:
    """The Keras generator in inference mode (``training=False``) on ``feeds``."""
    dtypes = dict(spec.keras_inputs)
    order = [name for name, _ in spec.keras_inputs]
    n = len(feeds[Z])
    parts = []
    for start in range(0, n, batch):
        args = [feeds[name][start:start + batch].astype(dtypes[name]) for name in order]
        out = model(args if len(args) > 1 else args[0], training=False)
        parts.append(np.asarray(out, dtype=np.float32))
    return np.concatenate(parts)


def onnx_outputs(path: str | os.PathLike, feeds: dict[str, np.ndarray],
                 batch: int = 64) -> tuple[np.ndarray, str]:
    """The ONNX file in onnxruntime's CPU provider (the reference every machine has)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    n = len(feeds[Z])
    parts = [session.run([OUTPUT_NAME], {k: v[s:s + batch] for k, v in feeds.items()})[0]
             for s in range(0, n, batch)]
    return np.concatenate(parts), session.get_providers()[0]


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b|, and infinity for mismatched shapes or any non-finite value."""
    if a.shape != b.shape or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("inf")
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0


# ------------------------------------------------------------------------------ entry points
def _check_writable(out: Path) -> None:
    """Fail before minutes of conversion when ``out`` cannot be written."""
    if out.is_dir():
        raise CxrError(f"--out {out} is a folder; give a file name such as {out / 'model.onnx'}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.", suffix=".probe"):
            pass
    except OSError as exc:
        raise CxrError(f"cannot write {out} ({exc.strerror or exc}); choose a writable --out "
                       "location") from None


def fp16_path_for(out: Path) -> Path:
    """``model.onnx`` -> ``model.fp16.onnx``."""
    return out.with_name(f"{out.stem}.fp16{out.suffix or '.onnx'}")


def export_generator(model: Any, out: str | os.PathLike, metadata: dict[str, Any],
                     opset: int = 17, fp16: bool = False, progress: bool = True,
                     tolerance: float = PARITY_TOL, source: str = "") -> ExportResult:
    """Export any Keras generator that follows the models contract; see the module docstring.

    ``metadata`` must hold ``class_names`` for conditional models; ``recipe``, ``recipe_name``,
    ``arch``, ``data_fingerprint``, ``epoch`` and ``step`` are recorded when given. The file at
    ``out`` (and ``<name>.fp16.onnx`` with ``fp16``) appears only after the parity check passed.
    """
    from ..progress import progress_bar

    started = time.perf_counter()
    out = Path(out)
    if opset not in OPSETS:
        raise CxrError(f"opset {opset} is not supported; use one of {OPSETS.start}.."
                       f"{OPSETS.stop - 1} (17 is the default)")
    _check_writable(out)
    spec = generator_spec(model)
    meta = build_metadata(spec, metadata)
    num_classes = max(1, len(json.loads(meta["class_names"])))
    steps = 4 + (2 if fp16 else 0)
    bar = progress_bar(total=steps, desc=f"export {out.name}", unit="step", disable=not progress,
               file=sys.stderr, leave=False)
    try:
        bar.set_postfix_str("tf2onnx")
        proto = to_onnx(model, opset=opset)
        bar.update()
        bar.set_postfix_str("graph clean-up")
        optimize_graph(proto)
        _stamp(proto, meta, spec)
        bar.update()
        bar.set_postfix_str("Keras reference")
        feeds = parity_inputs(spec, num_classes)
        reference = keras_outputs(model, spec, feeds)
        bar.update()
        fp16_out = fp16_path_for(out) if fp16 else None
        with contextlib.ExitStack() as stack:
            tmp = stack.enter_context(atomic_path(out, suffix=".onnx"))
            tmp.write_bytes(proto.SerializeToString())
            bar.set_postfix_str("onnxruntime check")
            got, provider = onnx_outputs(tmp, feeds)
            diff = max_abs_diff(got, reference)
            bar.update()
            if not diff <= tolerance:
                raise CxrError(
                    f"export check failed: the ONNX model differs from the Keras generator by "
                    f"{diff:.2e} (limit {tolerance:.0e}) on {len(reference)} inputs; nothing was "
                    f"written to {out}; please report this with the run folder")
            diff16 = None
            if fp16_out is not None:
                bar.set_postfix_str("float16 copy")
                half = convert_float16(proto)
                tmp16 = stack.enter_context(atomic_path(fp16_out, suffix=".onnx"))
                tmp16.write_bytes(half.SerializeToString())
                bar.update()
                got16, _ = onnx_outputs(tmp16, feeds)
                diff16 = max_abs_diff(got16, reference)
                bar.update()
                if not diff16 <= FP16_TOL:
                    raise CxrError(
                        f"float16 check failed: the fp16 model differs from Keras by "
                        f"{diff16:.2e} (limit {FP16_TOL:.0e}); nothing was written to {out} or "
                        f"{fp16_out}; export without --fp16 and run the float32 file on the GPU")
    except OSError as exc:
        raise CxrError(f"cannot write {out} ({exc.strerror or exc}); choose a writable --out "
                       "location") from None
    finally:
        bar.close()
    return ExportResult(
        path=out, fp16_path=fp16_out, max_abs_diff=diff, fp16_max_abs_diff=diff16,
        provider=provider, n_checked=len(reference), metadata=meta,
        op_counts=dict(Counter(n.op_type for n in proto.graph.node)),
        seconds=time.perf_counter() - started, source=source,
    )


def export_run(run: str | os.PathLike, out: str | os.PathLike, checkpoint: str | None = None,
               fp16: bool = False, opset: int = 17, progress: bool = True) -> ExportResult:
    """Export a run's generator (EMA weights where the run keeps them) with its metadata."""
    run, out = Path(run), Path(out)
    if not run.exists():
        raise CxrError(f"run folder {run} not found; give the --out folder of `cxraug train`")
    if not run.is_dir():
        raise CxrError(f"{run} is a file, not a run folder; give the --out folder of "
                       "`cxraug train`")
    _check_writable(out)
    from ..training.run import load_generator

    loaded = load_generator(run, checkpoint)
    recipe = loaded.recipe
    metadata: dict[str, Any] = {
        "class_names": list(loaded.class_names),
        "recipe": recipe.to_toml(),
        "recipe_name": recipe.name,
        "arch": recipe.model.arch,
        "data_fingerprint": loaded.data_fingerprint or "",
        "view": getattr(loaded, "view", "") or "",
        "train_images": str(getattr(loaded, "n_images", 0) or ""),
        "epoch": str(loaded.epoch),
        "step": str(loaded.step),
        "checkpoint": loaded.checkpoint,
        "weights": "ema" if getattr(loaded, "ema", False) else "generator",
    }
    source = (f"{run} {loaded.checkpoint}, epoch {loaded.epoch}, "
              f"{'EMA' if getattr(loaded, 'ema', False) else 'raw'} weights")
    result = export_generator(loaded.model, out, metadata, opset=opset, fp16=fp16,
                              progress=progress, source=source)
    result.reference = _write_reference(run, Path(out), loaded.data_fingerprint or "", progress)
    return result


def _write_reference(run: Path, out: Path, fingerprint: str, progress: bool) -> str:
    """``MODEL.trainref.h5`` beside the model from the run's training cache, so that augment's
    privacy filter is on by default; a line saying what was written or why not."""
    from ..copy_reference import reference_path
    from ..data.reference import build_reference

    target = reference_path(out)
    try:
        data = json.loads((run / "run.json").read_text(encoding="utf-8")).get("data", {})
    except (OSError, ValueError):
        data = {}
    cache = Path(str(data.get("path", "")))
    if not data.get("path") or not cache.is_file():
        target.unlink(missing_ok=True)  # never leave another model's reference beside this one
        return (f"no training reference written: the run's cache {cache} is gone, so augment's "
                "privacy filter needs --data CACHE")
    from ..data.cache import CacheReader

    with CacheReader(cache) as reader:
        same = str(reader.fingerprint) == fingerprint
    if not same:
        target.unlink(missing_ok=True)
        return (f"no training reference written: {cache} is no longer the data the run was "
                "trained on (fingerprint differs)")
    try:
        build_reference(cache, target, progress=progress)
    except CxrError as exc:
        target.unlink(missing_ok=True)
        return f"no training reference written: {exc}"
    return (f"training reference {target} ({target.stat().st_size / 1e6:.1f} MB, for augment's "
            "privacy filter; it holds 32x32 thumbnails of the training images: keep it with them, "
            "never ship it with synthetic data)")
