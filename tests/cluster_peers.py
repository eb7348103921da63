"""Late peers for tests/test_cluster_peers.py (issue 24), run by the background JAX side after its
on-time two-process run (tests/helpers.py ``start_jax_side``), so that the seconds a peer is held
overlap the rest of the suite.

Usage: ``python cluster_peers.py job.json > result.json``. Each pair in the job is two ``cxraug
train --coordinator`` processes (the command with ``{rank}``); process 1 is stopped (SIGSTOP) as
soon as process 0 says ``started:`` (before the processes meet to share the state and compile
the step), and continued ``pause`` seconds after process 0 said it waits for it at a meeting (so
process 0 waited ``pause`` + 10 s there), or, with ``"until": "error: "``, once process 0 has
printed that (it gave up). Events, not a fixed schedule: the test means the same on a busy
machine. All pairs run at once. Prints, per pair: both exit codes, the seconds from the continue
to each exit, both logs.
"""


from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

#: What process 0 prints once it has waited 10 s for process 1 at a meeting.
WAITING = "waiting for process(es) 1 at the"


def main(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    pairs = []
    for pair in job["pairs"]:
        logs = [Path(f"{pair['name']}.p{rank}.log") for rank in (0, 1)]
        procs = [subprocess.Popen([a.replace("{rank}", str(rank)) for a in pair["cmd"]],
                                  stdout=logs[rank].open("w"), stderr=subprocess.STDOUT)
                 for rank in (1, 0)][::-1]
        pairs.append({**pair, "logs": logs, "procs": procs, "stopped": None, "resumed": None})
    deadline = time.monotonic() + 1200
    while any(p.poll() is None for pair in pairs for p in pair["procs"]):
        now = time.monotonic()
        if now > deadline:
            for pair in pairs:
                for p in pair["procs"]:
                    p.kill()
            break
        for pair in pairs:
            log0, (p0, p1) = pair["logs"][0].read_text(), pair["procs"]
            if pair["stopped"] is None:
                if "started:" in log0 or p0.poll() is not None:
                    p1.send_signal(signal.SIGSTOP)
                    pair["stopped"] = now
            elif pair["resumed"] is None:
                if WAITING in log0 and pair.get("waiting") is None:
                    pair["waiting"] = now
                due = (pair["until"] in log0 if pair.get("until") else
                       pair.get("waiting") is not None and now - pair["waiting"] >= pair["pause"])
                if due or p0.poll() is not None:
                    p1.send_signal(signal.SIGCONT)
                    pair["resumed"] = now
            for rank, p in enumerate(pair["procs"]):
                if p.poll() is not None and f"exit{rank}" not in pair:
                    pair[f"exit{rank}"] = now
        time.sleep(0.1)
    now = time.monotonic()
    result = {pair["name"]: {
        "codes": [p.returncode for p in pair["procs"]],
        "after_resume": [pair.get(f"exit{rank}", now) - (pair["resumed"] or now)
                         for rank in (0, 1)],
        "logs": [log.read_text() for log in pair["logs"]]} for pair in pairs}
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
