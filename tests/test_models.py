"""The networks: contracts (names, shapes, logits), the paper's exact sizes, labels, layers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from cxraug.errors import CxrError  # noqa: E402
from cxraug.models import (  # noqa: E402
    build_discriminator,
    build_generator,
    generator_flops,
    label_input_name,
    model_flops,
    refresh_batchnorm_statistics,
)
from cxraug.models.cxraug_net import base_resolution  # noqa: E402
from cxraug.models.layers import (  # noqa: E402
    ClassEmbedding,
    ConditionalBatchNorm,
    SNConv2D,
    SNDense,
    Upsample2x,
)
from cxraug.recipe import ModelConfig, load_recipe, model_config  # noqa: E402

C = 7


def _inputs(cfg: ModelConfig, n: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {"z": rng.normal(size=(n, cfg.latent_dim)).astype(np.float32)}
    name = label_input_name(cfg)
    if name == "label":
        out[name] = (np.arange(n) % C).astype(np.int32)
    elif name == "labels":
        out[name] = (rng.random((n, C)) < 0.3).astype(np.float32)
    return out


def _small(arch: str, size: int, label_mode: str = "index") -> ModelConfig:
    """Narrow networks so shape tests stay fast; the recipes' widths are tested separately."""
    return model_config(arch=arch, image_size=size, label_mode=label_mode, latent_dim=16,
                        embedding_dim=8, filters=16, g_channels=32, d_channels=8)


@pytest.mark.parametrize("size", [32, 64, 128])
@pytest.mark.parametrize("arch", ["paper", "paper-dcgan", "cxraug"])
def test_shapes_and_input_names(arch: str, size: int) -> None:
    cfg = _small(arch, size)
    g = build_generator(cfg, C)
    d = build_discriminator(cfg, C)
    label = label_input_name(cfg)
    expected = ["z"] + ([label] if label else [])
    assert [t.name for t in g.inputs] == expected
    assert [t.name for t in d.inputs] == ["image"] + ([label] if label else [])
    inputs = _inputs(cfg)
    images = g(inputs if label else inputs["z"], training=False).numpy()
    assert images.shape == (2, size, size, 1) and images.dtype == np.float32
    assert np.all(np.abs(images) <= 1.0)
    d_inputs = {"image": images, label: inputs[label]} if label else images
    logits = d(d_inputs, training=False).numpy()
    assert logits.shape == (2, 1) and np.all(np.isfinite(logits))


def test_paper_models_have_the_papers_parameter_counts() -> None:
    cfg = ModelConfig(arch="paper", image_size=128)
    assert build_generator(cfg, 7).count_params() == 1_704_799
    assert build_discriminator(cfg, 7).count_params() == 2_079_839
    dcgan = ModelConfig(arch="paper-dcgan", image_size=128)
    assert build_generator(dcgan, 7).count_params() == 1_364_481
    assert build_discriminator(dcgan, 7).count_params() == 1_031_745


def test_paper_discriminator_returns_logits_not_probabilities() -> None:
    d = build_discriminator(_small("paper", 32), C)
    assert d.layers[-1].get_config()["activation"] == "linear"
    d.get_layer("logits").set_weights([np.full((2 * 2 * 16, 1), 50.0, np.float32),
                                       np.array([-3.0], np.float32)])
    out = d({"image": np.ones((1, 32, 32, 1), np.float32),
             "label": np.zeros((1,), np.int32)}).numpy()
    assert out[0, 0] > 1.0 or out[0, 0] < 0.0  # a probability would be in [0, 1]


def test_flops_count_matches_the_paper_generator_by_hand() -> None:
    g = build_generator(ModelConfig(arch="paper", image_size=128), 7)
    macs = (100 * 4096 + 50 * 4096  # the two dense layers
            + sum((8 << i) ** 2 * 16 * 128 * 128 for i in range(4))  # four 4x4 transposed convs
            + 128 * 128 * 16 * 16 * 128)  # the final 16x16 conv
    assert generator_flops(g) == 2 * macs
    ours = build_generator(ModelConfig(arch="cxraug", image_size=128), 7)
    assert model_flops(ours) < generator_flops(g) / 5


@pytest.mark.parametrize("arch", ["paper", "cxraug"])
def test_label_changes_the_output_for_a_fixed_z(arch: str) -> None:
    cfg = _small(arch, 32)
    g = build_generator(cfg, C)
    z = np.repeat(np.random.default_rng(0).normal(size=(1, cfg.latent_dim)), C, 0)
    out = g({"z": z.astype(np.float32), "label": np.arange(C, dtype=np.int32)},
            training=False).numpy()
    diffs = [np.abs(out[i] - out[0]).mean() for i in range(1, C)]
    assert min(diffs) > 1e-6
    # ... while the same (z, label) is deterministic in inference mode
    again = g({"z": z[:2].astype(np.float32), "label": np.arange(2, dtype=np.int32)},
              training=False).numpy()
    np.testing.assert_allclose(again, out[:2], atol=1e-6)


