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


# ------------------------------------------------------------------------------ graph clean-up
_UNARY = {"Relu", "LeakyRelu", "Tanh", "Sigmoid", "Elu", "Selu", "Neg", "Abs", "Softplus",
          "HardSigmoid", "Erf", "Sqrt", "Exp", "Identity"}
_BINARY = {"Add", "Mul", "Sub", "Div", "Max", "Min", "PRelu"}
_TO_NHWC = [0, 2, 3, 1]
_TO_NCHW = [0, 3, 1, 2]


def _perm(node: Any) -> list[int] | None:
    for attr in node.attribute:
        if attr.name == "perm":
            return list(attr.ints)
    return None


class _Graph:
    """Index of one ONNX graph for rewriting passes (producers, consumers, shapes, constants)."""

    def __init__(self, model: Any) -> None:
        import onnx

        self.model = model
        self.g = model.graph
        inferred = onnx.shape_inference.infer_shapes(model)
        self.shapes: dict[str, list[int | None]] = {}
        for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(
                inferred.graph.output):
            t = vi.type.tensor_type
            if t.HasField("shape"):
                self.shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None
                                        for d in t.shape.dim]
        self.inits = {t.name: t for t in self.g.initializer}
        for name, t in self.inits.items():
            self.shapes[name] = list(t.dims)
        self.outputs = {o.name for o in self.g.output}
        self.consumers: dict[str, list[Any]] = {}
        for node in self.g.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def const(self, name: str) -> np.ndarray | None:
        from onnx import numpy_helper

        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        return None

    def rank(self, name: str) -> int | None:
        shape = self.shapes.get(name)
        return None if shape is None else len(shape)


def _rename_input(graph: Any, old: str, new: str) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def _bypass(model: Any, node: Any, src: str) -> bool:
    """Remove ``node`` (one output) by wiring its consumers to ``src``; False if impossible."""
    out = node.output[0]
    if out in {o.name for o in model.graph.output}:
        return False
    model.graph.node.remove(node)
    _rename_input(model.graph, out, src)
    return True


def _drop_noops(model: Any) -> int:
    """Identity nodes and Slices that keep every element (tf2onnx's ``x[:, None, None, :]``)."""
    removed = 0
    g = _Graph(model)
    for node in list(model.graph.node):
        if node.op_type == "Identity":
            removed += _bypass(model, node, node.input[0])
        elif node.op_type == "Slice" and len(node.input) >= 3:
            starts, ends = g.const(node.input[1]), g.const(node.input[2])
            steps = g.const(node.input[4]) if len(node.input) > 4 and node.input[4] else None
            if starts is None or ends is None or (len(node.input) > 4 and node.input[4]
                                                 and steps is None):
                continue
            steps = np.ones_like(starts) if steps is None else steps
            axes = (g.const(node.input[3]) if len(node.input) > 3 and node.input[3]
                    else np.arange(len(starts)))
            shape = g.shapes.get(node.input[0])
            if axes is None or shape is None:
                continue
            keep_all = all(
                s == 0 and st == 1 and (e >= 10**9 or (shape[a] is not None and e >= shape[a]))
                for s, e, a, st in zip(starts.tolist(), ends.tolist(), axes.tolist(),
                                       steps.tolist(), strict=True))
            if keep_all:
                removed += _bypass(model, node, node.input[0])
    return removed


