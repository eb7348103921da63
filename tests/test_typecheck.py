"""The type check: mypy on ``cxraug/`` with pyproject.toml's settings ([tool.mypy]) finds
nothing. The test extra installs mypy, so CI's test command runs it with the suite."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None,
                    reason="mypy is not installed (pip install -e '.[test]' installs it)")
def test_mypy_finds_no_errors() -> None:
    # from the project root, so that mypy reads pyproject.toml ([tool.mypy]: files = cxraug);
    # its cache (.mypy_cache) makes reruns take a fraction of a second
    done = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f"mypy found errors:\n{done.stdout}{done.stderr}"
