"""ONNX graph passes shared by the export (clean-up of tf2onnx's graph, the float16 copy) and by
augment's class specialization (per-channel affine chains to ``BatchNormalization``). NO
TensorFlow: plain ``onnx`` protobuf rewriting and numpy. Every pass is exact (a re-ordering or
re-grouping of the same arithmetic); the callers verify the result numerically (the export's
parity check, the specialized sessions' check against the full graph).

Adding a pass: a function ``pass(model) -> int`` (rewrites made) here, called from
:func:`optimize_graph` (export) or from :mod:`cxraug.inference.specialize`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

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


def drop_unused_initializers(graph: Any) -> None:
    """Remove initializers no node or graph output reads."""
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


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
    drop_unused_initializers(model.graph)
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
    (onnxconverter-common's converter was tried instead: its graph of the cxraug smoke generator
    fails to load, a float16 output where a Less node must give float; this one passes the
    export's parity checks on every architecture.)
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
    drop_unused_initializers(model.graph)
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


# ------------------------------------------------------------------------------ affine chains
def _per_channel(node: Any, initializers: dict[str, Any]) -> tuple[str, np.ndarray] | None:
    """(tensor, values) when ``node`` is ``Mul``/``Add`` of an NCHW tensor and a per-channel
    constant shaped ``[1, C, 1, 1]`` or ``[C, 1, 1]`` (unambiguously axis 1 of a 4-D tensor)."""
    from onnx import numpy_helper

    if node.op_type not in ("Mul", "Add") or len(node.input) != 2:
        return None
    consts = [i for i in node.input if i in initializers]
    others = [i for i in node.input if i not in initializers]
    if len(consts) != 1 or len(others) != 1:
        return None
    value = numpy_helper.to_array(initializers[consts[0]])
    if (value.ndim == 4 and value.shape[0] == 1 and value.shape[2:] == (1, 1)) or (
            value.ndim == 3 and value.shape[1:] == (1, 1)):
        return others[0], value.reshape(-1).astype(np.float64)
    return None


def affine_chains_to_batchnorm(model: Any) -> int:
    """Chains of per-channel constant ``Mul``/``Add`` -> one ``BatchNormalization`` each.

    ``x * s + b`` as BatchNormalization(mean 0, variance 1, epsilon 0) is the same arithmetic,
    and onnxruntime folds it into a preceding convolution or runs it in its blocked NCHWc layout
    (with the following ReLU and nearest upsampling), where a bare ``Mul``/``Add`` pair makes it
    leave that layout. Returns how many chains were replaced.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    taken: set[int] = set()
    chains: list[tuple[list[Any], str, np.ndarray, np.ndarray]] = []
    for node in graph.node:
        head = None if id(node) in taken else _per_channel(node, initializers)
        if head is None:
            continue
        source, first = head
        scale, shift = np.ones(first.size), np.zeros(first.size)
        chain: list[Any] = []
        current = node
        while True:
            found = _per_channel(current, initializers)
            if found is None or found[1].size != first.size or (
                    chain and found[0] != chain[-1].output[0]) or id(current) in taken:
                break
            if current.op_type == "Mul":
                scale, shift = scale * found[1], shift * found[1]
            else:
                shift = shift + found[1]
            chain.append(current)
            nxt = consumers.get(current.output[0], [])
            if len(nxt) != 1 or current.output[0] in outputs:
                break
            current = nxt[0]
        taken.update(id(n) for n in chain)
        chains.append((chain, source, scale, shift))
    for chain, source, scale, shift in chains:
        name = chain[-1].output[0]
        stem = name + "__affine"
        params = {"scale": scale, "B": shift, "mean": np.zeros_like(scale),
                  "var": np.ones_like(scale)}
        for key, value in params.items():
            graph.initializer.append(numpy_helper.from_array(value.astype(np.float32),
                                                             f"{stem}_{key}"))
        bn = helper.make_node("BatchNormalization", [source] + [f"{stem}_{k}" for k in params],
                              [name], epsilon=0.0, name=stem)
        at = list(graph.node).index(chain[0])
        graph.node.insert(at, bn)
        for node in chain:
            graph.node.remove(node)
    drop_unused_initializers(graph)
    return len(chains)
