"""The one NIH label reader: CSV parsing, class selection, multi-label policy, patient split.

Every command that reads labels (prepare, augment, evaluate, downstream) goes through
:func:`load_label_table` (or its parts), so a CSV is understood the same way everywhere.

What is accepted:

* NIH's ``Data_Entry_2017.csv`` with its header quirk (``OriginalImage[Width,Height]`` and
  ``OriginalImagePixelSpacing[x,y]`` hold unquoted commas, the header ends with a trailing comma:
  12 header fields, 11 per row), the ``_v2020`` variant (no trailing comma), and exports whose
  bracketed pairs are split into separate columns under other names (``Width``, ``Height``,
  ``OriginalImageWidth``, ...), or quoted as one field (``"2500,2048"``).
* Ages written ``60``, ``060Y``, ``18M`` (months), ``3W``/``10D`` (weeks/days, age 0).
* Only ``Image Index`` and ``Finding Labels`` are required; optional columns may be missing or
  empty; columns cxraug does not know are carried through unchanged.

Policies (documented here because every stage shares them):

* ``multi_label="drop"`` (the paper): keep an image only when its labels are exactly one selected
  class. An image with several labels is dropped even when only one of them is selected, and so is
  an image whose single label is not selected.
* ``multi_label="keep"``: keep every image that carries at least one selected class; its multi-hot
  vector marks the selected classes it carries (non-selected pathologies are ignored); ``label`` is
  the class index when exactly one selected class is present, else ``-1``. ``No Finding`` is a class
  of its own (NIH never combines it with a pathology).
* Class selection default (neither ``classes`` nor ``top_k``): ``top_k=6``, the paper's choice
  (or as many pathologies as occur as an image's only label, when that is fewer than 6).
* Split: by patient (no patient in two splits), stratified by each patient's rarest class so that
  small classes still reach val and test; NIH's official lists override the random test draw.
"""

from __future__ import annotations

import csv
import difflib
import io
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import CxrError
from .nih import (
    ALL_LABELS,
    CANONICAL_COLUMNS,
    FINDING_LABELS,
    FOLLOW_UP,
    HEIGHT,
    IMAGE_INDEX,
    NO_FINDING,
    PATHOLOGIES,
    PATIENT_AGE,
    PATIENT_GENDER,
    PATIENT_ID,
    SPACING_X,
    SPACING_Y,
    VIEW_POSITION,
    WIDTH,
)

#: Default number of pathologies picked by frequency when the user names no classes (the paper's).
DEFAULT_TOP_K = 6
MULTI_LABEL_POLICIES = ("drop", "keep")
SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")
VIEWS = ("PA", "AP")

_NAME_RE = re.compile(r"^(\d+)_(\d+)\.[A-Za-z0-9]+$")


def _key(name: str) -> str:
    """Case-, space-, underscore- and punctuation-insensitive form of a name, for matching."""
    return re.sub(r"[^0-9a-z#]", "", name.lower())


# Header names (in _key form) that mean a canonical column. The bracketed NIH pairs expand to
# "OriginalImage Width" etc. before this lookup, so both spellings land here.
_ALIASES: dict[str, str] = {}
for _canon, _names in {
    IMAGE_INDEX: ("Image Index", "image", "image name", "image id", "image_id", "filename",
                  "file name", "file"),
    FINDING_LABELS: ("Finding Labels", "finding label", "findings", "labels", "label"),
    FOLLOW_UP: ("Follow-up #", "follow-up", "followup", "follow up number", "follow_up_number"),
    PATIENT_ID: ("Patient ID", "patient", "patient_id", "patientid"),
    PATIENT_AGE: ("Patient Age", "age"),
    PATIENT_GENDER: ("Patient Gender", "gender", "sex", "patient sex"),
    VIEW_POSITION: ("View Position", "view", "view_position", "projection"),
    WIDTH: ("OriginalImage Width", "OriginalImageWidth", "Original Image Width", "width",
            "image width", "original width", "orig width"),
    HEIGHT: ("OriginalImage Height", "OriginalImageHeight", "Original Image Height", "height",
             "image height", "original height", "orig height"),
    SPACING_X: ("OriginalImagePixelSpacing x", "OriginalImagePixelSpacingX", "pixel spacing x",
                "spacing x", "pixelspacing_x", "original pixel spacing x"),
    SPACING_Y: ("OriginalImagePixelSpacing y", "OriginalImagePixelSpacingY", "pixel spacing y",
                "spacing y", "pixelspacing_y", "original pixel spacing y"),
}.items():
    for _n in _names:
        _ALIASES[_key(_n)] = _canon

