"""Shared fixtures: the real NIH sample (skipped when absent) and a phantom pipeline.

The phantom fixtures are session-scoped and built once, in order: phantom data set -> cache ->
a short smoke-32 training run -> its ONNX export. Tests of later stages reuse them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_DEFAULT_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "nih-sample"
#: Fixtures that train a network with TensorFlow: every test that uses one (directly or through
#: another fixture) is marked slow here, so ``pytest -m "not slow"`` trains nothing.
TRAINING_FIXTURES = frozenset({"smoke_run", "smoke_onnx", "classifier_dir"})


def pytest_configure(config: pytest.Config) -> None:
    """glibc keeps freed heap in this session and in every process it starts (tests/helpers.py
    ``keep_freed_heap``): TensorFlow's steps fault 8x fewer pages, CPU the suite's two cores
    share with its background JAX processes (benchmarks/malloc.py)."""
    from helpers import keep_freed_heap

    keep_freed_heap()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    # the tests that wait for the background JAX process run last: it works meanwhile
    waiting = [item for item in items if "jax_side" in getattr(item, "fixturenames", ())]
    items[:] = [item for item in items if item not in waiting] + waiting


#: tests/test_backends.py's JAX process, started as soon as the session knows a selected test
#: needs it (``jax_side`` fixture), so that it runs while the other tests do.
JAX_SIDE: dict[str, object] = {}


def pytest_collection_finish(session: pytest.Session) -> None:
    if any("jax_side" in getattr(item, "fixturenames", ()) for item in session.items):
        from helpers import start_jax_side

        JAX_SIDE.update(start_jax_side())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    import shutil

    proc = JAX_SIDE.get("proc")
    if proc is not None and proc.poll() is None:  # type: ignore[attr-defined]
        proc.kill()  # type: ignore[attr-defined]
        proc.wait()  # type: ignore[attr-defined]
    if JAX_SIDE.get("root"):
        shutil.rmtree(JAX_SIDE["root"], ignore_errors=True)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def jax_side() -> dict[str, object]:
    """The background processes' results (waits for them): ``{"root", "probe", "runs", "tf",
    "peers"}`` (``tf``: TensorFlow's probe of the same recipes with the same weights; ``peers``:
    tests/cluster_peers.py's runs with a late process)."""
    import json

    if not JAX_SIDE:
        pytest.skip("the JAX backend needs jax (pip install 'cxraug[jax]')")
    proc, root = JAX_SIDE["proc"], Path(JAX_SIDE["root"])  # type: ignore[arg-type]
    rc = proc.wait(timeout=1800)  # type: ignore[attr-defined]
    assert rc == 0, "\n".join(f"{name}: {(root / name).read_text()[-2000:]}" for name in
                              ("stderr", "peers.out") if (root / name).is_file())
    def last_line(name: str) -> dict[str, object]:
        return json.loads((root / name).read_text().strip().splitlines()[-1])

    return {"root": root, **last_line("stdout"), "tf": last_line("tf.stdout"),
            "peers": last_line("peers.out")}
NIH_SAMPLE = Path(os.environ.get("CXRAUG_NIH_SAMPLE", _DEFAULT_SAMPLE))


@pytest.fixture(scope="session")
def nih_sample() -> Path:
    """The 401-image NIH sample beside the checkout; tests using it skip when it is absent."""
    if not (NIH_SAMPLE / "Data_Entry_2017.csv").is_file():
        pytest.skip(f"NIH sample not found at {NIH_SAMPLE} (set CXRAUG_NIH_SAMPLE to its folder)")
    return NIH_SAMPLE


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small deterministic phantom data set: 420 images at 64x64, NIH layout."""
    from cxraug.data.phantom import make_phantom_dataset

    out = tmp_path_factory.mktemp("phantom")
    make_phantom_dataset(out=out, n=420, size=64, seed=0, multi_label_fraction=0.1)
    return out


@pytest.fixture(scope="session")
def phantom_cache(phantom_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The phantom data prepared at 32x32 with the paper's 7 classes (single-label images)."""
    from cxraug.data.cache import prepare

    out = tmp_path_factory.mktemp("cache") / "phantom32.h5"
    prepare(data_root=phantom_dir, csv=phantom_dir / "Data_Entry_2017.csv", out=out, size=32,
            top_k=6, multi_label="drop", val_fraction=0.15, test_fraction=0.15, seed=0,
            workers=1)
    return out


@pytest.fixture(scope="session")
def smoke_run(phantom_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished smoke-32 run on the phantom cache (a few epochs: seconds on 2 cores)."""
    from cxraug.recipe import load_recipe
    from cxraug.training.loop import train

    out = tmp_path_factory.mktemp("runs") / "smoke"
    recipe = load_recipe("smoke-32", overrides={"train.epochs": 3, "train.checkpoint_every": 1})
    train(recipe, data=phantom_cache, out=out, resume=False, progress=False)
    return out


@pytest.fixture(scope="session")
def smoke_onnx(smoke_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke run's generator exported to ONNX."""
    from cxraug.export.onnx_export import export_run

    out = tmp_path_factory.mktemp("onnx") / "smoke.onnx"
    export_run(run=smoke_run, out=out)
    return out


@pytest.fixture(scope="session")
def classifier_dir(phantom_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A judge trained on the phantom cache (evaluate's feature space and label judge)."""
    from cxraug.evaluation.classifier import train_classifier

    out = tmp_path_factory.mktemp("classifier") / "phantom"
    train_classifier(phantom_cache, out, epochs=12, seed=0, progress=False)
    return out
