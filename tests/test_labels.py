"""The NIH label reader: CSV variants, errors, class selection, multi-label policy, splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxraug.data.labels import (
    apply_policy,
    filter_view,
    label_hint,
    load_counting_table,
    load_label_table,
    rarity_strata,
    read_nih_csv,
    select_classes,
    split_patients,
)
from cxraug.data.nih import (
    CANONICAL_COLUMNS,
    NIH_HEADER_LINE,
    NO_FINDING,
    PAPER_CLASSES,
    write_nih_csv,
)
from cxraug.errors import CxrError

ROWS = [
    "00000001_000.png,Cardiomegaly,0,1,58,M,PA,2682,2749,0.143,0.143",
    "00000001_001.png,Cardiomegaly|Emphysema,1,1,58,M,PA,2894,2729,0.143,0.143",
    "00000002_000.png,No Finding,0,2,81,F,AP,2048,2500,0.171,0.171",
    "00000003_000.png,Effusion,0,3,,,,,,,",
]


def write(tmp_path: Path, text: str, name: str = "labels.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(path: Path) -> str:
    with pytest.raises(CxrError) as info:
        read_nih_csv(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


# ------------------------------------------------------------------------------ CSV variants
def test_nih_header_quirk(tmp_path: Path) -> None:
    text = NIH_HEADER_LINE + "\n" + "\n".join(ROWS) + "\n"
    assert len(NIH_HEADER_LINE.split(",")) == 12 and len(ROWS[0].split(",")) == 11
    frame = read_nih_csv(write(tmp_path, text))
    assert list(frame.columns) == list(CANONICAL_COLUMNS)
    assert frame["OriginalImage Width"].tolist()[:3] == [2682, 2894, 2048]
    assert frame["OriginalImage Height"].tolist()[:3] == [2749, 2729, 2500]
    assert frame["OriginalImagePixelSpacing y"].iloc[2] == pytest.approx(0.171)
    assert frame["Patient Age"].iloc[2] == 81 and frame["Patient Gender"].iloc[2] == "F"
    assert frame["View Position"].tolist()[:3] == ["PA", "PA", "AP"]
    # empty optional fields are missing values, not errors
    assert frame.iloc[3][["Patient Age", "View Position", "OriginalImage Width"]].isna().all()


def test_v2020_variant_and_trailing_commas(tmp_path: Path) -> None:
    header = NIH_HEADER_LINE.rstrip(",")  # v2020: no trailing comma
    text = header + "\r\n" + "\r\n".join(ROWS[:2]) + "\r\n" + ROWS[2] + ",\r\n\r\n"
    frame = read_nih_csv(write(tmp_path, text))
    assert list(frame.columns) == list(CANONICAL_COLUMNS)
    assert frame["Image Index"].tolist() == [r.split(",")[0] for r in ROWS[:3]]
    assert frame["OriginalImagePixelSpacing x"].tolist() == pytest.approx([0.143, 0.143, 0.171])


def test_quoted_bracket_values(tmp_path: Path) -> None:
    text = ('Image Index,Finding Labels,Patient ID,"OriginalImage[Width,Height]"\n'
            '00000005_000.png,Mass,5,"2500,2048"\n00000006_000.png,Nodule,6,\n')
    frame = read_nih_csv(write(tmp_path, text))
    assert frame["OriginalImage Width"].iloc[0] == 2500
    assert frame["OriginalImage Height"].iloc[0] == 2048
    assert frame["OriginalImage Width"].isna().iloc[1]


def test_other_export_names_ages_and_extra_columns(tmp_path: Path) -> None:
    text = ("image,labels,Patient_ID,Age,Sex,View,Width,Height,Site\n"
            "00000007_000.png,Mass| Nodule ,7,060Y,M,pa,1024,1024,007\n"
            "00000008_000.png,No Finding,8,18M,F,AP,,,NA\n"
            "00000009_000.png,Hernia,9, 45 ,,,,,\n")
    frame = read_nih_csv(write(tmp_path, text))
    assert frame["Patient Age"].tolist() == [60, 1, 45]
    assert frame["Patient Gender"].tolist() == ["M", "F", pd.NA]
    assert frame["OriginalImage Width"].iloc[0] == 1024
    # unknown columns are carried through unchanged, as strings
    assert frame["Site"].tolist()[:2] == ["007", "NA"] and pd.isna(frame["Site"].iloc[2])
    assert list(frame.columns)[-1] == "Site"
    assert filter_view(frame, "PA")["Image Index"].tolist() == ["00000007_000.png"]


def test_exact_names_win_over_aliases(tmp_path: Path) -> None:
    text = ("file,Image Index,Finding Labels,label\n"
            "/data/a.png,00000001_000.png,Mass,x\n")
    frame = read_nih_csv(write(tmp_path, text))
    assert frame["Image Index"].tolist() == ["00000001_000.png"]
    assert frame["file"].tolist() == ["/data/a.png"] and frame["label"].tolist() == ["x"]


def test_only_required_columns_patient_id_from_names(tmp_path: Path) -> None:
    text = "Image Index,Finding Labels\n00000012_003.png,Mass\n00030805_000.png,No Finding\n"
    frame = read_nih_csv(write(tmp_path, text))
    assert frame["Patient ID"].tolist() == [12, 30805]
    # a partly empty Patient ID column is filled from the names too
    text = "Image Index,Finding Labels,Patient ID\n00000012_003.png,Mass,\nx.png,Mass,4\n"
    assert read_nih_csv(write(tmp_path, text))["Patient ID"].tolist() == [12, 4]


def test_nih_sample_csv(nih_sample: Path) -> None:
    frame = read_nih_csv(nih_sample / "Data_Entry_2017.csv")
    assert len(frame) == 401 and list(frame.columns) == list(CANONICAL_COLUMNS)
    assert frame["Patient ID"].is_unique
    known = frame.dropna(subset=["Patient Age"])
    assert len(known) > 0 and known["OriginalImage Width"].notna().all()


def test_write_read_round_trip(tmp_path: Path, nih_sample: Path) -> None:
    frame = read_nih_csv(nih_sample / "Data_Entry_2017.csv")
    write_nih_csv(frame, tmp_path / "again.csv")
    again = read_nih_csv(tmp_path / "again.csv")
    pd.testing.assert_frame_equal(frame, again)


def test_all_labels_top6_is_the_papers(nih_sample: Path) -> None:
    frame = read_nih_csv(nih_sample / "all_labels_112120.csv")
    assert len(frame) == 112_120 and frame["Patient ID"].nunique() == 30_805
    assert select_classes(frame, top_k=6) == list(PAPER_CLASSES)
    assert select_classes(frame) == list(PAPER_CLASSES)  # the default is top_k=6
    table = load_label_table(nih_sample / "all_labels_112120.csv", seed=3)
    assert table.counts()["No Finding"] == 60_412 and table.counts()["Infiltration"] == 9_551
    by_split = [np.unique(table.patient_id[table.split == s]) for s in range(3)]
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert len(np.intersect1d(by_split[a], by_split[b])) == 0
    patients = sum(map(len, by_split))
    assert abs(len(by_split[2]) / patients - 0.1) < 0.01
    assert abs(len(by_split[1]) / patients - 0.1) < 0.01


# ----------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("", "empty"),
        ("\n\n", "empty"),
        ("Image Index,Finding Labels\n", "no rows"),
        ("Image,Foo\na.png,Mass\n", "'Finding Labels'"),
        ("Image Index,Finding Labels,Patient ID\n00000001_000.png,Mass,1\n"
         "00000002_000.png,Mass,2,7\n", "line 3 has 4 fields"),
        ("Image Index,Finding Labels,Patient ID\n00000001_000.png,Mass,1\n"
         "00000002_000.png,Mass\n", "line 3 has 2 fields"),
        ("Image Index,Finding Labels\n00000001_000.png,Mass\n00000002_000.png,Nodule\n"
         "00000001_000.png,Mass\n", "'00000001_000.png' appears more than once (rows 2, 4"),
        ("Image Index,Finding Labels\n00000001_000.png,\n", "empty Finding Labels"),
        ("Image Index,Finding Labels,Patient Age\n00000001_000.png,Mass,sixty\n", "not an age"),
        ("Image Index,Finding Labels,Patient ID\n00000001_000.png,Mass,1.5\n", "whole number"),
        ("Image Index,Finding Labels\nscan.png,Mass\n", "add a 'Patient ID' column"),
        ('"Image Index","Finding Labels"\n"00000001_000.png","Mass"\n'
         '"00000002_000.png","Mass","x, y"\n', "line 3 has 3 fields"),
    ],
)
def test_malformed_csv(tmp_path: Path, text: str, expect: str) -> None:
    assert expect in error_of(write(tmp_path, text))


def test_not_a_csv_and_missing(tmp_path: Path) -> None:
    binary = tmp_path / "image.png"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64))
    assert "not a CSV" in error_of(binary)
    assert "not found" in error_of(tmp_path / "nope.csv")
    assert "folder" in error_of(tmp_path)


def test_unknown_labels_with_hints(tmp_path: Path) -> None:
    text = ("Image Index,Finding Labels\n00000001_000.png,Mass\n"
            "00000002_000.png,Effusion|Pleural Thickening\n00000003_000.png,effusion\n"
            "00000004_000.png,Banana\n")
    frame = read_nih_csv(write(tmp_path, text))
    with pytest.raises(CxrError) as info:
        load_label_table(tmp_path / "labels.csv")
    message = str(info.value)
    assert "'Pleural Thickening' (did you mean 'Pleural_Thickening'?)" in message
    assert "'effusion' (did you mean 'Effusion'?)" in message
    assert "'Banana'" in message and "row 3" in message
    assert label_hint("pneumo thorax") == "Pneumothorax" and label_hint("Banana") is None
    with pytest.raises(CxrError, match="did you mean 'No Finding'"):
        select_classes(frame, classes=["no_finding", "Mass"])
    with pytest.raises(CxrError, match="row 3: 'No Finding' combined with pathologies"):
        select_classes(_frame(["Mass", "No Finding|Mass"]), top_k=1)


# ------------------------------------------------------------------------- classes, policies
def _frame(labels: list[str]) -> pd.DataFrame:
    return pd.DataFrame({
        "Image Index": [f"{i:08d}_000.png" for i in range(len(labels))],
        "Finding Labels": labels,
        "Patient ID": pd.array(range(len(labels)), dtype="Int64"),
    })


def test_select_classes() -> None:
    frame = _frame(["Mass", "Mass", "Mass", "Nodule", "Nodule", "Effusion", "Mass|Nodule",
                    "Hernia|Effusion", "Hernia|Mass", NO_FINDING])
    assert select_classes(frame, top_k=2) == [NO_FINDING, "Mass", "Nodule"]
    # ties broken by name, then the chosen ones sorted alphabetically
    assert select_classes(frame, top_k=3) == [NO_FINDING, "Effusion", "Mass", "Nodule"]
    assert select_classes(frame, classes=["Nodule", "Mass"]) == ["Nodule", "Mass"]
    with pytest.raises(CxrError, match="only 3 pathologies"):
        select_classes(frame, top_k=4)
    assert select_classes(frame) == [NO_FINDING, "Effusion", "Mass", "Nodule"]  # default: <= 6
    with pytest.raises(CxrError, match="not both"):
        select_classes(frame, classes=["Mass"], top_k=2)
    with pytest.raises(CxrError, match="more than once"):
        select_classes(frame, classes=["Mass", "Mass"])
    with pytest.raises(CxrError, match="1..14"):
        select_classes(frame, top_k=0)


def test_policy_drop_and_keep() -> None:
    frame = _frame(["Mass", "Nodule", "Mass|Nodule", "Mass|Hernia", "Hernia", NO_FINDING])
    classes = [NO_FINDING, "Mass", "Nodule"]
    drop = apply_policy(frame, classes, "drop")
    assert drop.image_index.tolist() == [frame["Image Index"][i] for i in (0, 1, 5)]
    assert drop.label.tolist() == [1, 2, 0] and drop.label.dtype == np.int16
    assert drop.multi_hot.tolist() == [[0, 1, 0], [0, 0, 1], [1, 0, 0]]
    assert drop.dropped == {"several labels": 2, "class not selected": 1}
    keep = apply_policy(frame, classes, "keep")
    assert keep.image_index.tolist() == [frame["Image Index"][i] for i in (0, 1, 2, 3, 5)]
    assert keep.label.tolist() == [1, 2, -1, 1, 0]
    assert keep.multi_hot.dtype == np.uint8
    assert keep.multi_hot.tolist() == [[0, 1, 0], [0, 0, 1], [0, 1, 1], [0, 1, 0], [1, 0, 0]]
    assert keep.counts() == {NO_FINDING: 1, "Mass": 3, "Nodule": 2}
    with pytest.raises(CxrError, match="drop or keep"):
        apply_policy(frame, classes, "some")


def test_view_filter_errors() -> None:
    frame = _frame(["Mass"])
    with pytest.raises(CxrError, match="lacks"):
        filter_view(frame, "PA")
    frame["View Position"] = pd.array(["PA"], dtype="string")
    with pytest.raises(CxrError, match="PA or AP"):
        filter_view(frame, "LL")
    assert len(filter_view(frame, "pa")) == 1 and len(filter_view(frame, "AP")) == 0


# ------------------------------------------------------------------------------------ splits
def test_split_is_patient_level_and_seeded() -> None:
    rng = np.random.default_rng(0)
    pid = rng.integers(0, 300, size=2000)
    names = np.array([f"{i:08d}_000.png" for i in range(2000)], dtype=object)
    split, keep = split_patients(pid, names, val_fraction=0.2, test_fraction=0.1, seed=1)
    assert keep.all()
    for code in range(3):
        others = pid[split != code]
        assert not set(pid[split == code]) & set(others)
    n_pat = len(np.unique(pid))
    assert len(np.unique(pid[split == 2])) == round(0.1 * n_pat)
    again, _ = split_patients(pid, names, val_fraction=0.2, test_fraction=0.1, seed=1)
    other, _ = split_patients(pid, names, val_fraction=0.2, test_fraction=0.1, seed=2)
    assert (again == split).all() and (other != split).any()
    # order of rows does not change which patients go where
    perm = rng.permutation(2000)
    shuffled, _ = split_patients(pid[perm], names[perm], val_fraction=0.2, test_fraction=0.1,
                                 seed=1)
    assert (shuffled == split[perm]).all()
    with pytest.raises(CxrError, match="no training"):
        split_patients(pid, names, val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(CxrError, match=r"\[0, 1\)"):
        split_patients(pid, names, val_fraction=-0.1)


def test_stratified_split_reaches_rare_classes() -> None:
    # 200 patients of a common class and 4 patients of each of 3 rare ones, 2 images each
    labels = np.repeat(np.array([0] * 200 + [1] * 4 + [2] * 4 + [3] * 4), 2)
    pid = np.repeat(np.arange(212), 2)
    names = np.array([f"{i:08d}_000.png" for i in range(len(pid))], dtype=object)
    hot = np.eye(4, dtype=np.uint8)[labels]
    assert rarity_strata(hot).tolist()[:2] == [3, 3] and rarity_strata(hot)[-1] == 2
    for seed in range(5):
        split, _ = split_patients(pid, names, val_fraction=0.1, test_fraction=0.1, seed=seed,
                                  strata=rarity_strata(hot))
        for code in range(3):
            assert set(labels[split == code]) == {0, 1, 2, 3}, (seed, code)
            assert not set(pid[split == code]) & set(pid[split != code])
        assert abs((split == 2).sum() / len(pid) - 0.1) < 0.03


def test_official_lists(tmp_path: Path) -> None:
    pid = np.array([1, 1, 2, 3, 3, 4, 5, 6, 7, 8])
    names = np.array([f"{p:08d}_{i:03d}.png" for i, p in enumerate(pid)], dtype=object)
    test_names = [names[i] for i in (3, 4, 5)]  # patients 3 and 4
    (tmp_path / "test_list.txt").write_text("\n".join(test_names) + "\n")
    (tmp_path / "train_val_list.txt").write_text("\n".join(
        n for i, n in enumerate(names) if i not in (3, 4, 5, 9)) + "\n")  # row 9 in neither
    split, keep = split_patients(pid, names, val_fraction=0.3, seed=0,
                                 test_list=tmp_path / "test_list.txt")
    assert keep.all() and set(names[split == 2]) == set(test_names)
    assert set(pid[split == 1]).isdisjoint(pid[split == 0]) and (split == 1).any()
    split, keep = split_patients(pid, names, val_fraction=0.3, seed=0,
                                 test_list=tmp_path / "test_list.txt",
                                 train_val_list=tmp_path / "train_val_list.txt")
    assert keep.tolist() == [True] * 9 + [False]
    assert set(names[(split == 2) & keep]) == set(test_names)
    # a patient on both sides of the lists is refused
    (tmp_path / "bad_test.txt").write_text(names[0] + "\n")
    with pytest.raises(CxrError, match="patient 1 has images in both"):
        split_patients(pid, names, test_list=tmp_path / "bad_test.txt")
    with pytest.raises(CxrError, match="not found"):
        split_patients(pid, names, test_list=tmp_path / "nope.txt")


def test_load_label_table_and_counts(tmp_path: Path) -> None:
    text = NIH_HEADER_LINE + "\n" + "\n".join(ROWS) + "\n"
    csv_path = write(tmp_path, text)
    (tmp_path / "tv.txt").write_text("00000001_000.png\n00000002_000.png\n")
    table = load_label_table(csv_path, classes=["No Finding", "Cardiomegaly", "Effusion"],
                             val_fraction=0.0, test_fraction=0.0)
    assert len(table) == 3 and (table.split == 0).all()
    assert table.dropped == {"several labels": 1}
    counts = load_counting_table(csv_path,
                                 classes=["No Finding", "Cardiomegaly", "Effusion"]).counts()
    assert counts == {"No Finding": 1, "Cardiomegaly": 1, "Effusion": 1}
    counts = load_counting_table(csv_path, classes=["Cardiomegaly", "Emphysema"],
                                 multi_label="keep", split_list=tmp_path / "tv.txt").counts()
    assert counts == {"Cardiomegaly": 1, "Emphysema": 0}
    assert load_counting_table(csv_path, classes=["Effusion"], view="PA").counts() == {
        "Effusion": 0}
    with pytest.raises(CxrError, match="no image is left"):
        load_label_table(csv_path, classes=["Hernia"])