_INT_COLUMNS = (FOLLOW_UP, PATIENT_ID, WIDTH, HEIGHT)
_FLOAT_COLUMNS = (SPACING_X, SPACING_Y)


# ------------------------------------------------------------------------------------ reading
def _expand_header(fields: list[str]) -> list[str]:
    """Re-join NIH's unquoted ``Name[a,b]`` header fields and expand them to ``Name a``, ``Name b``.

    A quoted ``"Name[a,b]"`` field (one field holding a comma) expands the same way; whether the
    rows then hold one or two fields for it is settled by :func:`_check_rows`.
    """
    joined: list[str] = []
    i = 0
    while i < len(fields):
        name = fields[i]
        if "[" in name and "]" not in name:
            j = i + 1
            while j < len(fields) and "]" not in fields[j]:
                j += 1
            if j < len(fields):
                name = ",".join(fields[i: j + 1])
                i = j
        joined.append(name)
        i += 1
    while joined and not joined[-1].strip():
        joined.pop()  # NIH's trailing comma
    return joined


def _bracket_parts(name: str) -> tuple[str, list[str]] | None:
    match = re.fullmatch(r"\s*([^\[\]]+?)\s*\[([^\[\]]*)\]\s*", name)
    if not match or "," not in match.group(2):
        return None
    return match.group(1), [p.strip() for p in match.group(2).split(",")]


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CxrError(f"{path}: label CSV not found; pass the path of Data_Entry_2017.csv"
                       ) from None
    except IsADirectoryError:
        raise CxrError(f"{path}: is a folder; pass the label CSV file itself") from None
    except OSError as exc:
        raise CxrError(f"{path}: cannot read the label CSV ({exc.strerror or exc})") from None
    if b"\x00" in raw[:65536]:
        raise CxrError(f"{path}: not a CSV file (binary content); pass NIH's Data_Entry_2017.csv")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    if not text.strip():
        raise CxrError(f"{path}: the label CSV is empty; expected a header and one row per image")
    return text


