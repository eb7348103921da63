"""Progress bars that suit where they are written.

On a terminal: tqdm as usual. Into a file or a pipe (a log, CI, ``nohup``): tqdm's carriage
returns and cursor moves would make one line of thousands of characters with escape codes, so
the bar prints one plain line every ``LOG_INTERVAL_S`` seconds and one at the end.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

#: Seconds between two lines of a bar written to a file or a pipe.
LOG_INTERVAL_S = 30.0


class _Lines:
    """A stream that drops the bare newline tqdm writes when a bar closes (we end lines)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        return 0 if text == "\n" else self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()


class LineProgress(tqdm):
    """A tqdm for logs: whole lines, no carriage returns, no cursor movement."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["mininterval"] = LOG_INTERVAL_S  # a terminal's refresh rate would flood a log
        kwargs["ascii"] = True
        kwargs["dynamic_ncols"] = False
        kwargs.setdefault("ncols", 100)
        kwargs["position"] = None  # no stacking: nothing moves the cursor
        kwargs["file"] = _Lines(kwargs.get("file") or sys.stderr)
        self._quiet_start = True  # tqdm draws the empty bar at once: not worth a log line
        super().__init__(*args, **kwargs)
        self._quiet_start = False

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if self._quiet_start:
            return True
        line = (msg or self.__str__()).strip()
        if line:
            self.fp.write(line + "\n")
            self.fp.flush()
        return True

    def moveto(self, n: int) -> None:  # tqdm stacks bars with cursor moves; lines need none
        return None

    def clear(self, nolock: bool = False) -> None:
        return None


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress_bar(iterable: Any = None, **kwargs: Any) -> tqdm:
    """``tqdm(...)`` on a terminal, :class:`LineProgress` elsewhere (same arguments)."""
    stream = kwargs.pop("file", None) or sys.stderr
    if kwargs.get("disable") or _is_terminal(stream):
        return tqdm(iterable, file=stream, **kwargs)
    return LineProgress(iterable, file=stream, **kwargs)
