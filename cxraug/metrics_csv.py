"""A run's metrics.csv read back as numbers, below the stages: training's resume keeps its rows
and evaluate charts its columns (``evaluate --run``). Training's loop writes it (its columns:
docs/ARCHITECTURE.md, "Run folder")."""

from __future__ import annotations

import csv
import math
from pathlib import Path


def read_metrics(path: Path) -> list[dict[str, float]]:
    """The rows of a run's metrics.csv as floats, every column in every row (an empty or
    unreadable cell is NaN: the realism columns are only filled at ``train.eval_every``)."""
    rows = []
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            parsed = {}
            for key, value in row.items():
                if key is None:  # a row longer than the header
                    continue
                try:
                    parsed[key] = float(value)
                except (TypeError, ValueError):
                    parsed[key] = math.nan
            rows.append(parsed)
    return rows