def _sink_transposes(model: Any) -> int:
    """Cancel ``Transpose(NHWC) -> element-wise chain -> Transpose(NCHW)`` pairs.

    tf2onnx leaves these around per-sample scale/shift (conditional normalization), because the
    scale is not a constant. Running the chain in NCHW instead only needs the small broadcast
    operands (``[N, 1, 1, C]``) transposed, which costs nothing next to a full feature map.
    """
    from onnx import helper, numpy_helper

    done = 0
    changed = True
    while changed:
        changed = False
        g = _Graph(model)
        for t1 in list(model.graph.node):
            if t1.op_type != "Transpose" or _perm(t1) != _TO_NHWC:
                continue
            chain, cur, t2 = [], t1.output[0], None
            while True:
                cons = g.consumers.get(cur, [])
                if len(cons) != 1 or cur in g.outputs:
                    break
                node = cons[0]
                if node.op_type == "Transpose" and _perm(node) == _TO_NCHW:
                    t2 = node
                    break
                if node.op_type in _UNARY or (node.op_type == "Clip" and all(
                        not n or g.rank(n) == 0 for n in node.input[1:])):
                    if list(node.input).count(cur) != 1:
                        break
                    chain.append(node)
                elif node.op_type in _BINARY and len(node.input) == 2:
                    if list(node.input).count(cur) != 1:
                        break
                    other = node.input[1] if node.input[0] == cur else node.input[0]
                    shape = g.shapes.get(other)
                    if shape is None:
                        break
                    if len(shape) == 4 or int(np.prod([d or 2 for d in shape])) == 1:
                        pass
                    elif len(shape) == 1 and other in g.inits:
                        pass
                    else:
                        break
                    chain.append(node)
                else:
                    break
                cur = node.output[0]
            if t2 is None:
                continue
            if not chain:  # Transpose straight into its inverse
                if t2.output[0] in g.outputs:
                    continue
                _rename_input(model.graph, t2.output[0], t1.input[0])
                model.graph.node.remove(t1)
                model.graph.node.remove(t2)
                done += 1
                changed = True
                break
            new_nodes = []
            prev = t1.output[0]
            for node in chain:
                pos = [i for i, n in enumerate(node.input) if n == prev]
                if node.op_type in _BINARY:
                    idx = 1 - pos[0]
                    other = node.input[idx]
                    shape = g.shapes[other]
                    arr = g.const(other)
                    existing = {t.name for t in model.graph.initializer} | {
                        o for n in model.graph.node for o in n.output}
                    if len(shape) == 4 and arr is not None:
                        name = other + "__nchw"
                        if name not in existing:
                            model.graph.initializer.append(numpy_helper.from_array(
                                np.ascontiguousarray(arr.transpose(_TO_NCHW)), name))
                        node.input[idx] = name
                    elif len(shape) == 4:
                        name = other + "__nchw"
                        if name not in existing:
                            new_nodes.append((node, helper.make_node(
                                "Transpose", [other], [name], perm=_TO_NCHW,
                                name=name + "_transpose")))
                        else:  # made for an earlier chain: it must precede this one too
                            _move_before(model.graph, name, node)
                        node.input[idx] = name
                    elif len(shape) == 1 and arr is not None and arr.size > 1:
                        name = other + "__c11"
                        if name not in existing:
                            model.graph.initializer.append(
                                numpy_helper.from_array(arr.reshape(-1, 1, 1), name))
                        node.input[idx] = name
                prev = node.output[0]
            for node, new in new_nodes:
                index = list(model.graph.node).index(node)
                model.graph.node.insert(index, new)
            # Feed the chain with the NCHW tensor and let its end take over t2's output name.
            chain[0].input[list(chain[0].input).index(t1.output[0])] = t1.input[0]
            last_out = chain[-1].output[0]
            chain[-1].output[0] = t2.output[0]
            _rename_input(model.graph, last_out, t2.output[0])
            model.graph.node.remove(t1)
            model.graph.node.remove(t2)
            done += 1
            changed = True
            break
    return done


def _move_before(graph: Any, tensor: str, node: Any) -> None:
    """Move the producer of ``tensor`` just before ``node`` if it currently comes after it."""
    nodes = list(graph.node)
    producer = next(n for n in nodes if tensor in n.output)
    if nodes.index(producer) > nodes.index(node):
        graph.node.remove(producer)
        graph.node.insert(list(graph.node).index(node), producer)


def _transposes_to_reshapes(model: Any) -> int:
    """A Transpose that only moves size-1 axes is a Reshape, which onnxruntime does for free."""
    from onnx import helper, numpy_helper

    g = _Graph(model)
    count = 0
    for node in list(model.graph.node):
        if node.op_type != "Transpose":
            continue
        perm, shape = _perm(node), g.shapes.get(node.input[0])
        if perm is None or shape is None or any(d is None for d in shape[1:]) or perm[0] != 0:
            continue
        moved = [shape[p] for p in perm]
        if [p for p in perm if shape[p] != 1] != [i for i, d in enumerate(shape) if d != 1]:
            continue
        target = numpy_helper.from_array(np.array([0, *moved[1:]], dtype=np.int64),
                                         node.output[0] + "__shape")
        model.graph.initializer.append(target)
        index = list(model.graph.node).index(node)
        model.graph.node.remove(node)
        model.graph.node.insert(index, helper.make_node(
            "Reshape", [node.input[0], target.name], [node.output[0]],
            name=node.name + "_as_reshape"))
        count += 1
    return count


