"""augment's output folder: the files of a job, checking ``--out`` against the job it may
already hold (resume, overwrite), removing an earlier job's outputs, and finding what is stored."""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any

from ..errors import CxrError
from ..io_utils import write_json_atomic
from .filters import SlotRecord
from .naming import is_old_synthetic_name, is_synthetic_name, parse_synthetic_name
from .sinks import SINKS, TMP_RE, Sink
from .targets import Target

JOB_FORMAT = "cxraug-augment-2"
#: The job format of the earlier naming (1,000 images per synthetic patient): refused on resume.
OLD_JOB_FORMAT = "cxraug-augment-1"

DATA_CSV = "Data_Entry_2017.csv"
MIXED_CSV = "mixed.csv"
MANIFEST = "manifest.json"
JOB_FILE = "job.json"
PARTS = "parts"


def sink_of(spec: dict[str, Any]) -> Sink:
    """The sink a recorded job wrote into (flat for a job.json that names none)."""
    return SINKS.get(str(spec.get("layout")), SINKS["flat"])


def remove_outputs(out: Path, spec: dict[str, Any]) -> None:
    """Delete what an earlier job wrote (its PNGs, temp files, CSVs, manifests), nothing else.

    ``job.json`` goes last, so an interrupted removal is simply repeated by the next --overwrite.
    """
    sink = sink_of(spec)
    locations = list(dict.fromkeys(sink.location(t["folder"]) for t in spec.get("targets", [])))
    ours = is_old_synthetic_name if spec.get("format") == OLD_JOB_FORMAT else is_synthetic_name
    sink.remove(out, locations, ours)
    for name in (DATA_CSV, MIXED_CSV, MANIFEST):
        with contextlib.suppress(FileNotFoundError):
            (out / name).unlink()
    parts = out / PARTS
    if parts.is_dir():
        for entry in os.scandir(parts):
            if re.match(r"^shard-\d+-of-\d+\.(csv|json)$", entry.name) or TMP_RE.match(
                    entry.name):
                os.unlink(entry.path)
        with contextlib.suppress(OSError):
            parts.rmdir()
    with contextlib.suppress(FileNotFoundError):
        (out / JOB_FILE).unlink()


def prepare_out(out: Path, spec: dict[str, Any], resume: bool, overwrite: bool) -> None:
    """Check ``out`` (writable; empty, or this job) and record the job before any image."""
    job = out / JOB_FILE
    if out.exists() and not out.is_dir():
        raise CxrError(f"--out {out} is a file; give a folder")
    if out.is_dir() and not job.is_file():
        # another shard starting into the same folder may be writing job.json right now: its
        # temporaries do not count, and a job.json that appears meanwhile is compared below
        others = [e.name for e in out.iterdir()
                  if e.name != JOB_FILE and not TMP_RE.match(e.name)]
        if others and not job.is_file():
            raise CxrError(f"--out {out} is not empty and holds no augment job ({JOB_FILE}); "
                           "give a new or empty folder")
    if job.is_file():
        try:
            old = json.loads(job.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        if old is not None and old.get("format") == OLD_JOB_FORMAT:
            if not overwrite:
                raise CxrError(
                    f"--out {out} holds a job of cxraug's earlier naming (one synthetic patient "
                    "per 1,000 images); it is not resumed or mixed with today's (one patient per "
                    "image): use a new --out, or --overwrite to replace it")
            remove_outputs(out, old)  # job.json last: below, the folder is a new one
    if job.is_file():
        try:
            old = json.loads(job.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        if old is None or old.get("format") != JOB_FORMAT:
            raise CxrError(f"{job} is unreadable or not a cxraug augment job; remove it or pick "
                           "another --out")
        # how PNGs are deflated does not change a pixel: a job resumes across encoders
        same = {k: v for k, v in old.items() if k != "png"} == \
            {k: v for k, v in spec.items() if k != "png"}
        if not same or (overwrite and not resume):
            if not overwrite:
                diff = sorted(k for k in set(old) | set(spec)
                              if k != "png" and old.get(k) != spec.get(k))
                raise CxrError(f"--out {out} holds a different augment job (differs in "
                               f"{', '.join(diff)}); use a new --out, or --overwrite to replace "
                               "it")
            remove_outputs(out, old)
        elif not resume:
            raise CxrError(f"--out {out} already holds this job; rerun with --resume to finish "
                           "it, or --overwrite to start again")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test.{os.getpid()}.tmp"
        probe.write_bytes(b"")
        probe.unlink()
        if not job.is_file():
            write_json_atomic(job, spec)
    except OSError as exc:
        raise CxrError(f"--out {out}: cannot write there ({exc.strerror or exc}); choose a "
                       "writable folder") from None


def scan_stored(out: Path, targets: list[Target], sink: Sink,
          records: dict[int, dict[int, SlotRecord]] | None = None) -> dict[int, set[int]]:
    """Images of this job already stored and complete, per target code (the sink removes broken
    ones). ``records``: filled with each image's filter record (filtered jobs)."""
    present: dict[int, set[int]] = {t.code: set() for t in targets}
    by_location: dict[str, dict[int, Target]] = {}
    for t in targets:
        by_location.setdefault(sink.location(t.folder), {})[t.code] = t
    for location, codes in by_location.items():
        for name in sink.stored(out, location, is_synthetic_name):
            code, k = parse_synthetic_name(name)
            target = codes.get(code)
            if target is None or k >= target.count:
                continue
            if records is not None:
                record = sink.record(out, location, name)
                if record is None:  # not this filtered job's image: make it again
                    sink.discard(out, location, name)
                    continue
                records[code][k] = record
            present[code].add(k)
    return present
