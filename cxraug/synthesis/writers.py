"""The PNG writer threads of a run: inference hands them chunks of images, they resize, encode
and store each chunk, and a class whose last image is stored gets its CSV update."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

from .job import Job
from .naming import synthetic_name
from .outputs import write_outputs
from .png import PNG_DEFLATE, encode_png
from .resize import resize_to_uint8
from .sinks import Sink


def write_batch(sink: Sink, out: Path, location: str, images: np.ndarray, names: list[str],
                ks: list[int], size: int, texts: list[str | None] | None = None,
                deflate: str = PNG_DEFLATE) -> list[int]:
    """Resize (if asked), quantize, encode and store one chunk (on a writer thread); returns
    its ks."""
    texts = texts or [None] * len(names)
    for image, name, text in zip(images, names, texts, strict=True):
        sink.put(out, location, name, encode_png(resize_to_uint8(image, size), text=text,
                                                 deflate=deflate))
    return ks


class Writers:
    """The PNG writer threads of one run and its per-class progress bars: chunks go to the pool
    as inference makes them; a class whose last image is stored gets its CSV update."""

    def __init__(self, job: Job, todo: list[int], workers: int, progress: bool) -> None:
        from ..progress import progress_bar

        self.job, self.workers, self.progress = job, workers, progress
        self.remaining = list(todo)
        self.shares = [job.spec.share(t) for t in job.spec.targets]
        self.initial = [s - left for s, left in zip(self.shares, todo, strict=True)]
        self.bars: dict[int, Any] = {}
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cxraug-png")
        self.pending: set[Future[list[int]]] = set()
        self.owner: dict[Future[list[int]], int] = {}  # future -> target position
        self.submitted: list[tuple[int, list[int], list[str]]] = []  # every chunk handed over
        self._bar = progress_bar

    def bar(self, i: int) -> Any:
        """Class i's bar, opened when its first batch is submitted (started from what exists)."""
        if i not in self.bars:
            self.bars[i] = self._bar(total=self.shares[i], initial=self.initial[i],
                                     desc=self.job.spec.targets[i].name[:24], unit="img",
                                     disable=not self.progress, file=sys.stderr, leave=True)
        return self.bars[i]

    def skip(self, i: int, n: int) -> None:
        """n slots of class i that every try failed: they write nothing."""
        self.remaining[i] -= n
        if self.remaining[i] == 0 and n:
            self._class_done(i)

    def submit(self, i: int, images: np.ndarray, ks: list[int], texts: list[str | None] | None,
               ) -> None:
        spec = self.job.spec
        t = spec.targets[i]
        names = [synthetic_name(t.code, k) for k in ks]
        # noted before submitting, so an interrupt at any point below cannot leave a stored
        # image that the CSVs never list
        self.submitted.append((i, ks, names))
        fut = self.pool.submit(write_batch, spec.sink, spec.out, spec.location(t), images, names,
                               ks, spec.size, texts, spec.deflate)
        self.pending.add(fut)
        self.owner[fut] = i

    def wait(self, most: int) -> None:
        """Block until at most ``most`` chunks are in flight."""
        while len(self.pending) > most:
            t0 = time.perf_counter()
            done, _ = wait(self.pending, return_when=FIRST_COMPLETED if most else ALL_COMPLETED)
            self.job.state.timings["wait_writers_s"] += time.perf_counter() - t0
            self.pending -= done
            self._collect(done)

    def _collect(self, done: Iterable[Future[list[int]]]) -> None:
        targets, state = self.job.spec.targets, self.job.state
        for fut in done:
            i = self.owner.pop(fut)
            ks = fut.result()
            state.present[targets[i].code].update(ks)
            state.generated += len(ks)
            self.remaining[i] -= len(ks)
            self.bar(i).update(len(ks))
            if self.remaining[i] == 0:
                self._class_done(i)

    def _class_done(self, i: int) -> None:
        self.bar(i).close()
        write_outputs(self.job, final=False)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.pool.shutdown(wait=True)

    def abandon(self) -> None:
        """After Ctrl-C or a write error: finish or cancel what is in flight, then record what
        is stored. The interrupt can land anywhere in the bookkeeping (after a submit, between
        ``owner.pop`` and ``present.update``), so this asks the sink, not the records: a final
        name only ever appears complete."""
        spec, present = self.job.spec, self.job.state.present
        self.pool.shutdown(wait=True, cancel_futures=True)
        for i, ks, names in self.submitted:
            t = spec.targets[i]
            present[t.code].update(k for k, name in zip(ks, names, strict=True)
                                   if spec.sink.exists(spec.out, spec.location(t), name))
        for bar in self.bars.values():
            bar.close()
