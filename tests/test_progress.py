"""Progress bars: tqdm on a terminal, whole lines in a log."""

from __future__ import annotations

import io
import subprocess
import sys

from cxraug.progress import LineProgress, progress_bar


def test_a_bar_into_a_file_writes_a_few_whole_lines() -> None:
    log = io.StringIO()
    bars = [progress_bar(total=1000, desc=f"class {i}", file=log, position=i) for i in range(3)]
    assert all(isinstance(b, LineProgress) for b in bars)
    for _ in range(1000):
        for b in bars:
            b.update(1)
    for b in bars:
        b.close()
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text  # no carriage returns, no cursor moves
    lines = text.splitlines()
    assert len(lines) == 3 and all(len(line) <= 100 for line in lines)  # one line at the end each
    assert lines[-1].startswith("class 2") and "1000/1000" in lines[-1]


def test_disabled_bars_write_nothing_and_augment_logs_lines(tmp_path) -> None:
    log = io.StringIO()
    bar = progress_bar(total=5, file=log, disable=True)
    bar.update(5)
    bar.close()
    assert log.getvalue() == ""
    # a real command with its stderr going to a file (not a terminal)
    proc = subprocess.run([sys.executable, "-m", "cxraug.cli", "augment", "--per-class", "3",
                           "--out", str(tmp_path / "aug")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr and "\x1b" not in proc.stderr
    assert max(len(line) for line in proc.stderr.splitlines()) < 300
