"""ONNX export: parity with Keras, the file contract, metadata, atomicity, fp16, CLI errors."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from cxraug.errors import CxrError

CLASSES = ["No Finding", "Atelectasis", "Effusion", "Infiltration", "Mass", "Nodule",
           "Pneumothorax"]


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """The first output of an in-memory model on onnxruntime's CPU provider."""
    return ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _io(path: Path) -> tuple[dict[str, tuple[str, list]], dict[str, tuple[str, list]]]:
    sess = _session(path)
    ins = {i.name: (i.type, list(i.shape)) for i in sess.get_inputs()}
    outs = {o.name: (o.type, list(o.shape)) for o in sess.get_outputs()}
    return ins, outs


def _tiny_generator(arch: str, label_mode: str = "index", seed: int = 0):
    """A random-weight generator from the real builders at 32x32 (seconds to export)."""
    import keras

    from cxraug.models import build_generator
    from cxraug.recipe import load_recipe

    base = {"cxraug": "smoke-32", "paper": "paper-128", "paper-dcgan": "paper-dcgan-128"}[arch]
    overrides = {"model.image_size": 32, "model.label_mode": label_mode}
    if arch != "cxraug":
        overrides["model.filters"] = 16
    recipe = load_recipe(base, overrides=overrides)
    keras.utils.set_random_seed(seed)
    return build_generator(recipe.model, len(CLASSES)), recipe


# ------------------------------------------------------------------ graph passes (fast, exact)
def _nhwc_chain_model() -> onnx.ModelProto:
    """NCHW x -> Transpose(NHWC) -> *g[N,1,1,C] -> +b[C] -> Relu -> Transpose(NCHW) -> Resize."""
    nodes = [
        helper.make_node("Transpose", ["x"], ["t1"], perm=[0, 2, 3, 1]),
        helper.make_node("Mul", ["t1", "g"], ["m"]),
        helper.make_node("Add", ["m", "b"], ["a"]),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t2"], perm=[0, 3, 1, 2]),
        helper.make_node("Resize", ["t2", "roi", "scales"], ["up"], mode="nearest",
                         coordinate_transformation_mode="tf_half_pixel_for_nn",
                         nearest_mode="floor"),
        helper.make_node("Transpose", ["up"], ["y"], perm=[0, 2, 3, 1]),
    ]
    c = 3
    inits = [numpy_helper.from_array(np.array([0.5, -1.0, 2.0], np.float32), "b"),
             numpy_helper.from_array(np.array([], np.float32), "roi"),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    graph = helper.make_graph(
        nodes, "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, 4, 5]),
         helper.make_tensor_value_info("g", TensorProto.FLOAT, ["N", 1, 1, c])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 10, c])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_graph_cleanup_is_exact_and_removes_transposes() -> None:
    from cxraug.onnx_passes import optimize_graph

    model = _nhwc_chain_model()
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((2, 3, 4, 5)).astype(np.float32),
             "g": rng.standard_normal((2, 1, 1, 3)).astype(np.float32)}
    before = _run(model, feeds)
    stats = optimize_graph(model)
    after = _run(model, feeds)
    ops = Counter(n.op_type for n in model.graph.node)
    assert stats["transpose_pairs"] == 1 and stats["resize"] == 1
    # Left: the final NHWC output transpose (C=3 is not a size-1 axis); the [N,1,1,C] scale's own
    # transpose only moves size-1 axes, so it became a free Reshape.
    assert ops["Transpose"] == 1 and ops["Reshape"] == 1
    resize = next(n for n in model.graph.node if n.op_type == "Resize")
    modes = {a.name: helper.get_attribute_value(a) for a in resize.attribute}
    assert modes["coordinate_transformation_mode"] == b"asymmetric"
    np.testing.assert_array_equal(before, after)


