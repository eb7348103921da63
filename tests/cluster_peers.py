"""Late peers for tests/test_cluster_peers.py (issue 24), run by the background JAX side
(tests/helpers.py ``start_jax_side``), so that the seconds a peer is late overlap the rest of the
suite.

Usage: ``python cluster_peers.py job.json > result.json``. Each pair in the job is two ``cxraug
train --coordinator`` processes (the command with ``{rank}``); process 1 is held before the first
step (``CXRAUG_TEST_HOLD``, cxraug/training/cluster.py) until process 0 has waited there ``hold``
seconds (``inf``: until the run stops). A held process still answers JAX's heartbeats, as one that
compiles slower or shares its machine does; the hold counts from process 0's arrival, so the test
means the same on a busy machine. All pairs run at once. Prints, per pair: both exit codes, the
seconds from process 0's ``error:`` line (if any) to each exit, both logs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def main(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    pairs = []
    for pair in job["pairs"]:
        logs = [Path(f"{pair['name']}.p{rank}.log") for rank in (0, 1)]
        env = {**os.environ, "CXRAUG_TEST_HOLD": f"1:first-step:{pair['hold']}"}
        procs = [subprocess.Popen([a.replace("{rank}", str(rank)) for a in pair["cmd"]], env=env,
                                  stdout=logs[rank].open("w"), stderr=subprocess.STDOUT)
                 for rank in (1, 0)][::-1]
        pairs.append({**pair, "logs": logs, "procs": procs, "error_at": None, "exits": [None] * 2})
    deadline = time.monotonic() + 1200
    while any(p.poll() is None for pair in pairs for p in pair["procs"]):
        now = time.monotonic()
        if now > deadline:
            for pair in pairs:
                for p in pair["procs"]:
                    p.kill()
            break
        for pair in pairs:
            if pair["error_at"] is None and "error: " in pair["logs"][0].read_text():
                pair["error_at"] = now
            for rank, p in enumerate(pair["procs"]):
                if p.poll() is not None and pair["exits"][rank] is None:
                    pair["exits"][rank] = now
        time.sleep(0.1)
    now = time.monotonic()
    print(json.dumps({pair["name"]: {
        "codes": [p.returncode for p in pair["procs"]],
        "after_error": [None if pair["error_at"] is None else (e or now) - pair["error_at"]
                        for e in pair["exits"]],
        "logs": [log.read_text() for log in pair["logs"]]} for pair in pairs}))


if __name__ == "__main__":
    main(sys.argv[1])
