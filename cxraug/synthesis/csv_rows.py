"""The rows of augment's CSVs: the synthetic rows in NIH's layout (Data_Entry_2017.csv, a
shard's part) and mixed.csv's text, real rows first."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from .naming import synthetic_name
from .real_data import RealData
from .sinks import Sink
from .targets import Target


def synthetic_rows(targets: list[Target], present: dict[int, set[int]],
                   keep: Callable[[int], bool], size: int, sink: Sink,
                   view: str = "") -> pd.DataFrame:
    """NIH rows (plus ``Path``) of the stored images ``keep`` selects, by target then k."""
    from ..data.nih import (
        FINDING_LABELS,
        FOLLOW_UP,
        HEIGHT,
        IMAGE_INDEX,
        PATIENT_ID,
        VIEW_POSITION,
        WIDTH,
    )

    names: list[str] = []
    labels: list[str] = []
    paths: list[str] = []
    for t in targets:
        folder = sink.location(t.folder)
        for k in sorted(k for k in present[t.code] if keep(k)):
            name = synthetic_name(t.code, k)
            names.append(name)
            labels.append(t.name)
            paths.append(f"{folder}/{name}")
    pid = np.array([int(n[:8]) for n in names], dtype=np.int64)
    fu = np.array([int(n[9:12]) for n in names], dtype=np.int64)
    return pd.DataFrame({IMAGE_INDEX: names, FINDING_LABELS: labels, FOLLOW_UP: fu,
                         PATIENT_ID: pid, VIEW_POSITION: pd.array([view or pd.NA] * len(names),
                                                                  dtype="string"),
                         WIDTH: np.full(len(names), size, dtype=np.int64),
                         HEIGHT: np.full(len(names), size, dtype=np.int64), "Path": paths})


def _mixed_columns(frame: pd.DataFrame) -> pd.DataFrame:
    from ..data.nih import CANONICAL_COLUMNS

    cols = list(CANONICAL_COLUMNS) + ["Path", "Synthetic"]
    frame = frame.copy()
    for c in cols:
        if c not in frame.columns:
            frame[c] = pd.NA
    return frame[cols]


def mixed_real_text(real: RealData | None, real_paths: list[str] | None) -> str:
    """mixed.csv's header and real rows, rendered once (the real table can be 112k rows)."""
    from ..data.nih import IMAGE_INDEX

    if real is None:
        header: str = _mixed_columns(pd.DataFrame()).to_csv(index=False, lineterminator="\n")
        return header
    rows = real.rows.copy()
    rows["Path"] = real_paths if real_paths is not None else rows[IMAGE_INDEX].astype(str)
    rows = rows[rows["Path"] != ""]
    rows["Synthetic"] = 0
    text: str = _mixed_columns(rows).to_csv(index=False, lineterminator="\n")
    return text


def mixed_synthetic_text(synth: pd.DataFrame) -> str:
    """mixed.csv's synthetic rows (no header), to follow :func:`mixed_real_text`."""
    rows = synth.copy()
    rows["Synthetic"] = 1
    text: str = _mixed_columns(rows).to_csv(index=False, header=False, lineterminator="\n")
    return text
