"""The onnxruntime session options of every cxraug session (generator, its per-label copies and
the classifier): chosen here once."""

from __future__ import annotations

import os
from typing import Any


def session_options(threads: int | None = None, spinning: bool = True) -> Any:
    """The one place where onnxruntime session options are chosen (for every cxraug session).

    ``threads`` defaults to every core. Full graph optimization fuses Conv+BN+activation chains.
    ``spinning=False`` stops idle intra-op threads from busy-waiting, which matters when other
    threads (PNG writers) share the cores; the augment benchmark measures both settings.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or os.cpu_count() or 1)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return opts
