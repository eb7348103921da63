"""Import TensorFlow without its start-up notices.

TensorFlow's C++ libraries print INFO lines when they load (oneDNN is on, no CUDA driver, "All
log messages before absl::InitializeLog() ..."), twice, before any flag can silence them: the
log level variable does not reach them. They say nothing a user can act on, so the import runs
with the process's stderr captured, and every captured line that is not one of those notices is
written back (a real warning or an import error still shows).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

#: Start-up notices dropped; anything else TensorFlow prints while loading is kept.
NOISE = re.compile(
    r"All log messages before absl::InitializeLog|oneDNN custom operations are on|"
    r"Could not find cuda drivers|This TensorFlow binary is optimized|"
    r"To enable the following instructions|TF-TRT Warning|Unable to register cu(DNN|FFT|BLAS)|"
    r"computation placer already registered|cuInit: UNKNOWN ERROR|"
    r"failed call to cuInit|kernel driver does not appear to be running")


@contextlib.contextmanager
def captured_native_output(fds: tuple[int, ...] = (2,)) -> Iterator[list[str]]:
    """Capture what native libraries print on file descriptors ``fds`` (Python's own streams
    are flushed around it); the yielded list is filled with the captured lines on exit."""
    lines: list[str] = []
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(fd) for fd in fds]
    with tempfile.TemporaryFile() as sink:
        for fd in fds:
            os.dup2(sink.fileno(), fd)
        try:
            yield lines
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in zip(fds, saved, strict=True):
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            lines += sink.read().decode("utf-8", "replace").splitlines()


def import_tensorflow() -> Any:
    """``import tensorflow`` (and its first device query) with the start-up notices dropped."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        with captured_native_output() as printed:
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")  # its CUDA probe prints too: once, here
    finally:
        kept = [line for line in printed if line.strip() and not NOISE.search(line)]
        if kept:
            sys.stderr.write("\n".join(kept) + "\n")
    return tf