def test_pointwise_conv_moves_before_upsample() -> None:
    """Resize x2 -> Conv1x1 equals Conv1x1 -> Resize x2, at a quarter of the conv's FLOPs."""
    from cxraug.onnx_passes import optimize_graph

    rng = np.random.default_rng(2)
    nodes = [helper.make_node("Resize", ["x", "roi", "scales"], ["up"], mode="nearest",
                              coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
             helper.make_node("Conv", ["up", "w", "bias"], ["y"], kernel_shape=[1, 1])]
    inits = [numpy_helper.from_array(np.array([], np.float32), "roi"),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
             numpy_helper.from_array(rng.standard_normal((2, 4, 1, 1)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(2).astype(np.float32), "bias")]
    graph = helper.make_graph(
        nodes, "skip", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 6, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    feeds = {"x": rng.standard_normal((2, 4, 3, 3)).astype(np.float32)}
    before = _run(model, feeds)
    assert optimize_graph(model)["pointwise_before_upsample"] == 1
    assert [n.op_type for n in model.graph.node] == ["Conv", "Resize"]
    after = _run(model, feeds)
    np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kernel,pads", [(3, [1, 1, 1, 1]), (4, [1, 1, 2, 2])])
def test_single_output_conv_split_by_rows(kernel: int, pads: list[int]) -> None:
    """Conv(C -> 1, k x k) == Conv(C -> k, 1 x k) then the row-adding Conv(k -> 1, k x 1)."""
    from cxraug.onnx_passes import optimize_graph

    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Conv", ["x", "w", "bias"], ["c"], kernel_shape=[kernel, kernel],
                              pads=pads),
             helper.make_node("Tanh", ["c"], ["y"])]
    inits = [numpy_helper.from_array(
                 rng.standard_normal((1, 5, kernel, kernel)).astype(np.float32) / 4, "w"),
             numpy_helper.from_array(np.array([0.3], np.float32), "bias")]
    graph = helper.make_graph(
        nodes, "last", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 7, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 7, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    feeds = {"x": rng.standard_normal((2, 5, 7, 6)).astype(np.float32)}
    before = _run(model, feeds)
    assert optimize_graph(model)["split_single_output_convs"] == 1
    assert [n.op_type for n in model.graph.node] == ["Conv", "Conv", "Tanh"]
    after = _run(model, feeds)
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)


def test_float16_keeps_float32_interface_and_runs() -> None:
    from cxraug.onnx_passes import convert_float16

    model = _nhwc_chain_model()
    half = convert_float16(model)
    assert [i.type.tensor_type.elem_type for i in half.graph.input] == [TensorProto.FLOAT] * 2
    assert half.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert any(t.data_type == TensorProto.FLOAT16 for t in half.graph.initializer)
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((3, 3, 4, 5)).astype(np.float32),
             "g": rng.standard_normal((3, 1, 1, 3)).astype(np.float32)}
    ref = _run(model, feeds)
    got = ort.InferenceSession(half.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=2e-2)


