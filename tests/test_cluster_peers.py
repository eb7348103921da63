"""Training across processes survives a slow peer (issue 24): a process paused for 45 s is waited
for and the run equals the on-time one; a peer later than ``--cluster-timeout`` stops every
process with one line naming it, promptly, the run folder resumable."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import JAX_OVERRIDES, REPO

pytest.importorskip("jax", reason="training across processes runs on JAX")

#: How long the late process is held (gloo gives a late peer 30 s at each new collective group).
PAUSE_S = 45


def _port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start(cache: Path, out: Path, rank: int, port: int, log: Path,
           timeout_s: int = 300) -> subprocess.Popen:
    sets = [a for k, v in {**JAX_OVERRIDES, "train.epochs": 2}.items()
            for a in ("--set", f"{k}={','.join(v) if isinstance(v, list) else v}")]
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    cmd = [sys.executable, "-m", "cxraug.cli", "train", "--recipe", "smoke-32", "--data",
           str(cache), "--out", str(out), *sets, "--coordinator", f"localhost:{port}",
           "--processes", "2", "--process-id", str(rank), "--cluster-timeout", str(timeout_s)]
    return subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            cwd=out.parent)


def _pair(cache: Path, root: Path, name: str, pause: float = 0.0,
          timeout_s: int = 300) -> tuple[int, int, float, str, str]:
    """Two processes; process 1 is stopped (SIGSTOP) for ``pause`` seconds as soon as process 0
    says it started. Returns both exit codes, the seconds from the resume to the last exit, and
    both logs."""
    port, out = _port(), root / name
    logs = (root / f"{name}.p0.log", root / f"{name}.p1.log")
    p1 = _start(cache, out, 1, port, logs[1], timeout_s)
    p0 = _start(cache, out, 0, port, logs[0], timeout_s)
    resumed = time.monotonic()
    if pause:
        deadline = time.monotonic() + 600
        while "started:" not in logs[0].read_text() and time.monotonic() < deadline:
            if p0.poll() is not None:
                break
            time.sleep(0.2)
        p1.send_signal(signal.SIGSTOP)
        time.sleep(pause)
        p1.send_signal(signal.SIGCONT)
        resumed = time.monotonic()
    for p in (p0, p1):
        p.wait(timeout=900)
    return (p0.returncode, p1.returncode, time.monotonic() - resumed, logs[0].read_text(),
            logs[1].read_text())


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_a_peer_paused_for_45_s_is_waited_for_and_the_run_is_the_same(
        phantom_cache: Path, tmp_path: Path) -> None:
    on_time = _pair(phantom_cache, tmp_path, "on_time")
    assert on_time[:2] == (0, 0), on_time[3][-3000:]
    late = _pair(phantom_cache, tmp_path, "late", pause=PAUSE_S)
    assert late[:2] == (0, 0), (late[3][-3000:], late[4][-3000:])
    assert "Terminating process" not in late[3] + late[4]
    a, b = _rows(tmp_path / "on_time"), _rows(tmp_path / "late")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        for key in ("d_loss", "g_loss", "d_acc_real", "d_acc_fake"):
            assert float(rb[key]) == pytest.approx(float(ra[key]), rel=1e-5, abs=1e-6), key


@pytest.mark.slow
def test_a_peer_later_than_the_timeout_stops_both_with_one_line(
        phantom_cache: Path, tmp_path: Path) -> None:
    rc0, rc1, after, log0, log1 = _pair(phantom_cache, tmp_path, "gone", pause=PAUSE_S,
                                        timeout_s=15)
    assert (rc0, rc1) == (2, 2), (log0[-3000:], log1[-3000:])
    for log in (log0, log1):
        errors = [line for line in log.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "process(es) 1 of 2" in errors[0], log[-3000:]
        assert "--resume" in errors[0]
        assert "Terminating process" not in log and "Traceback" not in log
    # process 0 gave up 15 s after the others were due; process 1 stops as soon as it runs again
    assert after < 30, after
