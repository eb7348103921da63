"""OnnxGenerator and the model card, on small ONNX generators built here with onnx.helper.

No TensorFlow: :func:`make_generator` writes a file with the exported-generator interface
(docs/ARCHITECTURE.md, "ONNX generator") whose image is
``tanh(x + conv(relu(conv(x))))`` with ``x = reshape(z @ W + embedding(label))``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from helpers import PAPER7, make_generator
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh

from cxraug.errors import CxrError
from cxraug.grid import to_uint8
from cxraug.inference.generator import OnnxGenerator, model_card


def _cuda_usable(path: Path) -> bool:
    try:
        OnnxGenerator(path, device="cuda")
    except CxrError:
        return False
    return True


def test_generate_shapes_range_and_dynamic_batch(tmp_path: Path) -> None:
    gen = OnnxGenerator(make_generator(tmp_path / "g.onnx"), device="cpu")
    assert gen.class_names == list(PAPER7)
    assert (gen.latent_dim, gen.image_size, gen.label_mode) == (8, 16, "index")
    assert gen.meta["epoch"] == 3 and gen.meta["recipe_name"] == "test"
    rng = np.random.default_rng(0)
    for n in (1, 5, 33):  # the batch dimension is dynamic
        out = gen.generate(rng.standard_normal((n, 8)), np.arange(n) % 7)
        assert out.shape == (n, 16, 16) and out.dtype == np.float32
        assert out.min() >= -1.0 and out.max() <= 1.0
    z = rng.standard_normal((4, 8)).astype(np.float32)
    a, b = gen(z, np.zeros(4)), gen(z, np.full(4, 6))
    assert not np.allclose(a, b)  # the label conditions the image
    with pytest.raises(ValueError):
        gen.generate(z, np.full(4, 7))  # out of range class index


@pytest.mark.parametrize("label_mode", ["index", "multi-hot"])
def test_label_specialized_sessions_match_the_full_graph(tmp_path: Path, label_mode: str) -> None:
    """Each label runs on its own specialized graph: same images as the full graph (to float
    rounding), one session per distinct label, and a row's image never depends on its batch."""
    path = make_generator(tmp_path / "g.onnx", label_mode=label_mode)
    fast = OnnxGenerator(path, device="cpu")
    full = OnnxGenerator(path, device="cpu", specialize=False)
    rng = np.random.default_rng(1)
    z = rng.standard_normal((12, 8)).astype(np.float32)
    if label_mode == "index":
        labels = np.array([0, 0, 3, 3, 3, 6, 0, 6, 1, 1, 3, 0])
    else:
        labels = np.zeros((12, 7), np.float32)
        labels[np.arange(12), np.arange(12) % 3] = 1
        labels[::4, 5] = 1  # label combinations are labels of their own
    out = fast.generate(z, labels)
    assert np.max(np.abs(out - full.generate(z, labels))) < 1e-5
    assert fast.specialized_labels == len(np.unique(labels, axis=0))
    assert full.specialized_labels == 0
    one_by_one = np.concatenate([fast.generate(z[i:i + 1], labels[i:i + 1]) for i in range(12)])
    assert np.array_equal(one_by_one, out)


def test_specialization_declines_graphs_it_cannot_rewrite() -> None:
    """A label map concatenated with a feature map (the paper's generator) cannot become a
    constant row: the rewrite returns None and generation keeps the full graph."""
    from cxraug.inference.specialize import specialize_for_label
    from cxraug.onnx_passes import affine_chains_to_batchnorm

    nodes = [oh.make_node("Gather", ["E", "label"], ["emb"]),
             oh.make_node("Concat", ["z", "emb"], ["h"], axis=1),
             oh.make_node("Relu", ["h"], ["image"])]
    graph = oh.make_graph(
        nodes, "g", [oh.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 2]),
                     oh.make_tensor_value_info("label", TensorProto.INT64, ["N"])],
        [oh.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 4])],
        [nh.from_array(np.eye(2, dtype=np.float32), "E")])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=9)
    assert specialize_for_label(model, "label", np.array([1])) is None
    assert specialize_for_label(model, "labels", np.array([1])) is None  # no such input
    # per-channel constant Mul/Add chains become one BatchNormalization, other shapes do not
    x = oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 2, 2])
    y = oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 2, 2])
    inits = [nh.from_array(np.array([2, 3, 4], np.float32).reshape(1, 3, 1, 1), "s"),
             nh.from_array(np.array([1, 0, -1], np.float32).reshape(1, 3, 1, 1), "b"),
             nh.from_array(np.array([1, 2], np.float32), "w")]  # along W, not channels
    chain = oh.make_model(oh.make_graph(
        [oh.make_node("Mul", ["x", "s"], ["m"]), oh.make_node("Add", ["m", "b"], ["a"]),
         oh.make_node("Mul", ["a", "w"], ["y"])], "c", [x], [y], inits),
        opset_imports=[oh.make_opsetid("", 17)], ir_version=9)
    assert affine_chains_to_batchnorm(chain) == 1
    assert [n.op_type for n in chain.graph.node] == ["BatchNormalization", "Mul"]
    import onnxruntime as ort

    data = np.random.default_rng(0).standard_normal((2, 3, 2, 2)).astype(np.float32)
    (got,) = ort.InferenceSession(chain.SerializeToString(),
                                  providers=["CPUExecutionProvider"]).run(None, {"x": data})
    want = (data * np.array([2, 3, 4]).reshape(1, 3, 1, 1) + np.array([1, 0, -1]).reshape(
        1, 3, 1, 1)) * np.array([1, 2])
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_multi_hot_and_unconditional_models(tmp_path: Path) -> None:
    hot = OnnxGenerator(make_generator(tmp_path / "h.onnx", label_mode="multi-hot"), device="cpu")
    labels = np.zeros((2, 7), np.float32)
    labels[0, [2, 3]] = 1
    assert hot.generate(np.zeros((2, 8)), labels).shape == (2, 16, 16)
    none = OnnxGenerator(make_generator(tmp_path / "n.onnx", classes=["No Finding"],
                                        label_mode="none"), device="cpu")
    assert none.generate(np.zeros((3, 8))).shape == (3, 16, 16)