@pytest.mark.parametrize("arch", ["paper", "cxraug"])
def test_multi_hot_one_hot_equals_index_mode(arch: str) -> None:
    """Multi-hot conditioning is the sum of class embeddings: a one-hot vector = that index."""
    idx = build_generator(_small(arch, 32), C)
    mh = build_generator(_small(arch, 32, "multi-hot"), C)
    assert [t.name for t in mh.inputs] == ["z", "labels"]
    mh.set_weights(idx.get_weights())
    z = np.random.default_rng(1).normal(size=(C, 16)).astype(np.float32)
    a = idx({"z": z, "label": np.arange(C, dtype=np.int32)}, training=False).numpy()
    b = mh({"z": z, "labels": np.eye(C, dtype=np.float32)}, training=False).numpy()
    np.testing.assert_allclose(a, b, atol=1e-5)
    two = np.zeros((1, C), np.float32)
    two[0, [2, 3]] = 1.0
    c = mh({"z": z[:1], "labels": two}, training=False).numpy()
    assert np.abs(c - b[2:3]).mean() > 1e-6 and np.abs(c - b[3:4]).mean() > 1e-6
    d = build_discriminator(_small(arch, 32, "multi-hot"), C)
    out = d({"image": b, "labels": np.eye(C, dtype=np.float32)}, training=True)
    assert out.shape == (C, 1)


@pytest.mark.parametrize("recipe", ["cxraug-128", "paper-128", "paper-dcgan-128",
                                    "small-data-64", "smoke-32"])
def test_builtin_recipes_build(recipe: str) -> None:
    cfg = load_recipe(recipe).model
    g = build_generator(cfg, C)
    d = build_discriminator(cfg, C)
    s = cfg.image_size
    assert g.output.shape[1:] == (s, s, 1) and d.output.shape[1:] == (1,)


def test_cxraug_generator_is_cheap_and_sizes_generalize() -> None:
    g = build_generator(ModelConfig(arch="cxraug", image_size=128), 7)
    assert generator_flops(g) < 1e9  # per image; the paper's is 3.9e9
    assert base_resolution(128) == (4, 7 - 2) and base_resolution(48) == (6, 3)
    assert base_resolution(80) == (5, 4)
    g48 = build_generator(_small("cxraug", 48), C)
    d48 = build_discriminator(_small("cxraug", 48), C)
    assert g48.output.shape[1:] == (48, 48, 1) and d48.output.shape[1:] == (1,)


def test_cxraug_generator_avoids_transposed_convolutions() -> None:
    g = build_generator(ModelConfig(arch="cxraug", image_size=64), 7)
    assert not any(isinstance(layer, keras.layers.Conv2DTranspose) for layer in g.layers)
    assert any(isinstance(layer, Upsample2x) for layer in g.layers)
    assert any(isinstance(layer, ConditionalBatchNorm) for layer in g.layers)


def test_bad_configuration_is_a_user_error() -> None:
    with pytest.raises(CxrError, match="arch"):
        build_generator(ModelConfig(arch="stylegan"), 7)
    with pytest.raises(CxrError, match="image_size"):
        build_discriminator(ModelConfig(image_size=100), 7)
    with pytest.raises(CxrError, match="class"):
        build_generator(ModelConfig(arch="cxraug"), 0)


# ----------------------------------------------------------------------------- layers
def test_spectral_norm_keeps_the_largest_singular_value_near_one() -> None:
    rng = np.random.default_rng(0)
    dense = SNDense(24)
    dense.build((None, 40))
    dense.kernel.assign(rng.normal(scale=3.0, size=(40, 24)).astype(np.float32))
    conv = SNConv2D(6, 3)
    conv.build((None, 8, 8, 5))
    conv.kernel.assign(rng.normal(scale=2.0, size=(3, 3, 5, 6)).astype(np.float32))
    emb = ClassEmbedding(7, 12, spectral_norm=True)
    emb.build((None,))
    emb.kernel.assign(rng.normal(scale=3.0, size=(7, 12)).astype(np.float32))
    for layer, x in ((dense, rng.normal(size=(4, 40))), (conv, rng.normal(size=(2, 8, 8, 5))),
                     (emb, np.arange(4))):
        raw = np.linalg.svd(layer.kernel.numpy().reshape(-1, layer.kernel.shape[-1]),
                            compute_uv=False)[0]
        assert raw > 5.0
        for _ in range(40):  # one power iteration per training call
            layer(x, training=True)
        w_sn = layer._normalized(layer.kernel, training=False).numpy()
        top = np.linalg.svd(w_sn.reshape(-1, w_sn.shape[-1]), compute_uv=False)[0]
        assert abs(top - 1.0) < 0.02, (layer.name, top)
        assert abs(layer.sigma_estimate() - raw) / raw < 0.02


