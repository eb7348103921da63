"""NIH ChestX-ray14 format: class names, column names and the exact CSV layout.

NIH's ``Data_Entry_2017.csv`` has a header quirk: ``OriginalImage[Width,Height]`` and
``OriginalImagePixelSpacing[x,y]`` hold unquoted commas and the header ends with a trailing comma,
so the header splits into 12 fields while every data row has 11. Inside cxraug those two bracketed
columns are four plain columns (:data:`CANONICAL_COLUMNS`); :func:`write_nih_csv` writes them back
in NIH's exact layout so tools written for the official file read ours unchanged.
"""

from __future__ import annotations

import csv
import io
import math
import os

import pandas as pd

from ..io_utils import write_text_atomic

NO_FINDING = "No Finding"

#: The 14 ChestX-ray14 pathologies, sorted, spelled as NIH spells them.
PATHOLOGIES: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
)

#: Every label that may appear in ``Finding Labels``.
ALL_LABELS: tuple[str, ...] = (NO_FINDING, *PATHOLOGIES)

#: The paper's 7 classes in its label order (integers 0-6).
PAPER_CLASSES: tuple[str, ...] = (
    NO_FINDING,
    "Atelectasis",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumothorax",
)

IMAGE_INDEX = "Image Index"
FINDING_LABELS = "Finding Labels"
FOLLOW_UP = "Follow-up #"
PATIENT_ID = "Patient ID"
PATIENT_AGE = "Patient Age"
PATIENT_GENDER = "Patient Gender"
VIEW_POSITION = "View Position"
WIDTH = "OriginalImage Width"
HEIGHT = "OriginalImage Height"
SPACING_X = "OriginalImagePixelSpacing x"
SPACING_Y = "OriginalImagePixelSpacing y"

#: The 11 per-row fields of NIH's file, with the bracketed pairs split into plain columns.
CANONICAL_COLUMNS: tuple[str, ...] = (
    IMAGE_INDEX,
    FINDING_LABELS,
    FOLLOW_UP,
    PATIENT_ID,
    PATIENT_AGE,
    PATIENT_GENDER,
    VIEW_POSITION,
    WIDTH,
    HEIGHT,
    SPACING_X,
    SPACING_Y,
)

#: NIH's header line, byte for byte (12 comma-separated fields, trailing comma included).
NIH_HEADER_LINE = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)


def image_name(patient_id: int, follow_up: int) -> str:
    """NIH's ``PPPPPPPP_FFF.png`` file name."""
    return f"{int(patient_id):08d}_{int(follow_up):03d}.png"


def _format_field(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return repr(float(value))  # np.float64's repr is 'np.float64(x)'
    if value is pd.NA or value is pd.NaT:
        return ""
    return str(value)


def nih_csv_text(frame: pd.DataFrame) -> str:
    """Render rows with (some of) :data:`CANONICAL_COLUMNS` as NIH's exact CSV text.

    Missing columns are written as empty fields; extra columns are not written (NIH's layout has
    exactly 11 fields per row).
    """
    missing = [c for c in (IMAGE_INDEX, FINDING_LABELS) if c not in frame.columns]
    if missing:
        raise ValueError(f"rows lack required NIH columns {missing}")
    out = io.StringIO()
    out.write(NIH_HEADER_LINE + "\n")
    writer = csv.writer(out, lineterminator="\n")
    columns = [frame[c] if c in frame.columns else None for c in CANONICAL_COLUMNS]
    for i in range(len(frame)):
        writer.writerow(
            [_format_field(col.iat[i]) if col is not None else "" for col in columns]
        )
    return out.getvalue()


def write_nih_csv(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write rows atomically as a ``Data_Entry_2017.csv`` in NIH's exact layout."""
    write_text_atomic(path, nih_csv_text(frame))