# ------------------------------------------------------------------ the smoke run's export
@pytest.mark.slow
def test_smoke_export_contract_metadata_and_parity(smoke_run: Path, smoke_onnx: Path) -> None:
    from cxraug.export.onnx_export import generator_spec, keras_outputs, parity_inputs
    from cxraug.inference.generator import OnnxGenerator
    from cxraug.training.run import load_generator, read_run_json

    ins, outs = _io(smoke_onnx)
    assert ins == {"z": ("tensor(float)", [ins["z"][1][0], 32]),
                   "label": ("tensor(int64)", [ins["label"][1][0]])}
    assert isinstance(ins["z"][1][0], str)  # symbolic (dynamic) batch dimension
    assert outs == {"image": ("tensor(float)", [outs["image"][1][0], 32, 32, 1])}

    model = onnx.load(str(smoke_onnx))
    meta = {p.key: p.value for p in model.metadata_props}
    info = read_run_json(smoke_run)
    assert json.loads(meta["class_names"]) == list(info["class_names"])
    assert meta["label_mode"] == "index" and meta["arch"] == "cxraug"
    assert (meta["latent_dim"], meta["image_size"]) == ("32", "32")
    assert meta["recipe_name"] == "smoke-32" and "[model]" in meta["recipe"]
    assert meta["epoch"] == "3" and int(meta["step"]) > 0
    assert meta["data_fingerprint"] == info["data"]["fingerprint"] != ""
    from cxraug.io_utils import file_mode

    assert smoke_onnx.stat().st_mode & 0o777 == file_mode()  # others may read the model
    # the training images' view travels cache -> run.json -> metadata (augment writes it)
    from cxraug.data.cache import CacheReader

    with CacheReader(info["data"]["path"]) as cache:
        assert meta["view"] == info["data"]["view"] == cache.view("train") in ("PA", "AP")
    assert meta["train_images"] == str(info["data"]["images"])
    assert meta["cxraug_version"]
    assert datetime.fromisoformat(meta["exported_at"].replace("Z", "+00:00")).tzinfo
    assert model.producer_name == "cxraug" and "generator" in model.doc_string

    gen = OnnxGenerator(smoke_onnx, device="cpu")
    assert gen.class_names == list(info["class_names"])
    assert (gen.latent_dim, gen.image_size, gen.label_mode) == (32, 32, "index")
    assert gen.provider == "CPUExecutionProvider"

    # the training reference beside the model turns augment's privacy filter on by default
    from cxraug.copy_reference import TrainReference, reference_path

    with TrainReference(reference_path(smoke_onnx)) as ref, CacheReader(
            info["data"]["path"]) as cache:
        assert ref.data_fingerprint == meta["data_fingerprint"] == cache.fingerprint
        assert ref.n == info["data"]["images"] and ref.threshold > 0
        train = cache.read(np.sort(cache.indices("train"))[:5])
        assert ref.check(train).copy.all()

    # Independent parity check on inputs the exporter never saw, through the public reader.
    loaded = load_generator(smoke_run)
    spec = generator_spec(loaded.model)
    feeds = parity_inputs(spec, len(gen.class_names), n=40, seed=123)
    ref = keras_outputs(loaded.model, spec, feeds)[..., 0]
    got = gen.generate(feeds["z"], feeds["label"])
    assert np.max(np.abs(got - ref)) <= 1e-4
    assert got.min() >= -1 and got.max() <= 1

    # Dynamic batch: 1, 3 and 17 rows give the same images as one batch of 17.
    sess = _session(smoke_onnx)
    full = sess.run(None, {"z": feeds["z"][:17], "label": feeds["label"][:17]})[0]
    for n in (1, 3, 17):
        part = sess.run(None, {"z": feeds["z"][:n], "label": feeds["label"][:n]})[0]
        assert part.shape == (n, 32, 32, 1)
        np.testing.assert_allclose(part, full[:n], atol=1e-5)

    # The clean-up left a plain NCHW graph: no TF-style resize, no transpose per block.
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["Resize"] >= 3 and ops["Transpose"] <= 2
    assert not any(a.s == b"tf_half_pixel_for_nn" for n in model.graph.node for a in n.attribute)