def test_provider_reported_on_this_machine(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    path = make_generator(tmp_path / "g.onnx")
    gen = OnnxGenerator(path, device="auto")
    assert gen.provider == gen.session.get_providers()[0]
    assert OnnxGenerator(path, device="cpu").provider == "CPUExecutionProvider"
    if _cuda_usable(path):
        assert gen.provider == "CUDAExecutionProvider"
    else:  # CPU-only: auto falls back to the CPU, and "cuda" fails loudly with the fix
        assert gen.provider == "CPUExecutionProvider"
        with pytest.raises(CxrError, match="--device cpu"):
            OnnxGenerator(path, device="cuda")
        err = capfd.readouterr().err
        assert "CUDA" not in err and "cuda" not in err.lower(), err  # load failure silenced


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"drop_meta": True}, "no cxraug metadata"),
        ({"meta": {"label_mode": "bogus"}}, "unknown label_mode"),
        ({"meta": {"class_names": "not json"}}, "unreadable cxraug metadata"),
        ({"input_names": ["z", "cls"]}, "inputs"),
        ({"output_name": "Identity:0"}, "outputs"),
        ({"meta": {"label_mode": "multi-hot"}}, "do not match label_mode"),
        ({"meta": {"latent_dim": "9"}}, "input 'z' has shape"),
        ({"meta": {"image_size": "32"}}, "output 'image' has shape"),
    ],
)
def test_contract_violations_are_one_line_errors(tmp_path: Path, kwargs: dict,
                                                 message: str) -> None:
    path = make_generator(tmp_path / "bad.onnx", **kwargs)
    with pytest.raises(CxrError, match=message) as info:
        OnnxGenerator(path, device="cpu")
    text = str(info.value)
    assert "\n" not in text and str(path) in text and "export-onnx" in text


def test_not_an_onnx_file_and_missing_file(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_text("hello, I am a CSV\n")
    for path in (junk, tmp_path / "missing.onnx"):
        with pytest.raises(CxrError, match=str(path)):
            OnnxGenerator(path, device="cpu")
        with pytest.raises(CxrError, match=str(path)):
            model_card(path)
    with pytest.raises(CxrError, match="unknown device"):
        OnnxGenerator(make_generator(tmp_path / "g.onnx"), device="tpu")


def test_to_uint8_rounds_and_clips() -> None:
    x = np.array([-1.5, -1.0, -0.999, 0.0, 0.5, 1.0, 2.0], np.float32)
    assert to_uint8(x).tolist() == [0, 0, 0, 128, 191, 255, 255]
    assert to_uint8(x).dtype == np.uint8


def test_model_card(tmp_path: Path) -> None:
    path = make_generator(tmp_path / "g.onnx")
    card = model_card(path)
    from cxraug.io_utils import sha256_file

    assert sha256_file(path) in card
    assert "No Finding, Atelectasis, Effusion" in card
    assert "opset ai.onnx 17" in card
    assert "z float32 [N, 8]; label int64 [N]" in card
    assert "image float32 [N, 16, 16, 1]" in card
    assert "epoch 3, step 42" in card and 'name = "test"' in card
    plain = model_card(make_generator(tmp_path / "plain.onnx", drop_meta=True))
    assert "WARNING" in plain and "no cxraug metadata" in plain


def test_cli_inspect(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from cxraug.cli import main

    path = make_generator(tmp_path / "g.onnx")
    assert main(["inspect", str(path)]) == 0
    assert "label mode   index" in capsys.readouterr().out
    assert main(["inspect", os.fspath(tmp_path / "nope.onnx")]) == 2
    assert capsys.readouterr().err.startswith("error: model ")
