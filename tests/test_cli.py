"""The CLI's own promises: every command listed, a version, one-line errors, lazy TensorFlow."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cxraug import __version__
from cxraug.cli import app, main

COMMANDS = [
    "prepare", "info", "demo-data", "train", "sample", "recipes", "export-onnx", "inspect",
    "augment", "train-classifier", "evaluate", "downstream", "demo", "doctor",
]


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cxraug.cli", *args], capture_output=True,
                          text=True, timeout=120)


def test_help_lists_every_command_with_a_summary() -> None:
    proc = _run_cli("--help")
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    for name in COMMANDS:
        row = [line for line in lines if line.strip().startswith(name + " ")]
        assert row, f"{name} missing from --help"
        summary = row[0].strip()[len(name):].strip()
        assert len(summary) > 10 and not summary.endswith("..."), row[0]
    registered = {c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands}
    assert registered == set(COMMANDS)


def test_version() -> None:
    proc = _run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"cxraug {__version__}"


def test_user_error_is_one_line_without_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--data", "nowhere.h5", "--out", "runs/x", "--recipe", "smoke-33"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: unknown recipe 'smoke-33' (did you mean smoke-32?)")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_bad_override_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--data", "x.h5", "--out", "r", "--recipe", "smoke-32",
                 "--set", "train.epoch=3"])
    err = capsys.readouterr().err
    assert code == 2 and "did you mean epochs?" in err and len(err.strip().splitlines()) == 1


def test_cli_import_does_not_load_tensorflow() -> None:
    code = "import sys, cxraug.cli; print('tensorflow' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout.strip() == "False", proc.stderr


@pytest.mark.parametrize(("argv", "missing"), [
    (["train"], "--data, --out"),
    (["prepare"], "DATA_ROOT, --csv"),
    (["evaluate", "--data", "c.h5"], "--model, --out"),
    (["export-onnx"], "--run, --out"),
    (["downstream"], "--data, --synthetic"),
    (["augment", "--per-class", "3"], "--out"),
    (["info"], "CACHE"),
])
def test_missing_options_are_named_together_with_a_working_example(
        argv: list[str], missing: str, capsys: pytest.CaptureFixture[str]) -> None:
    from cxraug.cli import EXAMPLES

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"missing {missing}; for example: {EXAMPLES[argv[0]]}" in err
    if argv[0] == "train":  # no cache yet: say how to make one, or how to try phantoms
        assert "cxraug prepare" in err and "cxraug demo-data" in err


@pytest.mark.slow
def test_resume_reads_the_runs_own_recipe_and_cache(smoke_run, tmp_path, capsys) -> None:
    """`train --resume --out RUN` needs neither --data nor --recipe again."""
    import shutil

    from cxraug.training.run import read_run_json

    run = tmp_path / "run"
    shutil.copytree(smoke_run, run)
    assert main(["train", "--out", str(run), "--resume", "--epochs", "4"]) == 0, \
        capsys.readouterr().err
    info = read_run_json(run)
    # resumed (a second session) with the run's own recipe, to the new length
    assert len(info["sessions"]) == 2 and info["sessions"][-1]["resumed_from"]
    assert info["epochs"] == 4 and info["recipe_name"] == "smoke-32"
    # a folder that is no run cannot be resumed without the options
    capsys.readouterr()
    assert main(["train", "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "missing --data" in capsys.readouterr().err


def test_tensorflow_start_up_notices_are_not_shown() -> None:
    """`train` with a missing cache: one error line, no TensorFlow notices (and it comes before
    TensorFlow loads); a training command's import of TensorFlow is quiet too."""
    proc = _run_cli("train", "--data", "nowhere.h5", "--out", "runs/x")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "cache nowhere.h5 not found" in lines[0]
    code = ("from cxraug.quiet_tf import import_tensorflow; tf = import_tensorflow(); "
            "print(tf.reduce_sum(tf.ones(3)).numpy())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout.strip() == "3.0" and proc.stderr.strip() == "", proc.stderr
    from cxraug.quiet_tf import NOISE  # what is dropped is only the known notices

    assert NOISE.search("I0000 port.cc:153] oneDNN custom operations are on. You may see")
    assert not NOISE.search("W tensorflow/core/framework/op_kernel.cc: OOM when allocating")


def test_help_shows_plain_metavars_and_what_the_count_options_need() -> None:
    for command in COMMANDS:
        proc = _run_cli(command, "--help")
        assert proc.returncode == 0 and "list[" not in proc.stdout, command
    text = " ".join(_run_cli("augment", "--help").stdout.split())
    assert "--real-csv or --data (without either, N)" in text and "Not with --per-class" in text


def test_the_tensorboard_the_readme_promises_can_be_installed() -> None:
    from pathlib import Path

    import tomllib

    repo = Path(__file__).resolve().parents[1]
    extras = tomllib.loads((repo / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert any(d.startswith("tensorboard") for d in extras["tensorboard"])
    readme = " ".join((repo / "README.md").read_text().split())
    assert "pip install 'cxraug[tensorboard]'" in readme and "tensorboard --logdir runs/" in readme


def test_the_promised_python_is_the_one_the_code_needs() -> None:
    """recipes are read with tomllib (3.11+): pyproject and README must not promise less."""
    from pathlib import Path

    import tomllib

    repo = Path(__file__).resolve().parents[1]
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11"
    assert "Python 3.11+" in (repo / "README.md").read_text()


@pytest.mark.slow  # (imports TensorFlow, JAX and onnxruntime in a subprocess: seconds)
def test_doctor_reports_backends_devices_and_the_providers_that_really_work() -> None:
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    proc = subprocess.run([sys.executable, "-m", "cxraug.cli", "doctor"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = {line[:17].strip(): line for line in proc.stdout.splitlines() if line.strip()}
    assert "backend jax" in lines["keras"]
    assert "providers that work: CPUExecutionProvider" in lines["onnxruntime"]
    assert "devices:" in lines["jax"] or "not installed" in lines["jax"]
    assert "Traceback" not in proc.stderr and "EP Error" not in proc.stdout + proc.stderr


def test_doctor_names_the_missing_library() -> None:
    from cxraug.doctor import _reason

    printed = ["... Failed to load library libonnxruntime_providers_cuda.so with error: "
               "libcublasLt.so.13: cannot open shared object file: No such file or directory"]
    assert _reason(printed) == "libcublasLt.so.13 not found"
    assert _reason(["Require cuDNN 9.* and CUDA 13.*. Please install"]) == \
        "Require cuDNN 9.* and CUDA 13.*"


def test_train_names_the_backends_it_supports(tmp_path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture) -> None:
    cache = tmp_path / "c.h5"
    cache.write_bytes(b"")
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    assert main(["train", "--data", str(cache), "--out", str(tmp_path / "r"), "--recipe",
                 "smoke-32"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: KERAS_BACKEND=torch") and err.strip().count("\n") == 0


@pytest.mark.parametrize(("args", "env", "start"), [
    (["--coordinator", "node1"], {}, "error: --coordinator 'node1': give host:port"),
    (["--coordinator", "node1:123", "--processes", "2"], {}, "error: --coordinator host:port "
     "needs --processes N and --process-id I"),
    (["--coordinator", "node1:123", "--processes", "2", "--process-id", "2"], {},
     "error: --process-id 2: give 0 .. 1"),
    (["--processes", "2"], {}, "error: --processes/--process-id go with --coordinator"),
    (["--coordinator", "node1:123", "--processes", "2", "--process-id", "0"],
     {"KERAS_BACKEND": "tensorflow"}, "error: training across machines (--coordinator) runs "
     "on JAX"),
])
def test_train_across_machines_option_errors(tmp_path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture, args: list[str],
                                             env: dict[str, str], start: str) -> None:
    cache = tmp_path / "c.h5"
    cache.write_bytes(b"")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(["train", "--data", str(cache), "--out", str(tmp_path / "r"), "--recipe",
                 "smoke-32", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(start) and err.strip().count("\n") == 0, err
    assert not (tmp_path / "r").exists()


def test_tensorflow_multi_worker_config_points_to_the_jax_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from cxraug.errors import CxrError
    from cxraug.training.step_tf import pick_strategy

    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:1"]},
                                                "task": {"type": "worker", "index": 0}}))
    with pytest.raises(CxrError, match="KERAS_BACKEND=jax cxraug train .* --coordinator"):
        pick_strategy()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _meet(clusters: list) -> list[str]:
    """Run the rendezvous of each cluster setting in its own thread: what each one says."""
    import threading

    from cxraug.errors import CxrError
    from cxraug.training.cluster import _rendezvous

    said = [""] * len(clusters)

    def one(i: int) -> None:
        try:
            _rendezvous(clusters[i])
            said[i] = "go"
        except CxrError as exc:
            said[i] = str(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(clusters))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return said


def test_processes_of_a_cluster_meet_before_jax_and_name_what_is_wrong() -> None:
    """JAX kills a process whose peers never come (a native stack trace); cxraug's rendezvous
    names the missing or misconfigured process in one line first."""
    from cxraug.training.cluster import Cluster

    address = f"localhost:{_free_port()}"
    # process 1 started before process 0: it retries until 0 listens, then both go
    assert _meet([Cluster(address, 3, 2, 10), Cluster(address, 3, 1, 10),
                  Cluster(address, 3, 0, 10)]) == ["go"] * 3
    # nobody at the coordinator's address
    nobody = _meet([Cluster(f"localhost:{_free_port()}", 2, 1, timeout_s=1)])[0]
    assert nobody.startswith("could not reach process 0 at localhost:") and "within 1 s" in nobody
    # process 0 alone: names who is missing
    alone = _meet([Cluster(f"localhost:{_free_port()}", 3, 0, timeout_s=1)])[0]
    assert "process(es) 1, 2 of 3 did not join within 1 s" in alone
    # a different --processes, and a rank given twice: both sides stop and say why
    address = f"localhost:{_free_port()}"
    said = _meet([Cluster(address, 2, 0, 10), Cluster(address, 3, 1, 10)])
    assert all("a process was started with --processes 3, process 0 with 2" in m for m in said)
    address = f"localhost:{_free_port()}"
    said = _meet([Cluster(address, 2, 0, 2), Cluster(address, 2, 0, 2)])
    assert any("cannot listen on port" in m or "--process-id 0" in m for m in said), said
    for message in said:
        assert "\n" not in message