@pytest.mark.slow
def test_cli_export_and_errors(smoke_run: Path, tmp_path: Path, capsys) -> None:
    from cxraug.cli import main

    out = tmp_path / "models" / "smoke.onnx"
    assert main(["export-onnx", "--run", str(smoke_run), "--out", str(out), "--fp16"]) == 0
    printed = capsys.readouterr()
    assert "max |diff|" in printed.out and str(out) in printed.out
    assert out.is_file() and (tmp_path / "models" / "smoke.fp16.onnx").is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "smoke.fp16.onnx", "smoke.onnx", "smoke.trainref.h5"]
    assert "training reference" in printed.out and "never ship it" in printed.out

    # fp16 copy: float32 interface, float16 weights, close to the float32 file.
    half = onnx.load(str(out.with_name("smoke.fp16.onnx")))
    assert {i.name: i.type.tensor_type.elem_type for i in half.graph.input} == {
        "z": TensorProto.FLOAT, "label": TensorProto.INT64}
    assert any(t.data_type == TensorProto.FLOAT16 for t in half.graph.initializer)
    assert {p.key for p in half.metadata_props} >= {"class_names", "latent_dim", "label_mode"}
    rng = np.random.default_rng(5)
    feeds = {"z": rng.standard_normal((9, 32)).astype(np.float32),
             "label": np.arange(9, dtype=np.int64) % 7}
    a = _session(out).run(None, feeds)[0]
    b = _session(out.with_name("smoke.fp16.onnx")).run(None, feeds)[0]
    assert b.dtype == np.float32 and np.max(np.abs(a - b)) < 2e-2

    # A missing run folder: one line, exit status 2, nothing written.
    missing = tmp_path / "no-such-run"
    assert main(["export-onnx", "--run", str(missing), "--out", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: run folder") and str(missing) in err and "\n" not in err
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.slow
def test_export_run_user_errors(smoke_run: Path, tmp_path: Path) -> None:
    from cxraug.export.onnx_export import export_run

    with pytest.raises(CxrError, match=r"not found.*available: ckpt"):
        export_run(smoke_run, tmp_path / "a.onnx", checkpoint="ckpt-999", progress=False)
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    with pytest.raises(CxrError, match="not a cxraug run folder"):
        export_run(not_a_run, tmp_path / "a.onnx", progress=False)
    fresh = tmp_path / "fresh"  # a run that has not saved a checkpoint yet
    fresh.mkdir()
    for name in ("run.json", "recipe.toml"):
        (fresh / name).write_bytes((smoke_run / name).read_bytes())
    with pytest.raises(CxrError, match="no checkpoint"):
        export_run(fresh, tmp_path / "a.onnx", progress=False)
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(CxrError, match="cannot write"):
        export_run(smoke_run, blocker / "a.onnx", progress=False)
    with pytest.raises(CxrError, match="is a folder"):
        export_run(smoke_run, tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file.txt", "fresh"]


# ------------------------------------------------------------------ other architectures
@pytest.mark.slow
@pytest.mark.parametrize("arch,label_mode,inputs", [
    ("paper", "index", {"z": "tensor(float)", "label": "tensor(int64)"}),
    ("cxraug", "multi-hot", {"z": "tensor(float)", "labels": "tensor(float)"}),
])
def test_export_generator_architectures(arch: str, label_mode: str, inputs: dict,
                                        tmp_path: Path) -> None:
    from cxraug.export.onnx_export import export_generator
    from cxraug.inference.generator import OnnxGenerator

    model, recipe = _tiny_generator(arch, label_mode)
    out = tmp_path / f"{arch}.onnx"
    result = export_generator(model, out, {"class_names": CLASSES, "arch": arch,
                                           "recipe": recipe.to_toml(),
                                           "recipe_name": recipe.name}, progress=False)
    assert result.max_abs_diff <= 1e-4 and result.n_checked == 256
    ins, outs = _io(out)
    assert {k: v[0] for k, v in ins.items()} == inputs
    assert outs["image"][1][1:] == [32, 32, 1]
    if label_mode == "multi-hot":
        assert ins["labels"][1][1] == len(CLASSES)
    if arch == "paper":
        assert "ConvTranspose" in result.op_counts
    gen = OnnxGenerator(out, device="cpu")
    assert gen.label_mode == label_mode and gen.class_names == CLASSES
    rng = np.random.default_rng(0)
    z = rng.standard_normal((3, gen.latent_dim)).astype(np.float32)
    labels = (np.eye(len(CLASSES), dtype=np.float32)[[0, 2, 5]] if label_mode == "multi-hot"
              else np.array([0, 2, 5]))
    assert gen.generate(z, labels).shape == (3, 32, 32)


@pytest.mark.slow
def test_parity_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ONNX graph comes from other weights than the Keras model checked against it."""
    from cxraug.export import onnx_export as ox

    model, _ = _tiny_generator("cxraug", seed=0)
    other, _ = _tiny_generator("cxraug", seed=1)
    real_to_onnx = ox.to_onnx
    monkeypatch.setattr(ox, "to_onnx", lambda m, opset=17: real_to_onnx(other, opset))
    out = tmp_path / "gen.onnx"
    out.write_bytes(b"previous export")
    with pytest.raises(CxrError, match=r"export check failed.*nothing was written"):
        ox.export_generator(model, out, {"class_names": CLASSES}, fp16=True, progress=False)
    assert out.read_bytes() == b"previous export"  # an older file is left untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen.onnx"]  # no temp, no fp16 file
