"""numpy's BLAS on one thread where threads cost more than they give: one place for all callers."""

from __future__ import annotations

from typing import Any


def one_blas_thread(threads: int = 1) -> Any:
    """A context in which numpy's BLAS runs on one thread (process-wide). The CNN probe's small
    products are 5-7x slower threaded on 2 busy cores (benchmarks/cnn_probe.py). Between onnxruntime
    calls (augment), OpenBLAS's idle threads spin and take the cores onnxruntime needs next: on
    2 cores augment with the privacy filter ran at 0.66 of its unfiltered speed, 0.93 with one
    BLAS thread; and augment's writer threads each resize with matrix products. ``threads``:
    another count for a block that needs every core (a large reference's search).

    The controller is made on every call (about 1 ms): one made earlier does not see a BLAS loaded
    since (scipy brings its own OpenBLAS), which then kept its threads (CI, stop 26)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController().limit(limits=threads, user_api="blas")
