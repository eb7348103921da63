"""Keras on TensorFlow and on JAX: the same networks and objectives, one run driver.

Each backend runs in its own process (``KERAS_BACKEND`` is read when Keras is imported). JAX's
side is one process (tests/backend_probe.py) with two forced CPU devices, so that its start-up
and compilations are paid once; the module fixture runs it and the tests read its results.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import REPO

from cxraug.recipe import available_recipes

pytest.importorskip("jax", reason="the JAX backend needs jax (pip install 'cxraug[jax]')")

PROBE = REPO / "tests" / "backend_probe.py"
# smoke-32 with EMA, DiffAugment and ADA: all the state a resume must carry
OVERRIDES = {"train.epochs": 3, "train.checkpoint_every": 1, "train.steps_per_epoch": 3,
             "train.ema_decay": 0.99, "train.diffaugment": ["translation", "cutout"],
             "train.ada_target": 0.6}
PLAIN = {**OVERRIDES, "train.epochs": 1, "train.diffaugment": [], "train.ada_target": 0.0}


def _python(args: list[str], backend: str, env: dict[str, str] | None = None) -> str:
    full_env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3",
                "PYTHONPATH": str(REPO), **(env or {})}
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=full_env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _job(path: Path, backend: str, env: dict[str, str] | None = None, **job: Any) -> dict:
    path.write_text(json.dumps(job))
    return json.loads(_python([str(PROBE), str(path)], backend, env).strip().splitlines()[-1])


@pytest.fixture(scope="module")
def sides(phantom_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """TensorFlow probes every recipe (and saves the weights); then one JAX process probes them
    with those weights and trains: straight, cut at step 4 and resumed, and one vs two devices."""
    root = tmp_path_factory.mktemp("backends")
    weights = root / "weights"
    weights.mkdir()
    recipes = available_recipes()
    tf_side = _job(root / "tf.json", "tensorflow", probe=recipes, weights=str(weights),
                   data=str(phantom_cache))
    runs = [(root / "a", OVERRIDES, {"devices": 1}),
            (root / "b", OVERRIDES, {"devices": 1, "max_steps": 4}),
            (root / "b", OVERRIDES, {"devices": 1, "resume": True}),
            (root / "one", PLAIN, {"devices": 1}),
            (root / "two", PLAIN, {})]
    jax_side = _job(root / "jax.json", "jax",
                    env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2",
                         "JAX_COMPILATION_CACHE_DIR": str(root / "jax-cache")},
                    probe=recipes, weights=str(weights), data=str(phantom_cache),
                    runs=[(str(out), o, kw) for out, o, kw in runs],
                    images=[(str(root / "a"), str(root / "jax.npy"))])
    return {"root": root, "tf": tf_side, "jax": jax_side, "recipes": recipes}


@pytest.mark.slow
def test_every_recipe_steps_on_both_backends_with_the_same_losses(sides: dict) -> None:
    """Same weights (saved by TensorFlow, loaded by JAX), same batch: the objectives agree to
    float tolerance, and one real step of each backend moves every generator weight."""
    for name in sides["recipes"]:
        a, b = sides["tf"]["probe"][name], sides["jax"]["probe"][name]
        assert (a["backend"], b["backend"]) == ("tensorflow", "jax")
        for key in ("d_loss", "g_loss"):
            assert b[key] == pytest.approx(a[key], rel=2e-4, abs=2e-5), (name, key, a, b)
        for out in (a, b):
            assert all(np.isfinite(v) for v in out["step"].values()), (name, out)
            assert out["g_weights_moved"] == out["g_weights"], (name, out)


def _npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files if not k.startswith("host/")}


@pytest.mark.slow
def test_jax_run_resumes_exactly(sides: dict) -> None:
    straight, cut, resumed = sides["jax"]["runs"][:3]
    root = sides["root"]
    assert straight["status"] == "finished" and straight["step"] == 9
    assert cut["status"] == "stopped" and resumed["status"] == "finished"
    run = json.loads((root / "a" / "run.json").read_text())
    assert run["backend"] == "jax" and run["versions"]["backend"] == "jax"
    # the resumed run: the same state and metrics, bit for bit
    assert resumed["rows"][1:] == straight["rows"][1:]
    a, b = _npz(root / "a/checkpoints/ckpt-9.npz"), _npz(root / "b/checkpoints/ckpt-9.npz")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_jax_run_exports_through_tensorflow_and_resumes_only_on_jax(
        sides: dict, phantom_cache: Path, capsys: pytest.CaptureFixture) -> None:
    from cxraug.cli import main
    from cxraug.export.onnx_export import export_run
    from cxraug.synthesis.generator import OnnxGenerator

    root = sides["root"]
    # this process runs TensorFlow: resuming the JAX run here is refused in one line
    assert main(["train", "--recipe", "smoke-32", "--data", str(phantom_cache), "--out",
                 str(root / "b"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "trained on jax" in err and err.strip().count("\n") == 0
    # TensorFlow exports the JAX-trained EMA generator (ONNX parity is checked inside export)
    # and the exported images are the JAX generator's images
    onnx_path = root / "g.onnx"
    export_run(run=root / "a", out=onnx_path)
    z = np.random.default_rng(5).standard_normal((6, 32)).astype(np.float32)
    onnx_images = OnnxGenerator(onnx_path, device="cpu").generate(z, np.arange(6))
    np.testing.assert_allclose(onnx_images, np.load(root / "jax.npy")[..., 0], atol=2e-4)


@pytest.mark.slow
def test_two_devices_give_what_one_device_gives(sides: dict) -> None:
    """Data parallel on two (CPU) devices, same global batch: the same run as on one device
    (to float tolerance: the devices sum in another order)."""
    one, two = sides["jax"]["runs"][3:]
    root = sides["root"]
    sessions = json.loads((root / "two" / "run.json").read_text())["sessions"]
    assert len(sessions[0]["devices"]) == 2
    assert len(json.loads((root / "one" / "run.json").read_text())["sessions"][0]["devices"]) == 1
    for r1, r2 in zip(one["rows"], two["rows"], strict=True):
        for key in ("d_loss", "g_loss", "d_acc_real", "d_acc_fake"):
            assert r2[key] == pytest.approx(r1[key], rel=1e-4, abs=1e-5), (key, r1, r2)
    a, b = _npz(root / "one/checkpoints/ckpt-3.npz"), _npz(root / "two/checkpoints/ckpt-3.npz")
    for key in a:
        if key.startswith(("g/", "d/", "ema/")):
            np.testing.assert_allclose(b[key], a[key], rtol=1e-3, atol=1e-4, err_msg=key)


def test_training_modules_that_are_shared_stay_backend_neutral() -> None:
    """The objectives, DiffAugment, the trainer base and the input pipeline import no
    TensorFlow (the JAX-only GPU machine has none)."""
    code = ("import sys\n"
            "import cxraug.losses, cxraug.diffaugment, cxraug.training.trainer\n"
            "import cxraug.training.dataset, cxraug.training.tensorboard, cxraug.models\n"
            "import cxraug.training.step_jax\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow')\n"
            "assert not bad, bad[:5]\n")
    _python(["-c", code], "jax")