def _attr(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    for attr in node.attribute:
        if attr.name == name:
            value = helper.get_attribute_value(attr)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _set_attr(node: Any, name: str, value: Any) -> None:
    from onnx import helper

    for attr in list(node.attribute):
        if attr.name == name:
            node.attribute.remove(attr)
    node.attribute.append(helper.make_attribute(name, value))


def _integer_nearest_resizes(model: Any) -> int:
    """Nearest ``Resize`` by integer factors -> ``asymmetric``/``floor`` (the same pixels).

    TensorFlow's resize exports as ``tf_half_pixel_for_nn`` (deprecated since opset 13; onnxruntime
    warns on every session), which for an integer factor ``s`` picks source ``floor((x + .5)/s)
    = floor(x/s)``, exactly the ``asymmetric``/``floor`` rule that onnxruntime's fast nearest
    kernels (and its NCHWc layout) handle. ``half_pixel`` with a rounding mode also maps there.
    """
    g = _Graph(model)
    count = 0
    for node in model.graph.node:
        if node.op_type != "Resize" or _attr(node, "mode", "nearest") != "nearest":
            continue
        scales = g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if scales is None or scales.size == 0 or not np.all(
                (scales >= 1) & (scales == np.round(scales))):
            continue
        ctm = _attr(node, "coordinate_transformation_mode", "half_pixel")
        nearest = _attr(node, "nearest_mode", "round_prefer_floor")
        if (ctm == "tf_half_pixel_for_nn" and nearest == "floor") or (
                ctm == "half_pixel" and nearest.startswith("round")):
            _set_attr(node, "coordinate_transformation_mode", "asymmetric")
            _set_attr(node, "nearest_mode", "floor")
            count += 1
    return count


def _pointwise_before_upsample(model: Any) -> int:
    """``Resize(nearest, integer) -> Conv 1x1`` becomes ``Conv 1x1 -> Resize``: the same numbers.

    A 1x1 convolution acts on each pixel alone, so it commutes with nearest-neighbour copying;
    running it before the x2 upsampling costs a quarter of the FLOPs, and the upsampling then
    copies the (usually narrower) output instead of the input. The residual skip path of the
    cxraug generator (``Upsample2x -> Conv1x1``) is exactly this pattern.
    """
    g = _Graph(model)
    count = 0
    for resize in list(model.graph.node):
        if (resize.op_type != "Resize" or _attr(resize, "mode", "nearest") != "nearest"
                or _attr(resize, "coordinate_transformation_mode") != "asymmetric"
                or _attr(resize, "nearest_mode") != "floor" or len(resize.input) < 3):
            continue
        scales = g.const(resize.input[2])
        cons = g.consumers.get(resize.output[0], [])
        if (scales is None or scales.size != 4 or list(scales[:2]) != [1, 1]
                or len(cons) != 1 or resize.output[0] in g.outputs):
            continue
        conv = cons[0]
        weight = g.const(conv.input[1]) if len(conv.input) > 1 else None
        if (conv.op_type != "Conv" or conv.input[0] != resize.output[0] or weight is None
                or weight.shape[2:] != (1, 1)
                or any(v != 1 for v in _attr(conv, "strides", [1, 1]))
                or any(v != 1 for v in _attr(conv, "dilations", [1, 1]))
                or any(v != 0 for v in _attr(conv, "pads", [0, 0, 0, 0]))
                or _attr(conv, "auto_pad", "NOTSET") not in ("NOTSET", "VALID")):
            continue
        small = conv.output[0] + "__before_upsample"
        final = conv.output[0]
        conv.input[0] = resize.input[0]
        conv.output[0] = small
        resize.input[0] = small
        resize.output[0] = final
        nodes = list(model.graph.node)
        i, j = nodes.index(resize), nodes.index(conv)
        model.graph.node.remove(conv)
        model.graph.node.insert(i, conv)
        model.graph.node.remove(resize)
        model.graph.node.insert(j, resize)
        count += 1
    return count


def _split_single_output_convs(model: Any) -> int:
    """A ``Conv`` with one output channel and a ``kh x kw`` kernel -> two exact, cheaper convs.

    onnxruntime's blocked (NCHWc) convolution computes output channels in blocks of 8, so a
    one-channel output (every generator's last layer) costs 8x its FLOPs: for the paper's 16x16
    final convolution that is most of the generator's time. Splitting the kernel by rows gives
    ``Conv(Cin -> kh, 1 x kw)`` (one output channel per kernel row; same FLOPs as before, in full
    blocks) and a fixed ``Conv(kh -> 1, kh x 1)`` that adds the rows up with the vertical padding
    (``kh^2`` MACs per pixel).
    """
    from onnx import helper, numpy_helper

    g = _Graph(model)
    count = 0
    for node in list(model.graph.node):
        if node.op_type != "Conv" or len(node.input) < 2:
            continue
        weight = g.const(node.input[1])
        bias = g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if (weight is None or weight.ndim != 4 or weight.shape[0] != 1 or weight.shape[2] < 3
                or (len(node.input) > 2 and node.input[2] and bias is None)
                or _attr(node, "group", 1) != 1
                or any(v != 1 for v in _attr(node, "strides", [1, 1]))
                or any(v != 1 for v in _attr(node, "dilations", [1, 1]))
                or _attr(node, "auto_pad", "NOTSET") != "NOTSET"):
            continue
        kh = weight.shape[2]
        pt, pl, pb, pr = _attr(node, "pads", [0, 0, 0, 0])
        rows = np.ascontiguousarray(weight[0].transpose(1, 0, 2)[:, :, None, :])  # [kh,Cin,1,kw]
        adder = np.zeros((1, kh, kh, 1), dtype=weight.dtype)
        adder[0, np.arange(kh), np.arange(kh), 0] = 1
        base = node.output[0] + "__rows"
        model.graph.initializer.extend([numpy_helper.from_array(rows, base + "_w"),
                                        numpy_helper.from_array(adder, base + "_sum")])
        inputs = [base, base + "_sum"]
        if bias is not None:
            inputs.append(node.input[2])
        index = list(model.graph.node).index(node)
        model.graph.node.remove(node)
        model.graph.node.insert(index, helper.make_node(
            "Conv", inputs, [node.output[0]], kernel_shape=[kh, 1], pads=[pt, 0, pb, 0],
            name=base + "_add_rows"))
        model.graph.node.insert(index, helper.make_node(
            "Conv", [node.input[0], base + "_w"], [base], kernel_shape=[1, weight.shape[3]],
            pads=[0, pl, 0, pr], name=base + "_conv"))
        count += 1
    return count


def _drop_unused_initializers(model: Any) -> None:
    used = {name for node in model.graph.node for name in node.input}
    used |= {o.name for o in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def optimize_graph(model: Any) -> dict[str, int]:
    """Clean up tf2onnx's graph in place; returns how many rewrites each pass made.

    Every pass is exact (a re-ordering of the same arithmetic), and the parity check that follows
    an export verifies the result numerically.
    """
    import onnx

    stats = {"noops": _drop_noops(model), "resize": _integer_nearest_resizes(model),
             "transpose_pairs": _sink_transposes(model),
             "transpose_reshapes": _transposes_to_reshapes(model),
             "pointwise_before_upsample": _pointwise_before_upsample(model),
             "split_single_output_convs": _split_single_output_convs(model)}
    _drop_unused_initializers(model)
    del model.graph.value_info[:]
    onnx.checker.check_model(model)
    return stats


# ------------------------------------------------------------------------------ float16
#: Ops converted to float16; anything else keeps float32 behind Cast nodes (robust by default).
_FP16_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm", "Add", "Sub", "Mul", "Div", "Relu",
             "LeakyRelu", "Tanh", "Sigmoid", "Resize", "Transpose", "Reshape", "Concat",
             "DepthToSpace", "Gather", "Slice", "Unsqueeze", "Squeeze",
             "Max", "Min", "Tile", "Expand", "Flatten", "Pad", "Neg", "Identity", "Elu",
             "Sqrt"}
#: Inputs (by position) that must stay as they are whatever the data type (shapes, scales, roi).
_FP16_DATA_INPUTS = {"Resize": (0,), "Reshape": (0,), "Gather": (0,), "Slice": (0,),
                     "Unsqueeze": (0,), "Squeeze": (0,), "Tile": (0,), "Expand": (0,),
                     "Pad": (0, 2)}


def convert_float16(model: Any) -> Any:
    """A float16 copy with float32 inputs/outputs: weights halved in size for GPU inference.

    Only ops in an allow-list run in float16; float tensors flowing between float16 and float32
    parts get explicit Casts, so an op without a float16 kernel never sees half precision.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = _Graph(model)
    graph = model.graph
    elem: dict[str, int] = {}
    inferred = onnx.shape_inference.infer_shapes(model)
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(
            inferred.graph.output):
        elem[vi.name] = vi.type.tensor_type.elem_type
    for t in graph.initializer:
        elem[t.name] = t.data_type
    f32 = TensorProto.FLOAT
    half: dict[str, str] = {}  # float32 tensor name -> its float16 twin
    new_nodes: list[Any] = []

    def to_half(name: str) -> str:
        if name in half:
            return half[name]
        twin = name + "__fp16"
        if name in g.inits:
            arr = numpy_helper.to_array(g.inits[name]).astype(np.float16)
            graph.initializer.append(numpy_helper.from_array(arr, twin))
        else:
            new_nodes.append(helper.make_node("Cast", [name], [twin], to=TensorProto.FLOAT16,
                                              name=twin + "_cast"))
        half[name] = twin
        return twin

    produced_half: dict[str, str] = {}  # original float32 name -> float16 output name
    for node in list(graph.node):
        for i, name in enumerate(node.input):  # rewire inputs made float16 upstream
            if name in produced_half and (node.op_type not in _FP16_OPS or (
                    node.op_type in _FP16_DATA_INPUTS and i not in _FP16_DATA_INPUTS[
                        node.op_type])):
                node.input[i] = _cast_back(produced_half[name], name, new_nodes, half)
            elif name in produced_half:
                node.input[i] = produced_half[name]
        if node.op_type not in _FP16_OPS:
            new_nodes.append(node)
            continue
        data_idx = _FP16_DATA_INPUTS.get(node.op_type)
        for i, name in enumerate(node.input):
            if not name or (data_idx is not None and i not in data_idx):
                continue
            if elem.get(name) == f32:
                node.input[i] = to_half(name)
        for j, out in enumerate(node.output):
            if elem.get(out) == f32:
                node.output[j] = out + "__fp16"
                produced_half[out] = out + "__fp16"
        new_nodes.append(node)
    # Graph outputs stay float32.
    for out in graph.output:
        if out.name in produced_half:
            new_nodes.append(helper.make_node("Cast", [produced_half[out.name]], [out.name],
                                              to=f32, name=out.name + "_to_fp32"))
    del graph.node[:]
    graph.node.extend(_toposort(new_nodes, {i.name for i in graph.input} | set(g.inits)
                                | {t.name for t in graph.initializer}))
    _drop_unused_initializers(model)
    del graph.value_info[:]
    onnx.checker.check_model(model)
    return model


def _cast_back(half_name: str, name: str, new_nodes: list[Any], cache: dict[str, str]) -> str:
    """The float32 version of a tensor that an upstream float16 op produced."""
    from onnx import TensorProto, helper

    key = "__f32__" + name
    if key not in cache:
        out = name + "__f32"
        new_nodes.append(helper.make_node("Cast", [half_name], [out], to=TensorProto.FLOAT,
                                          name=out + "_cast"))
        cache[key] = out
    return cache[key]


def _toposort(nodes: list[Any], available: set[str]) -> list[Any]:
    """Order nodes so each comes after its inputs' producers (Casts were appended late)."""
    ready = set(available) | {""}
    remaining = list(nodes)
    ordered: list[Any] = []
    while remaining:
        progress = False
        rest = []
        for node in remaining:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
                progress = True
            else:
                rest.append(node)
        if not progress:
            raise RuntimeError("float16 conversion produced a graph with a cycle or a missing "
                               f"input: {[n.name for n in rest[:3]]}")
        remaining = rest
    return ordered


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
    from ..copy_reference import build_reference, reference_path

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