def _field_counts(text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per non-blank line after the header: field count, line number, ends-with-comma flag.

    Counting commas with numpy is exact for files without quotes (NIH's) and takes milliseconds
    for 112,120 rows; quoted files go through the csv module instead (see :func:`_check_rows`).
    """
    data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    newlines = np.flatnonzero(data == 10)
    starts = np.concatenate([[0], newlines + 1])
    ends = np.concatenate([newlines, [len(data)]])
    commas = np.flatnonzero(data == 44)
    counts = np.searchsorted(commas, ends) - np.searchsorted(commas, starts) + 1
    # a line is blank when it holds only whitespace (\r, spaces)
    nonspace = np.flatnonzero((data != 10) & (data != 13) & (data != 32) & (data != 9))
    has_content = np.searchsorted(nonspace, ends) > np.searchsorted(nonspace, starts)
    last = ends - 1
    last = np.where((last >= starts) & (data[np.clip(last, 0, None)] == 13), last - 1, last)
    trailing = (last >= starts) & (data[np.clip(last, 0, None)] == 44)
    lineno = np.arange(1, len(starts) + 1)
    keep = has_content
    keep[0] = False  # the header
    return counts[keep], lineno[keep], trailing[keep]


def _check_rows(path: Path, text: str, width: int, collapsed: int) -> tuple[int, int]:
    """Validate every row's field count.

    Returns the number of columns rows hold (``width``, or ``collapsed`` when bracketed pairs were
    quoted as one field) and the most fields a row has (one more with a trailing comma).
    """
    if '"' in text:
        rows = csv.reader(io.StringIO(text, newline=""))
        next(rows)
        counts_l, lines_l, trail_l = [], [], []
        try:
            for row in rows:
                if row and any(f.strip() for f in row):
                    counts_l.append(len(row))
                    lines_l.append(rows.line_num)
                    trail_l.append(not row[-1].strip())
        except csv.Error as exc:
            raise CxrError(f"{path}: not a valid CSV ({exc}) near line {rows.line_num}") from None
        counts, lines, trailing = np.array(counts_l), np.array(lines_l), np.array(trail_l)
    else:
        counts, lines, trailing = _field_counts(text)
    if not len(counts):
        raise CxrError(f"{path}: the label CSV has a header but no rows")
    used = collapsed if counts[0] in (collapsed, collapsed + 1) and collapsed != width else width
    ok = (counts == used) | ((counts == used + 1) & trailing)
    if not ok.all():
        bad = int(np.flatnonzero(~ok)[0])
        raise CxrError(
            f"{path}: line {int(lines[bad])} has {int(counts[bad])} fields but the header names "
            f"{used} columns; fix or remove that row ({int((~ok).sum())} such rows)"
        )
    return used, int(counts.max())


def _read_table(path: Path) -> pd.DataFrame:
    """The CSV as a frame of header-named columns (bracket pairs split), values as read."""
    text = _read_text(path)
    try:
        header = next(csv.reader(io.StringIO(text, newline="")))
    except (csv.Error, StopIteration) as exc:
        raise CxrError(f"{path}: not a valid CSV header ({exc})") from None
    header = _expand_header(header)
    names: list[str] = []
    collapsed_names: list[str] = []
    bracket: dict[str, list[str]] = {}
    for name in header:
        parts = _bracket_parts(name)
        collapsed_names.append(name.strip())
        if parts is None:
            names.append(name.strip())
        else:
            bracket[name.strip()] = [f"{parts[0]} {p}" for p in parts[1]]
            names.extend(bracket[name.strip()])
    used, most = _check_rows(path, text, len(names), len(collapsed_names))
    columns = names if used == len(names) else collapsed_names
    text_cols = [i for i, n in enumerate(columns)
                 if _ALIASES.get(_key(n)) not in _INT_COLUMNS + _FLOAT_COLUMNS]
    try:
        frame = pd.read_csv(
            io.StringIO(text), header=None, skiprows=1, names=list(range(most)),
            dtype={i: str for i in text_cols}, keep_default_na=False, na_values=[""],
            skip_blank_lines=True, engine="c",
        )
    except (pd.errors.ParserError, ValueError) as exc:
        raise CxrError(f"{path}: not a valid CSV ({str(exc).strip().splitlines()[-1]})") from None
    frame = frame.iloc[:, :used]  # a trailing comma's empty extra field
    frame.columns = columns
    for name, split_names in bracket.items():
        if name in frame.columns:  # quoted "2500,2048" values: split them back into two columns
            pieces = frame[name].astype("string").str.split(",", expand=True)
            at = frame.columns.get_loc(name)
            frame = frame.drop(columns=[name])
            for j, part in enumerate(split_names):
                value = pieces[j].str.strip() if j in pieces.columns else None
                frame.insert(at + j, part, value)
    return frame


def _parse_age(series: pd.Series, path: Path) -> pd.Series:
    """Ages as whole years: ``60``, ``060Y``; ``18M`` months, ``3W`` weeks and ``10D`` days too."""
    if pd.api.types.is_numeric_dtype(series):
        return _parse_number(series, PATIENT_AGE, path, integer=True)
    text = series.astype("string").str.strip().str.upper().fillna("")
    match = text.str.extract(r"^(\d+(?:\.\d+)?)\s*([YMWD]?)$")
    bad = text.ne("") & match[0].isna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise CxrError(f"{path}: row {row + 2}: {PATIENT_AGE} {series.iat[row]!r} is not an age "
                       "(expected e.g. 60 or 060Y)")
    value = pd.to_numeric(match[0], errors="coerce")
    unit = match[1].fillna("")
    years = value.where(unit.isin(["", "Y"]), 0.0)
    years = years.where(unit != "M", np.floor(value / 12.0))
    return years.round().astype("Int64")


def _parse_number(series: pd.Series, column: str, path: Path, integer: bool) -> pd.Series:
    """A numeric column, already numeric from the C parser or parsed here; errors name the row."""
    if pd.api.types.is_numeric_dtype(series):
        value = series.astype("float64")
        bad = pd.Series(False, index=series.index)
    else:
        text = series.astype("string").str.strip()
        value = pd.to_numeric(text.where(text != "", None), errors="coerce").astype("float64")
        bad = (text.fillna("") != "") & value.isna()
    if integer:
        bad |= value.notna() & (value != np.round(value))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        kind = "a whole number" if integer else "a number"
        raise CxrError(f"{path}: row {row + 2}: {column} {series.iat[row]!r} is not {kind}")
    return value.round().astype("Int64") if integer else value.astype("Float64")


def read_nih_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read an NIH-style label CSV into a frame with :data:`CANONICAL_COLUMNS` names.

    Canonical columns are typed (ids, follow-up, sizes, ages as nullable ints; spacings as floats;
    text as str, empty -> missing); other columns are kept as their original strings. ``Patient
    ID`` is taken from ``PPPPPPPP_FFF.png`` names where missing. Any problem raises a one-line
    :class:`CxrError` naming the file (and the row where it helps). Row numbers count the header as
    row 1.
    """
    path = Path(path)
    frame = _read_table(path)
    # exact canonical names first, so an alias column ("file") never displaces the real one
    taken: set[str] = {str(n) for n in frame.columns if n in CANONICAL_COLUMNS}
    renamed: list[str] = []
    for name in frame.columns:
        canon = _ALIASES.get(_key(name))
        if name in CANONICAL_COLUMNS:
            renamed.append(name)
        elif canon is not None and canon not in taken:
            taken.add(canon)
            renamed.append(canon)
        else:
            renamed.append(name)
    if len(set(renamed)) != len(renamed):
        dup = sorted({n for n in renamed if renamed.count(n) > 1})
        raise CxrError(f"{path}: duplicate column name(s) {dup}; rename them")
    missing = [c for c in (IMAGE_INDEX, FINDING_LABELS) if c not in taken]
    if missing:
        raise CxrError(
            f"{path}: no {' or '.join(repr(m) for m in missing)} column (header: "
            f"{', '.join(map(str, frame.columns[:6])) or 'empty'}); is this NIH's "
            "Data_Entry_2017.csv?"
        )
    frame.columns = renamed
    image = frame[IMAGE_INDEX].fillna("").str.strip()
    if (image == "").any():
        row = int(np.flatnonzero((image == "").to_numpy())[0])
        raise CxrError(f"{path}: row {row + 2} has an empty {IMAGE_INDEX}")
    dup = image.duplicated(keep=False)
    if dup.any():
        first = image[dup].iat[0]
        where = [int(i) + 2 for i in np.flatnonzero((image == first).to_numpy())[:3]]
        raise CxrError(f"{path}: {IMAGE_INDEX} {first!r} appears more than once (rows "
                       f"{', '.join(map(str, where))}; {int(dup.sum())} rows are duplicates)")
    frame[IMAGE_INDEX] = image
    labels = frame[FINDING_LABELS].fillna("").str.strip()
    if (labels == "").any():
        row = int(np.flatnonzero((labels == "").to_numpy())[0])
        raise CxrError(f"{path}: row {row + 2} ({image.iat[row]}) has empty {FINDING_LABELS}; "
                       "NIH writes 'No Finding' for a normal image")
    frame[FINDING_LABELS] = labels

    for col in _INT_COLUMNS + _FLOAT_COLUMNS:
        if col in frame.columns:
            frame[col] = _parse_number(frame[col], col, path, integer=col in _INT_COLUMNS)
    if PATIENT_AGE in frame.columns:
        frame[PATIENT_AGE] = _parse_age(frame[PATIENT_AGE], path)
    for col in (PATIENT_GENDER, VIEW_POSITION):
        if col in frame.columns:
            text = frame[col].astype("string").str.strip()
            frame[col] = text.where(text != "", None)
    _fill_patient_id(frame, path)
    ordered = [c for c in CANONICAL_COLUMNS if c in frame.columns]
    return frame[ordered + [c for c in frame.columns if c not in ordered]]


def _fill_patient_id(frame: pd.DataFrame, path: Path) -> None:
    """Fill missing Patient IDs from NIH names; patient-level splits need one for every row."""
    if PATIENT_ID in frame.columns:
        missing = frame[PATIENT_ID].isna().to_numpy()
        if not missing.any():
            return
    else:
        frame[PATIENT_ID] = pd.Series(pd.NA, index=frame.index, dtype="Int64")
        missing = np.ones(len(frame), dtype=bool)
    names = frame[IMAGE_INDEX].to_numpy(dtype=object)[missing]
    matches = [_NAME_RE.match(n) for n in names]
    bad = [i for i, m in enumerate(matches) if m is None]
    if bad:
        row = int(np.flatnonzero(missing)[bad[0]])
        raise CxrError(
            f"{path}: row {row + 2}: no {PATIENT_ID} and {names[bad[0]]!r} is not an NIH "
            f"PPPPPPPP_FFF.png name; add a '{PATIENT_ID}' column (patient-level splits need it)")
    values = frame[PATIENT_ID].copy()
    values[missing] = [int(m.group(1)) for m in matches if m is not None]  # all (bad is empty)
    frame[PATIENT_ID] = values.astype("Int64")


# ----------------------------------------------------------------------------------- findings
def label_hint(name: str, choices: Sequence[str] = ALL_LABELS) -> str | None:
    """The known label a misspelt ``name`` most likely means, or None."""
    by_key = {_key(c): c for c in choices}
    if _key(name) in by_key:
        return by_key[_key(name)]
    close = difflib.get_close_matches(_key(name), list(by_key), n=1, cutoff=0.75)
    return by_key[close[0]] if close else None


def _unknown_message(unknown: Iterable[str], choices: Sequence[str] = ALL_LABELS) -> str:
    parts = []
    for name in unknown:
        hint = label_hint(name, choices)
        parts.append(f"{name!r} (did you mean {hint!r}?)" if hint else repr(name))
    return ", ".join(parts)


def parse_findings(frame: pd.DataFrame, path: str | os.PathLike = "labels") -> list[frozenset[str]]:
    """Each row's ``Finding Labels`` as a set; unknown names raise with close-match hints.

    Only the distinct label strings are parsed (a few hundred in NIH's 112,120 rows), so this is
    fast at full scale.
    """
    codes, uniques = pd.factorize(frame[FINDING_LABELS])
    known = set(ALL_LABELS)
    sets: list[frozenset[str]] = []
    unknown: dict[str, int] = {}
    for text in uniques:
        items = frozenset(p.strip() for p in str(text).split("|") if p.strip())
        for item in items - known:
            unknown.setdefault(item, 0)
        if NO_FINDING in items and len(items) > 1 and not (items - known):
            first = int(np.flatnonzero(frame[FINDING_LABELS].to_numpy() == text)[0])
            raise CxrError(f"{path}: row {first + 2}: '{NO_FINDING}' combined with pathologies "
                           f"({text!r}); a normal image carries 'No Finding' alone")
        sets.append(items)
    if unknown:
        bad_uniques = [u for u, s in enumerate(sets) if s - known]
        first_row = int(np.flatnonzero(np.isin(codes, bad_uniques))[0]) + 2
        raise CxrError(
            f"{path}: unknown label(s) in {FINDING_LABELS}: {_unknown_message(sorted(unknown))} "
            f"(first at row {first_row}); known labels are {', '.join(ALL_LABELS)}"
        )
    return [sets[c] for c in codes]


# ---------------------------------------------------------------------------- class selection
def single_label_counts(frame: pd.DataFrame, path: str | os.PathLike = "labels") -> pd.Series:
    """Images per label among single-label rows, most frequent first (ties by name)."""
    findings = parse_findings(frame, path)
    singles = pd.Series([next(iter(s)) for s in findings if len(s) == 1], dtype=object)
    counts = singles.value_counts()
    order = sorted(counts.index, key=lambda n: (-int(counts[n]), n))
    return counts.reindex(order).astype(int)


def select_classes(
    frame: pd.DataFrame,
    classes: Sequence[str] | None = None,
    top_k: int | None = None,
    path: str | os.PathLike = "labels",
) -> list[str]:
    """The class names to use, in label order.

    ``classes``: validated (known, no repeats) and kept in the user's order. ``top_k``: ``No
    Finding`` first, then the K pathologies that most often are an image's only label, sorted
    alphabetically (K=6 on NIH gives the paper's classes in the paper's order). Neither:
    ``top_k=6``, or fewer when fewer pathologies occur alone. Both: an error.
    """
    if classes is not None and top_k is not None:
        raise CxrError("give either --classes or --top-k, not both")
    if classes is not None:
        names = [str(c).strip() for c in classes if str(c).strip()]
        if not names:
            raise CxrError("--classes is empty; name at least one class, e.g. 'No Finding,Mass'")
        unknown = [n for n in names if n not in ALL_LABELS]
        if unknown:
            raise CxrError(f"unknown class(es) {_unknown_message(unknown)}; known labels are "
                           f"{', '.join(ALL_LABELS)}")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise CxrError(f"--classes names {', '.join(repeated)} more than once")
        return names
    k = DEFAULT_TOP_K if top_k is None else int(top_k)
    if not 1 <= k <= len(PATHOLOGIES):
        raise CxrError(f"--top-k {k}: choose 1..{len(PATHOLOGIES)} pathologies")
    counts = single_label_counts(frame, path)
    pathologies = [n for n in counts.index if n != NO_FINDING]
    if top_k is None and pathologies:
        k = min(k, len(pathologies))  # the default adapts to small data sets; an explicit K not
    if len(pathologies) < k:
        raise CxrError(f"{path}: --top-k {k} but only {len(pathologies)} pathologies appear as an "
                       f"image's only label ({', '.join(pathologies) or 'none'}); lower --top-k "
                       "or name --classes")
    return [NO_FINDING, *sorted(pathologies[:k])]


# ------------------------------------------------------------------------------- label table
@dataclass
class LabelTable:
    """Rows kept by the class and multi-label policy, with their labels (and split when made).

    ``label`` int16: class index, -1 when an image carries several selected classes (``keep``).
    ``multi_hot`` uint8 [N, C]. ``split`` uint8 (0 train, 1 val, 2 test) or None.
    ``dropped`` counts rows removed before this table, by reason.
    """

    frame: pd.DataFrame
    class_names: list[str]
    label: np.ndarray
    multi_hot: np.ndarray
    multi_label: str
    split: np.ndarray | None = None
    csv_path: Path | None = None
    dropped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def image_index(self) -> np.ndarray:
        return self.frame[IMAGE_INDEX].to_numpy(dtype=object)

    @property
    def patient_id(self) -> np.ndarray:
        return self.frame[PATIENT_ID].to_numpy(dtype=np.int64)

    def counts(self, split: str | None = None) -> dict[str, int]:
        """Images per class (multi-hot column sums: an image counts once for each class it has)."""
        mask = slice(None)
        if split is not None:
            if self.split is None:
                raise CxrError("this label table has no split")
            mask = self.split == SPLIT_NAMES.index(split)
        sums = self.multi_hot[mask].sum(axis=0, dtype=np.int64)
        return {name: int(n) for name, n in zip(self.class_names, sums, strict=True)}

    def subset(self, mask: np.ndarray) -> LabelTable:
        """The rows where ``mask`` is true (a new table)."""
        mask = np.asarray(mask, dtype=bool)
        return LabelTable(
            frame=self.frame[mask].reset_index(drop=True), class_names=list(self.class_names),
            label=self.label[mask], multi_hot=self.multi_hot[mask], multi_label=self.multi_label,
            split=None if self.split is None else self.split[mask], csv_path=self.csv_path,
            dropped=dict(self.dropped),
        )


def filter_view(frame: pd.DataFrame, view: str | None, path: str | os.PathLike = "labels"
                ) -> pd.DataFrame:
    """Rows whose ``View Position`` is ``view`` (PA or AP); None keeps all rows."""
    if view is None:
        return frame
    want = str(view).strip().upper()
    if want not in VIEWS:
        raise CxrError(f"--view {view!r}: expected PA or AP")
    if VIEW_POSITION not in frame.columns:
        raise CxrError(f"{path}: --view {want} needs a '{VIEW_POSITION}' column, which this CSV "
                       "lacks; drop --view")
    values = frame[VIEW_POSITION].str.upper()
    if values.isna().all():
        raise CxrError(f"{path}: --view {want}: the '{VIEW_POSITION}' column is empty; drop --view")
    return frame[(values == want).fillna(False).to_numpy()].reset_index(drop=True)


def apply_policy(
    frame: pd.DataFrame,
    class_names: Sequence[str],
    multi_label: str = "drop",
    path: str | os.PathLike = "labels",
) -> LabelTable:
    """Keep the rows the multi-label policy accepts and compute their labels (module docstring)."""
    if multi_label not in MULTI_LABEL_POLICIES:
        raise CxrError(f"--multi-label {multi_label!r}: expected drop or keep")
    class_names = list(class_names)
    findings = parse_findings(frame, path)
    position = {name: i for i, name in enumerate(class_names)}
    n, c = len(frame), len(class_names)
    multi_hot = np.zeros((n, c), dtype=np.uint8)
    keep = np.zeros(n, dtype=bool)
    dropped = {"several labels": 0, "class not selected": 0}
    cache: dict[frozenset[str], tuple[bool, list[int], str]] = {}
    for i, items in enumerate(findings):
        hit = cache.get(items)
        if hit is None:
            selected = [position[x] for x in items if x in position]
            if multi_label == "drop":
                if len(items) > 1:
                    hit = (False, [], "several labels")
                elif selected:
                    hit = (True, selected, "")
                else:
                    hit = (False, [], "class not selected")
            else:
                hit = (True, selected, "") if selected else (False, [], "class not selected")
            cache[items] = hit
        ok, cols, reason = hit
        if ok:
            keep[i] = True
            multi_hot[i, cols] = 1
        else:
            dropped[reason] += 1
    multi_hot = multi_hot[keep]
    several = multi_hot.sum(axis=1) > 1
    label = np.where(several, -1, multi_hot.argmax(axis=1)).astype(np.int16)
    return LabelTable(
        frame=frame[keep].reset_index(drop=True), class_names=class_names, label=label,
        multi_hot=multi_hot, multi_label=multi_label,
        csv_path=Path(path), dropped={k: v for k, v in dropped.items() if v},
    )


# ------------------------------------------------------------------------------------- split
def read_name_list(path: str | os.PathLike) -> set[str]:
    """Image names from a list file such as NIH's ``train_val_list.txt`` (one per line)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise CxrError(f"{path}: list file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CxrError(f"{path}: cannot read the list file ({exc})") from None
    names = {line.strip() for line in text.splitlines() if line.strip()}
    if not names:
        raise CxrError(f"{path}: the list file is empty; expected one image name per line")
    return names


def _check_fraction(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise CxrError(f"--{name.replace('_', '-')} {value}: expected a share in [0, 1)")
    return value


def _carve(patients: np.ndarray, fraction: float, rng: np.random.Generator,
           strata: np.ndarray | None = None) -> np.ndarray:
    """A random ``fraction`` of ``patients``, taken stratum by stratum.

    Each stratum (all patients when ``strata`` is None) gives ``round(fraction * n)`` patients, and
    at least one when it has 3 or more, so a rare class still reaches val and test.
    """
    if fraction <= 0 or len(patients) < 2:
        return patients[:0]
    if strata is None:
        strata = np.zeros(len(patients), dtype=np.int64)
    chosen = []
    for key in np.unique(strata):
        group = patients[strata == key]
        k = int(round(fraction * len(group)))
        if len(group) >= 3 or strata.max() == strata.min():
            k = max(k, 1)
        k = min(k, len(group) - 1)
        if k > 0:
            chosen.append(rng.permutation(group)[:k])
    return np.sort(np.concatenate(chosen)) if chosen else patients[:0]


def _patient_strata(patients: np.ndarray, pid: np.ndarray, row_strata: np.ndarray | None
                    ) -> np.ndarray | None:
    """Each patient's stratum: the smallest row key among their images (rarest class first)."""
    if row_strata is None:
        return None
    key = np.full(len(patients), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(key, np.searchsorted(patients, pid), np.asarray(row_strata, dtype=np.int64))
    return key


def rarity_strata(multi_hot: np.ndarray) -> np.ndarray:
    """Per row, the rank (0 = rarest) of the rarest class it carries: a split stratum."""
    counts = multi_hot.sum(axis=0, dtype=np.int64)
    rank = np.empty(len(counts), dtype=np.int64)
    rank[np.argsort(counts, kind="stable")] = np.arange(len(counts))
    masked = np.where(multi_hot.astype(bool), rank[None, :], len(counts))
    return masked.min(axis=1)


def split_patients(
    patient_id: np.ndarray,
    image_index: np.ndarray,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    train_val_list: str | os.PathLike | None = None,
    test_list: str | os.PathLike | None = None,
    strata: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Patient-level split codes (0 train, 1 val, 2 test) and a keep mask.

    Without lists: a seeded random share of patients goes to test, another to val (fractions of
    patients, not images; the same patient set and seed always give the same split). ``strata``
    (one int per row, e.g. :func:`rarity_strata`) stratifies the draw: each patient belongs to the
    smallest key among their rows, and every stratum gives its share. With
    ``test_list``: its images are the test split (``test_fraction`` is ignored) and val is carved
    by patient from the rest. With ``train_val_list``: only its images are train/val; rows in
    neither given list are dropped (keep mask false). A patient found on both sides is an error.
    """
    val_fraction = _check_fraction("val_fraction", val_fraction)
    test_fraction = _check_fraction("test_fraction", test_fraction)
    if test_list is None and val_fraction + test_fraction >= 1.0:
        raise CxrError(f"--val-fraction {val_fraction} + --test-fraction {test_fraction} leave no "
                       "training patients; lower them")
    pid = np.asarray(patient_id, dtype=np.int64)
    names = np.asarray(image_index, dtype=object)
    rng = np.random.default_rng(seed)
    split = np.zeros(len(pid), dtype=np.uint8)
    keep = np.ones(len(pid), dtype=bool)
    if test_list is None and train_val_list is None:
        patients = np.unique(pid)
        key = _patient_strata(patients, pid, strata)
        test_p = _carve(patients, test_fraction, rng, key)
        rest = ~np.isin(patients, test_p)
        val_p = _carve(patients[rest], val_fraction / max(1e-12, 1.0 - test_fraction), rng,
                       None if key is None else key[rest])
        split[np.isin(pid, val_p)] = 1
        split[np.isin(pid, test_p)] = 2
        return split, keep
    in_test = np.zeros(len(pid), dtype=bool)
    in_tv = np.zeros(len(pid), dtype=bool)
    if test_list is not None:
        in_test = np.isin(names, np.array(sorted(read_name_list(test_list)), dtype=object))
    if train_val_list is not None:
        in_tv = np.isin(names, np.array(sorted(read_name_list(train_val_list)), dtype=object))
        both = in_tv & in_test
        if both.any():
            raise CxrError(f"{train_val_list} and {test_list} both list {names[both][0]}; an image "
                           "belongs to one split")
        if test_list is None:
            in_test = ~in_tv
        keep = in_tv | in_test
    else:
        in_tv = ~in_test
    shared = np.intersect1d(pid[in_test & keep], pid[in_tv & keep])
    if len(shared):
        raise CxrError(
            f"{test_list or train_val_list}: patient {int(shared[0])} has images in both the test "
            f"and the train/val lists ({len(shared)} such patients); the lists must split by "
            "patient")
    split[in_test] = 2
    tv_rows = in_tv & keep
    tv_patients = np.unique(pid[tv_rows])
    key = _patient_strata(tv_patients, pid[tv_rows], None if strata is None else
                          np.asarray(strata)[tv_rows])
    val_p = _carve(tv_patients, val_fraction, rng, key)
    split[in_tv & np.isin(pid, val_p)] = 1
    return split, keep


# --------------------------------------------------------------------------------- front door
def load_label_table(
    csv_path: str | os.PathLike,
    classes: Sequence[str] | None = None,
    top_k: int | None = None,
    multi_label: str = "drop",
    view: str | None = None,
    split: bool = True,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    train_val_list: str | os.PathLike | None = None,
    test_list: str | os.PathLike | None = None,
    frame: pd.DataFrame | None = None,
    require_rows: bool = True,
) -> LabelTable:
    """CSV path + options -> :class:`LabelTable`: read, view filter, classes, policy, split.

    Classes are chosen on the view-filtered rows, before the policy drops any. Pass ``frame`` to
    reuse an already read CSV. ``require_rows``: an empty result is an error (for prepare; counting
    accepts zero).
    """
    csv_path = Path(csv_path)
    full = read_nih_csv(csv_path) if frame is None else frame
    rows = filter_view(full, view, csv_path)
    dropped_view = len(full) - len(rows)
    names = select_classes(rows, classes=classes, top_k=top_k, path=csv_path)
    table = apply_policy(rows, names, multi_label, csv_path)
    if dropped_view:
        table.dropped = {f"view not {str(view).upper()}": dropped_view, **table.dropped}
    if require_rows and not len(table):
        raise CxrError(f"{csv_path}: no image is left after the class and multi-label policy "
                       f"(classes {', '.join(names)}, --multi-label {multi_label}"
                       f"{', --view ' + str(view) if view else ''})")
    if split:
        codes, keep = split_patients(
            table.patient_id, table.image_index, val_fraction=val_fraction,
            test_fraction=test_fraction, seed=seed, train_val_list=train_val_list,
            test_list=test_list, strata=rarity_strata(table.multi_hot))
        table.split = codes
        if not keep.all():
            n_out = int((~keep).sum())
            table = table.subset(keep)
            table.dropped["not in the split lists"] = n_out
    return table


def load_counting_table(
    csv_path: str | os.PathLike,
    classes: Sequence[str] | None = None,
    top_k: int | None = None,
    multi_label: str = "drop",
    view: str | None = None,
    split_list: str | os.PathLike | None = None,
    require_rows: bool = False,
) -> LabelTable:
    """The real images augment counts, by the same reader and policy as ``prepare``, without a
    split (``require_rows``: no row of the classes left is an error). ``split_list``: only the
    images it names (e.g. ``train_val_list.txt``). ``.counts()`` gives images per class (with
    ``multi_label="keep"`` an image counts once for every selected class it carries)."""
    table = load_label_table(csv_path, classes=classes, top_k=top_k, multi_label=multi_label,
                             view=view, split=False, require_rows=require_rows)
    if split_list is not None:
        wanted = np.array(sorted(read_name_list(split_list)), dtype=object)
        table = table.subset(np.isin(table.image_index, wanted))
    return table
