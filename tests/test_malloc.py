"""The suite's processes keep freed heap (tests/helpers.py ``keep_freed_heap``, called by
conftest.py): the setting that saves its page faults is in effect in the processes it starts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CHURN = """
import resource
import numpy as np
def churn():
    for _ in range(30):
        parts = [np.ones(12_000) for _ in range(200)]  # 96 KiB each, from the heap: 19 MB
        del parts
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(env: dict[str, str]) -> int:
    done = subprocess.run([sys.executable, "-c", CHURN], env=env, check=True,
                          capture_output=True, text=True, timeout=120)
    return int(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc: Linux only")
def test_the_suites_children_re_allocate_freed_memory_without_page_faults() -> None:
    from helpers import KEPT_HEAP

    assert all(os.environ.get(k) == v for k, v in KEPT_HEAP.items()), "conftest did not set it"
    glibc_default = {k: v for k, v in os.environ.items() if k not in KEPT_HEAP}
    kept, default = _faults(dict(os.environ)), _faults(glibc_default)
    # glibc's default trims the freed top of the heap: the second churn faults its pages in again
    assert default > 10_000 and kept * 10 < default, (kept, default)
