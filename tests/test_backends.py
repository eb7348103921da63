"""Keras on TensorFlow and on JAX: the same networks and objectives, one run driver.

Each backend runs in its own process (``KERAS_BACKEND`` is read when Keras is imported). JAX's
side runs in the background (tests/helpers.py ``start_jax_side``, started by tests/conftest.py as
soon as the session is collected): tests/backend_probe.py, then two ``cxraug train`` processes
that train together, then TensorFlow's probe with the weights JAX saved, so that all of it
overlaps the other tests; the ``jax_side`` fixture waits for their results.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO

from cxraug.recipe import available_recipes


def _python(args: list[str], backend: str) -> str:
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_every_recipe_steps_on_both_backends_with_the_same_losses(jax_side: dict) -> None:
    """Same weights (saved by JAX, loaded by TensorFlow), same batch: the objectives agree to
    float tolerance, and one real step of each backend moves every generator weight."""
    assert sorted(jax_side["probe"]) == sorted(available_recipes())
    for name in available_recipes():
        a, b = jax_side["tf"]["probe"][name], jax_side["probe"][name]
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
def test_jax_run_resumes_exactly(jax_side: dict) -> None:
    straight, cut, resumed = jax_side["runs"][:3]
    root = jax_side["root"]
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
        jax_side: dict, capsys: pytest.CaptureFixture) -> None:
    from cxraug.cli import main
    from cxraug.export.onnx_export import export_run
    from cxraug.inference.generator import OnnxGenerator

    root = jax_side["root"]
    # this process runs TensorFlow: resuming the JAX run here is refused in one line
    assert main(["train", "--recipe", "smoke-32", "--data", str(root / "cache.h5"), "--out",
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
def test_two_processes_train_together_as_one(jax_side: dict) -> None:
    """Two ``cxraug train --coordinator`` processes (two CPU devices each, gloo between them),
    same global batch: the first epoch of the one-device run (to float tolerance: the devices
    sum in another order); only process 0 wrote the run folder."""
    straight = jax_side["runs"][0]
    root = jax_side["root"]
    session = json.loads((root / "cluster" / "run.json").read_text())["sessions"][0]
    assert session["processes"] == 2 and len(session["devices"]) == 4
    assert len(json.loads((root / "a" / "run.json").read_text())["sessions"][0]["devices"]) == 1
    run = jax_side["peers"]["cluster"]  # process 1 was held up (tests/test_cluster_peers.py)
    assert run["codes"] == [0, 0], [log[-3000:] for log in run["logs"]]
    assert "process 1 of 2: finished at step 3/3" in run["logs"][1]
    assert "run cluster: finished, step 3/3" in run["logs"][0]
    with open(root / "cluster" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    r1, r2 = straight["rows"][0], {k: float(v) for k, v in rows[0].items() if v}
    for key in ("d_loss", "g_loss", "d_acc_real", "d_acc_fake", "r_t", "aug_p"):
        assert r2[key] == pytest.approx(r1[key], rel=1e-4, abs=1e-5), (key, r1, r2)
    a = _npz(root / "a/checkpoints/ckpt-3.npz")
    b = _npz(root / "cluster/checkpoints/ckpt-3.npz")
    assert a.keys() == b.keys()
    for key in a:
        if key.startswith(("g/", "d/", "ema/")):
            np.testing.assert_allclose(b[key], a[key], rtol=1e-3, atol=1e-4, err_msg=key)
    # one writer: no temporary or stray files of the other process
    assert sorted(p.name for p in (root / "cluster" / "checkpoints").iterdir()) == [
        "ckpt-3.npz", "index.json"]


def test_training_modules_that_are_shared_stay_backend_neutral() -> None:
    """The objectives, DiffAugment, the trainer base, the input pipeline and the JAX step import
    no TensorFlow (the JAX-only GPU machine has none)."""
    pytest.importorskip("jax", reason="the JAX backend needs jax (pip install 'cxraug[jax]')")
    code = ("import sys\n"
            "import cxraug.losses, cxraug.diffaugment, cxraug.training.trainer\n"
            "import cxraug.training.protocol, cxraug.training.backends\n"
            "import cxraug.training.dataset, cxraug.training.tensorboard, cxraug.models\n"
            "import cxraug.training.step_jax\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow')\n"
            "assert not bad, bad[:5]\n")
    _python(["-c", code], "jax")