@pytest.mark.slow
def test_discriminator_trains_with_spectral_norm_under_tf_function() -> None:
    """A GradientTape step in a tf.function: weights move, u updates, gradients flow thru sigma."""
    cfg = _small("cxraug", 32)
    d = build_discriminator(cfg, C)
    opt = keras.optimizers.Adam(1e-3)
    images = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 1)).astype(np.float32)
    labels = np.arange(4, dtype=np.int32)

    @tf.function
    def step() -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.relu(1.0 - d({"image": images, "label": labels},
                                                     training=True)))
        grads = tape.gradient(loss, d.trainable_weights)
        opt.apply_gradients(zip(grads, d.trainable_weights, strict=True))
        return loss

    sn_layers = [layer for layer in d.layers if isinstance(layer, SNConv2D)]
    u0 = sn_layers[0].sn_u.numpy().copy()
    w0 = [w.numpy().copy() for w in d.trainable_weights]
    losses = [float(step()) for _ in range(3)]
    assert all(np.isfinite(losses))
    assert not np.allclose(u0, sn_layers[0].sn_u.numpy())
    changed = [not np.allclose(a, b.numpy()) for a, b in zip(w0, d.trainable_weights, strict=True)]
    assert all(changed)
    # the kernel variables are never overwritten by the normalized kernel (unlike Keras' wrapper)
    assert sn_layers[0].sigma_estimate() > 0 and not np.allclose(
        sn_layers[0].kernel.numpy(), sn_layers[0]._normalized(sn_layers[0].kernel, False))


def test_upsample2x_is_nearest_neighbour() -> None:
    x = np.random.default_rng(0).normal(size=(2, 3, 5, 4)).astype(np.float32)
    xt = tf.constant(x)
    dy = tf.constant(np.random.default_rng(1).normal(size=(2, 6, 10, 4)).astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch(xt)
        out = Upsample2x(method="resize")(xt)
    grad = tape.gradient(out, xt, output_gradients=dy).numpy()
    np.testing.assert_array_equal(out.numpy(), np.repeat(np.repeat(x, 2, axis=1), 2, axis=2))
    expected = dy.numpy().reshape(2, 3, 2, 5, 2, 4).sum(axis=(2, 4))  # 2x2 sum-pooling
    np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="method must be one of"):
        Upsample2x(method="repeat")


def test_conditional_bn_uses_moving_statistics_at_inference() -> None:
    g = build_generator(_small("cxraug", 32), C)
    inputs = _inputs(_small("cxraug", 32), n=8)
    for _ in range(3):
        g(inputs, training=True)
    full = g(inputs, training=False).numpy()
    first = g({k: v[:1] for k, v in inputs.items()}, training=False).numpy()
    np.testing.assert_allclose(first, full[:1], atol=1e-5)  # no dependence on the batch


def test_refresh_batchnorm_statistics_matches_training_mode_on_one_batch() -> None:
    g = build_generator(_small("cxraug", 32), C)
    inputs = _inputs(_small("cxraug", 32), n=16, seed=4)
    assert refresh_batchnorm_statistics(g, [inputs]) == 1
    train_mode = g(inputs, training=True).numpy()
    infer_mode = g(inputs, training=False).numpy()
    # inference with the refreshed statistics reproduces the batch statistics exactly
    assert np.abs(train_mode - infer_mode).max() < 1e-4
    assert refresh_batchnorm_statistics(g, []) == 0


@pytest.mark.parametrize("arch", ["paper", "paper-dcgan", "cxraug"])
def test_models_save_and_load_with_keras(arch: str, tmp_path: Path) -> None:
    cfg = _small(arch, 32)
    for model in (build_generator(cfg, C), build_discriminator(cfg, C)):
        path = tmp_path / f"{model.name}.keras"
        model.save(path)
        loaded = keras.models.load_model(path)
        label = label_input_name(cfg)
        if model.inputs[0].name == "z":
            inputs = _inputs(cfg) if label else _inputs(cfg)["z"]
        else:
            image = np.zeros((2, 32, 32, 1), np.float32)
            inputs = {"image": image, label: np.array([0, 3], np.int32)} if label else image
        np.testing.assert_allclose(loaded(inputs, training=False).numpy(),
                                   model(inputs, training=False).numpy(), atol=1e-6)
        assert [type(layer) for layer in loaded.layers] == [type(layer) for layer in model.layers]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["paper", "cxraug"])
def test_gradient_step_compiles_with_xla_and_mixed_precision(arch: str) -> None:
    """The training loop's jit_compile and mixed_float16 options need every layer to support them
    (e.g. XLA has no ResizeNearestNeighborGrad, hence Upsample2x's explicit gradient)."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        cfg = _small(arch, 32)
        g = build_generator(cfg, C)
        d = build_discriminator(cfg, C)
        inputs = _inputs(cfg, n=4)

        @tf.function(jit_compile=True)
        def step(inputs: dict[str, np.ndarray]) -> tuple[Any, ...]:
            with tf.GradientTape() as tape:
                images = g(inputs, training=True)
                logits = d({"image": images, "label": inputs["label"]}, training=True)
                loss = tf.reduce_mean(tf.nn.softplus(-logits))
            return images, logits, loss, tape.gradient(loss, g.trainable_weights
                                                       + d.trainable_weights)

        images, logits, loss, grads = step(inputs)
        assert images.dtype == tf.float32 and logits.dtype == tf.float32
        assert np.isfinite(float(loss))
        assert all(gr is not None for gr in grads)
    finally:
        keras.mixed_precision.set_global_policy(previous)
