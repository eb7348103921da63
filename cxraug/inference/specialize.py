"""Class-specialized copies of a conditional generator graph, for fast single-label inference.

Why: in a conditional generator every label-dependent tensor (the class embedding, the
conditional batch norm's per-sample scale and shift) is an ``[N, C, 1, 1]`` operand computed at
run time. onnxruntime cannot fold such an operand into the neighbouring convolution, and its
blocked NCHWc kernels have no per-sample multiply, so each conditional normalization leaves and
re-enters the blocked layout and runs as separate memory-bound passes (about a fifth of the
default generator's time at 128x128). ``augment`` generates one label at a time, so for a fixed
label all of that is a constant: :func:`specialize_for_label` evaluates the label-only part of
the graph once, for one label, and writes the results in as initializers. What remains is an
ordinary network with per-channel constants, which :func:`affine_chains_to_batchnorm` turns into
``BatchNormalization`` nodes that onnxruntime folds into the convolutions or keeps in the
blocked layout.

Exactness. The specialized graph computes the same function of ``z`` for that label; only
floating-point rounding differs (the constants are combined in float64 and rounded once), and
:class:`~cxraug.inference.generator.OnnxGenerator` checks every specialized session against the
full graph before using it. The exported file is never changed; this runs at session start, on
any cxraug ONNX generator (and declines, returning ``None``, on graphs it does not understand,
such as the paper's, whose label map is concatenated with a convolutional feature map).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from ..onnx_passes import affine_chains_to_batchnorm, drop_unused_initializers

#: Ops that may consume a label-derived constant with a leading batch dimension of 1: they
#: broadcast it over the batch exactly as they combined the per-sample rows.
_BROADCASTING = {"Add", "Sub", "Mul", "Div"}


def _label_subgraph(graph: Any, label_name: str, initializers: set[str]
                    ) -> tuple[list[Any], list[str]]:
    """Nodes computed from the label (and weights) only, in graph order, and the frontier: their
    outputs that the rest of the graph reads."""
    derived = {label_name}
    nodes = []
    for node in graph.node:
        inputs = [i for i in node.input if i]
        if any(i in derived for i in inputs) and all(i in derived or i in initializers
                                                     for i in inputs):
            derived.update(node.output)
            nodes.append(node)
    inside = {id(n) for n in nodes}
    frontier: list[str] = []
    for node in graph.node:
        if id(node) in inside:
            continue
        frontier += [i for i in node.input if i in derived and i not in frontier]
    frontier += [o.name for o in graph.output if o.name in derived and o.name not in frontier]
    return nodes, frontier


def _evaluate(model: Any, nodes: list[Any], frontier: list[str], label_name: str,
              label_value: np.ndarray) -> dict[str, np.ndarray] | None:
    """The frontier tensors for a batch of one label, computed by onnxruntime on the subgraph."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    needed = {i for n in nodes for i in n.input}
    label_input = [i for i in model.graph.input if i.name == label_name]
    sub = helper.make_model(
        helper.make_graph(
            nodes, "label_part", label_input,
            [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
             for name in frontier],
            initializer=[t for t in model.graph.initializer if t.name in needed]),
        opset_imports=model.opset_import, ir_version=model.ir_version)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(sub.SerializeToString(), opts,
                                       providers=["CPUExecutionProvider"])
        values = session.run(None, {label_name: label_value})
    except Exception:  # a frontier that is not float, an op the subgraph cannot run alone
        return None
    return dict(zip(frontier, values, strict=True))


def _split_concat_matmul(graph: Any, concat: Any, values: dict[str, np.ndarray],
                         initializers: dict[str, Any]) -> tuple[Any, Any] | None:
    """``MatMul(Concat([x, c]), W)`` with constant ``c`` -> ``MatMul(x, W_x) + c @ W_c``;
    returns (the MatMul, now on ``x`` alone, and the new ``Add`` to insert after it).

    The cxraug generator concatenates ``z`` with the class embedding before its first dense
    layer; with the embedding constant, its share of the product is a constant row.
    """
    from onnx import helper, numpy_helper

    consumers = [n for n in graph.node if concat.output[0] in n.input]
    axis = next((a.i for a in concat.attribute if a.name == "axis"), 0)
    variable = [i for i in concat.input if i not in values]
    if (len(consumers) != 1 or consumers[0].op_type != "MatMul" or len(variable) != 1
            or consumers[0].input[0] != concat.output[0]
            or consumers[0].input[1] not in initializers):
        return None
    matmul = consumers[0]
    weight = numpy_helper.to_array(initializers[matmul.input[1]]).astype(np.float64)
    constants = [values[i] for i in concat.input if i in values]
    if weight.ndim != 2 or any(c.ndim != 2 or c.shape[0] != 1 for c in constants) or axis not in (
            1, -1):
        return None
    width = weight.shape[0] - sum(c.shape[1] for c in constants)
    if width <= 0:
        return None
    rows, offset = {}, 0
    for name in concat.input:
        size = values[name].shape[1] if name in values else width
        rows[name] = (offset, offset + size)
        offset += size
    constant_row = sum(values[name].astype(np.float64) @ weight[a:b]
                       for name, (a, b) in rows.items() if name in values)
    a, b = rows[variable[0]]
    w_name, c_name, part = (matmul.input[1] + "__variable_rows",
                            matmul.output[0] + "__label_row", matmul.output[0] + "__variable")
    graph.initializer.append(numpy_helper.from_array(weight[a:b].astype(np.float32), w_name))
    graph.initializer.append(numpy_helper.from_array(
        np.asarray(constant_row, np.float32).reshape(1, -1), c_name))
    final = matmul.output[0]
    matmul.input[0], matmul.input[1], matmul.output[0] = variable[0], w_name, part
    row_add = helper.make_node("Add", [part, c_name], [final], name=matmul.name + "__label_row")
    return matmul, row_add


def specialize_for_label(model: Any, label_name: str, label_value: np.ndarray) -> Any | None:
    """A copy of ``model`` with input ``label_name`` fixed to ``label_value`` (a batch of one:
    ``[1]`` int64 or ``[1, C]`` float32), or ``None`` when the graph cannot be specialized."""
    import onnx
    from onnx import numpy_helper

    if label_name not in {i.name for i in model.graph.input}:
        return None
    model = copy.deepcopy(model)
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    nodes, frontier = _label_subgraph(graph, label_name, set(initializers))
    if not frontier or any(name in {o.name for o in graph.output} for name in frontier):
        return None
    values = _evaluate(model, nodes, frontier, label_name, label_value)
    if values is None:
        return None
    inside = {id(n) for n in nodes}
    kept = [n for n in graph.node if id(n) not in inside]
    del graph.node[:]
    graph.node.extend(kept)
    for node in list(graph.node):
        if not any(i in values for i in node.input):
            continue
        if node.op_type == "Concat":
            split = _split_concat_matmul(graph, node, values, initializers)
            if split is None:
                return None
            matmul, row_add = split
            graph.node.insert(list(graph.node).index(matmul) + 1, row_add)
            graph.node.remove(node)
        elif node.op_type not in _BROADCASTING:
            return None
    used = {i for n in graph.node for i in n.input}
    for name, value in values.items():
        if name in used:
            graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    inputs = [i for i in graph.input if i.name != label_name]
    del graph.input[:]
    graph.input.extend(inputs)
    drop_unused_initializers(graph)
    affine_chains_to_batchnorm(model)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError:
        return None
    return model
