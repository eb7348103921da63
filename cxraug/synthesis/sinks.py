"""Where augment's PNGs go: output sinks registered by name (``--layout``).

A sink owns the images' storage and nothing else: where a target's images live (the ``Path``
column of the CSVs is ``location/name``), which of them are already there and complete (what
``--resume`` and shard merges trust), storing one image so that it is either complete or absent
whatever interrupts it, and removing an earlier job's images (``--overwrite``). The CSVs, the
manifest, ``job.json`` and the shards' ``parts/`` are augment's and do not depend on the sink.

Adding a container (a zip, an HDF5 file) is one subclass of :class:`Sink` and one entry of
:data:`SINKS`; the CLI's ``--layout`` choices are read from there. Sinks are called from augment's
writer threads (``put``) while the main thread generates, so ``put`` must be thread-safe.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..io_utils import pid_alive

if TYPE_CHECKING:  # (the CLI lists the sinks: importing this module stays cheap)
    from .filters import SlotRecord

IMAGES = "images"
TMP_RE = re.compile(r"^\..+\.tmp$")  # a file being written (``.NAME.PID.tmp``)
_TMP_PID_RE = re.compile(r"^\..+\.(\d+)\.tmp$")


def writer_alive(tmp_name: str) -> bool:
    """Whether the process named in a ``.NAME.PID.tmp`` file still runs: another shard writing
    into the same folder keeps its files in flight; a killed run's are removed."""
    match = _TMP_PID_RE.match(tmp_name)
    if match is None:
        return False
    pid = int(match.group(1))
    # ours from an earlier attempt in this process: nothing is in flight
    return pid != os.getpid() and pid_alive(pid)


def _png_ok(path: Path) -> bool:
    from .png import png_ok

    return png_ok(path)


class Sink:
    """Storage of one job's images under ``--out``. ``location`` strings are relative to it."""

    name: str = ""
    description: str = ""

    def location(self, target_folder: str) -> str:
        """Where the images of a target whose own folder name is given go."""
        raise NotImplementedError

    def root(self, out: Path) -> Path:
        """What the summary names as where the images are."""
        raise NotImplementedError

    def open(self, out: Path, locations: list[str]) -> None:
        """Make ``locations`` ready for :meth:`put` (called once, before the first image)."""

    def stored(self, out: Path, location: str, ours: Callable[[str], bool]) -> Iterator[str]:
        """Names (those ``ours`` accepts) of the complete images at ``location``; an incomplete
        one, or one a killed writer left, is removed on the way."""
        raise NotImplementedError

    def record(self, out: Path, location: str, name: str) -> SlotRecord | None:
        """The filters' record of a stored image (None: it has none)."""
        raise NotImplementedError

    def discard(self, out: Path, location: str, name: str) -> None:
        """Remove one stored image (it belongs to another job's settings)."""
        raise NotImplementedError

    def put(self, out: Path, location: str, name: str, data: bytes) -> None:
        """Store one PNG so that it is either complete or absent, whatever interrupts this."""
        raise NotImplementedError

    def exists(self, out: Path, location: str, name: str) -> bool:
        """Whether a complete image of that name is stored (after an interrupt)."""
        raise NotImplementedError

    def remove(self, out: Path, locations: list[str], ours: Callable[[str], bool]) -> None:
        """Delete an earlier job's images (those ``ours`` accepts) and temporaries, nothing
        else; an interrupted removal is simply repeated."""
        raise NotImplementedError


class FolderSink(Sink):
    """One PNG file per image, in ``images/`` or in a folder per class; written to a
    ``.NAME.PID.tmp`` file and renamed into place (atomic), so a final name is always complete."""

    def __init__(self, name: str, per_class: bool, description: str) -> None:
        self.name, self.per_class, self.description = name, per_class, description

    def location(self, target_folder: str) -> str:
        return target_folder if self.per_class else IMAGES

    def root(self, out: Path) -> Path:
        return out if self.per_class else out / IMAGES

    def open(self, out: Path, locations: list[str]) -> None:
        for location in locations:
            (out / location).mkdir(exist_ok=True)

    def stored(self, out: Path, location: str, ours: Callable[[str], bool]) -> Iterator[str]:
        path = out / location
        if not path.is_dir():
            return
        for entry in os.scandir(path):
            if TMP_RE.match(entry.name):
                if not writer_alive(entry.name):  # left by a killed run (not a live shard's)
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                continue
            if not ours(entry.name):
                continue
            if _png_ok(Path(entry.path)):
                yield entry.name
            else:
                os.unlink(entry.path)

    def record(self, out: Path, location: str, name: str) -> SlotRecord | None:
        from .png import png_record

        return png_record(out / location / name)

    def discard(self, out: Path, location: str, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(out / location / name)

    def put(self, out: Path, location: str, name: str, data: bytes) -> None:
        path = out / location / name
        tmp = path.with_name(f".{name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)

    def exists(self, out: Path, location: str, name: str) -> bool:
        return (out / location / name).exists()

    def remove(self, out: Path, locations: list[str], ours: Callable[[str], bool]) -> None:
        for location in locations:
            path = out / location
            if not path.is_dir():
                continue
            for entry in os.scandir(path):
                if entry.is_file() and (ours(entry.name) or TMP_RE.match(entry.name)):
                    os.unlink(entry.path)
            with contextlib.suppress(OSError):
                path.rmdir()


SINKS: dict[str, Sink] = {
    "flat": FolderSink("flat", per_class=False, description="images/"),
    "class-folders": FolderSink("class-folders", per_class=True, description="<class>/"),
}
