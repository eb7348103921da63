"""Training across processes survives a slow peer (issue 24). Gloo gives a late peer 30 s at each
new collective group; cxraug's processes meet before the first step with the cluster's timeout.
The runs are made by the background JAX side (tests/cluster_peers.py, after the on-time run of
tests/test_backends.py): process 1 stopped (SIGSTOP) as soon as process 0 says ``started:``, so
that process 0 waits for it at their next meeting: 45 s more than the 10 s after which process 0
says so, with the default timeout; and, with ``--cluster-timeout 40``, until process 0 gave up."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_peer_paused_for_45_s_is_waited_for_and_the_run_is_the_same(jax_side: dict) -> None:
    late, root = jax_side["peers"]["late"], jax_side["root"]
    assert late["codes"] == [0, 0], [log[-3000:] for log in late["logs"]]
    waits = [int(w) for w in re.findall(r"process 0: waited (\d+) s for the other processes "
                                        r"at the ", late["logs"][0])]
    assert max(waits, default=0) >= 54, late["logs"][0][-3000:]  # well past gloo's 30 s
    for log in late["logs"]:
        assert "Terminating process" not in log and "DEADLINE_EXCEEDED" not in log
    on_time, held_up = _rows(root / "cluster"), _rows(root / "late")
    assert [r["step"] for r in held_up] == [r["step"] for r in on_time] and on_time
    for a, b in zip(on_time, held_up, strict=True):
        for key in ("d_loss", "g_loss", "d_acc_real", "d_acc_fake"):
            assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-6, abs=1e-7), key


def test_a_peer_later_than_the_timeout_stops_both_with_one_line(jax_side: dict) -> None:
    gone = jax_side["peers"]["gone"]
    assert gone["codes"] == [2, 2], [log[-3000:] for log in gone["logs"]]
    for log in gone["logs"]:
        errors = [line for line in log.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, log[-3000:]
        assert re.search(r"process\(es\) 1 of 2 did not reach the [a-z ]+ within 40 s",
                         errors[0]), errors[0]
        assert "--resume" in errors[0]
        assert "Terminating process" not in log and "Traceback" not in log
        assert "failed:" not in log and "internal error" not in log
    # process 0 gave up 40 s after it was ready (process 1 still stopped) and waited for process
    # 1 to read why; process 1 stopped as soon as it ran again, then process 0 too
    assert max(gone["after_resume"]) < 60, gone["after_resume"]
