"""One augment run once its options are checked: what it makes (:class:`JobSpec`), what is
stored so far (:class:`JobState`), and the per-class rows the manifest and summary report.

Everything the CSVs and manifest say is read from what is stored, never from what was planned
(:mod:`.outputs` writes them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..inference.generator import OnnxGenerator
from .filters import ClassStats, Filters, SlotRecord
from .naming import synthetic_name
from .out_folder import scan_stored
from .real_data import LocatedReal
from .sinks import Sink
from .targets import Target


@dataclass(frozen=True)
class JobSpec:
    """What to make and where: fixed for the whole run (the job.json of a folder records it)."""

    out: Path
    sink: Sink
    gen: OnnxGenerator
    model: Path
    model_sha: str
    targets: list[Target]
    size: int  # side of the written PNGs
    view: str
    seed: int
    device: str
    shard: tuple[int, int]
    deflate: str  # the PNGs' DEFLATE (png.PNG_DEFLATES)
    filters: Filters
    target_per_class: int | None
    options: dict[str, Any]  # the options as the manifest records them

    def mine(self, k: int) -> bool:
        """Whether slot k belongs to this shard."""
        i, n = self.shard
        return n == 1 or k % n == i - 1

    def location(self, t: Target) -> str:
        return self.sink.location(t.folder)

    def share(self, t: Target) -> int:
        """Images of target t this shard makes."""
        return sum(1 for k in range(t.count) if self.mine(k)) if self.shard[1] > 1 else t.count


def _timings() -> dict[str, float]:
    return {"inference_s": 0.0, "latents_s": 0.0, "wait_writers_s": 0.0}


@dataclass
class JobState:
    """What is stored (found on disk, then added to as the writers store images)."""

    present: dict[int, set[int]] = field(default_factory=dict)  # code -> stored ks
    # filtered jobs: code -> k -> the kept image's record
    records: dict[int, dict[int, SlotRecord]] | None = None
    # this run's slots that every try failed: code -> k -> (privacy drops, label drops)
    unfilled: dict[int, dict[int, tuple[int, int]]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=_timings)
    generated: int = 0


@dataclass
class Job:
    """A run: its spec, its state, its real rows and notes, and the files written so far."""

    spec: JobSpec
    real: LocatedReal
    notes: list[str]
    started: float  # perf_counter at the start of augment()
    state: JobState = field(default_factory=JobState)
    paths: dict[str, Path] = field(default_factory=dict)  # what the summary says was written
    mixed_real_text: str | None = None  # mixed.csv's real part, rendered once

    def scan(self) -> None:
        """Find what an earlier run stored, and get the sink ready for the rest."""
        spec, state = self.spec, self.state
        state.records = ({t.code: {} for t in spec.targets} if spec.filters.active else None)
        state.present = scan_stored(spec.out, spec.targets, spec.sink, state.records)
        state.unfilled = {t.code: {} for t in spec.targets}
        spec.sink.open(spec.out, list(dict.fromkeys(spec.location(t) for t in spec.targets)))
        self.paths["images"] = spec.sink.root(spec.out)

    def stored_count(self) -> int:
        return sum(1 for t in self.spec.targets for k in self.state.present[t.code]
                   if self.spec.mine(k))

    def class_stats(self, t: Target) -> ClassStats:
        """Tries and drops of a target's slots (kept images' records + empty slots)."""
        mine, present = self.spec.mine, self.state.present[t.code]
        stats = ClassStats()
        assert self.state.records is not None
        for k, record in self.state.records[t.code].items():
            if mine(k) and k in present:
                stats.add(record)
        for k, (priv, lab) in self.state.unfilled[t.code].items():
            if mine(k) and k not in present:
                stats.tries += priv + lab
                stats.privacy += priv
                stats.label += lab
                stats.unfilled += 1
        return stats

    def target_rows(self) -> list[dict[str, Any]]:
        """Per target: its plan, what is on disk and, filtered, its tries and drops."""
        spec = self.spec
        rows = []
        for t in spec.targets:
            row = {"name": t.name, "code": t.code, "real": t.real, "target": spec.target_per_class,
                   "generate": t.count, "shard_share": spec.share(t),
                   "on_disk": sum(1 for k in self.state.present[t.code] if spec.mine(k)),
                   "folder": spec.location(t), "first_name": synthetic_name(t.code, 0)}
            if spec.filters.active:
                st = self.class_stats(t)
                row["filter"] = {"tried": st.tries, "dropped_privacy": st.privacy,
                                 "dropped_label": st.label, "kept": st.kept,
                                 "unfilled": st.unfilled, "drop_rate": round(st.drop_rate(), 4)}
            rows.append(row)
        return rows
