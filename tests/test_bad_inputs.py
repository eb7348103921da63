"""Bad inputs, command by command: each gets one `error:` line naming the problem and the fix
(exit status 2), never a traceback, and nothing already written is touched. docs/RELIABILITY.md
lists these cases with the messages they print."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from helpers import make_generator
from onnx import TensorProto
from onnx import helper as oh
from PIL import Image

from cxraug.cli import main
from cxraug.data.nih import image_name, write_nih_csv

Setup = Callable[[Path], list[str]]


def _nih_folder(tmp: Path, labels: list[str], image: Callable[[int], Image.Image | bytes] | None
                = None) -> tuple[Path, Path]:
    import pandas as pd

    (tmp / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, label in enumerate(labels):
        name = image_name(i + 1, 0)
        made = image(i) if image else Image.fromarray(
            np.random.default_rng(i).integers(0, 256, (40, 40), dtype=np.uint8))
        if isinstance(made, bytes):
            (tmp / "images" / name).write_bytes(made)
        else:
            made.save(tmp / "images" / name)
        rows.append({"Image Index": name, "Finding Labels": label, "Patient ID": i + 1,
                     "Follow-up #": 0})
    write_nih_csv(pd.DataFrame(rows), tmp / "Data_Entry_2017.csv")
    return tmp, tmp / "Data_Entry_2017.csv"


def _prepare(tmp: Path, csv_text: str | bytes | None = None, labels: list[str] | None = None,
             image: Callable[[int], Image.Image | bytes] | None = None,
             extra: tuple[str, ...] = ()) -> list[str]:
    root, csv = _nih_folder(tmp, labels or ["Mass", "No Finding"] * 5, image)
    if csv_text is not None:
        csv.write_bytes(csv_text if isinstance(csv_text, bytes) else csv_text.encode())
    return ["prepare", str(root), "--csv", str(csv), "--out", str(tmp / "c.h5"), "--workers",
            "1", "--size", "16", *extra]


def _prepare_cache(tmp: Path) -> str:
    assert main(_prepare(tmp / "src")) == 0
    return str(tmp / "src" / "c.h5")


def _other_tool_onnx(path: Path) -> Path:
    graph = oh.make_graph([oh.make_node("Relu", ["x"], ["y"])], "g",
                          [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    import onnx

    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=9), path)
    return path


def _text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


#: (command, what is wrong, argv builder, a fragment the error line must contain)
CASES: list[tuple[str, str, Setup, str]] = [
    ("prepare", "binary garbage as the label CSV",
     lambda t: _prepare(t, csv_text=bytes(range(256)) * 8), "Data_Entry_2017.csv"),
    ("prepare", "a CSV without `Finding Labels`",
     lambda t: _prepare(t, csv_text="Image Index,Patient ID\n00000001_000.png,1\n"),
     "Finding Labels"),
    ("prepare", "an unknown label (`Pleural Thickening`)",
     lambda t: _prepare(t, labels=["Pleural Thickening"] * 4), "Pleural_Thickening"),
    ("prepare", "every image corrupt",
     lambda t: _prepare(t, image=lambda i: b"not a png"), "could be decoded"),
    ("prepare", "a data root that does not exist",
     lambda t: ["prepare", str(t / "nowhere"), "--csv", _prepare(t)[3]], "not found"),
    ("prepare", "an impossible size (`--size 0`)", lambda t: _prepare(t, extra=("--size", "0")),
     "--size"),
    ("train", "no cache at --data",
     lambda t: ["train", "--data", str(t / "none.h5"), "--out", str(t / "r")], "not found"),
    ("train", "a CSV given as the cache",
     lambda t: ["train", "--data", _prepare(t)[3], "--out", str(t / "r")], "cache"),
    ("train", "an unknown recipe",
     lambda t: ["train", "--data", str(_text(t / "x.h5", "")), "--out", str(t / "r"),
                "--recipe", "small-data-46"], "unknown recipe"),
    ("train", "a misspelt override",
     lambda t: ["train", "--data", str(_text(t / "x.h5", "")), "--out", str(t / "r"),
                "--set", "train.epoch=3"], "did you mean epochs"),
    ("export-onnx", "a run folder that does not exist",
     lambda t: ["export-onnx", "--run", str(t / "none"), "--out", str(t / "g.onnx")],
     "not found"),
    ("augment", "a model that is a text file",
     lambda t: ["augment", "--model", str(_text(t / "g.onnx", "hello")), "--per-class", "1",
                "--out", str(t / "a")], "not a loadable ONNX model"),
    ("augment", "an ONNX file from another tool",
     lambda t: ["augment", "--model", str(_other_tool_onnx(t / "g.onnx")), "--per-class", "1",
                "--out", str(t / "a")], "not a generator written by cxraug"),
    ("augment", "a negative target",
     lambda t: ["augment", "--model", str(make_generator(t / "g.onnx")), "--out", str(t / "a"),
                "--target-per-class", "-3"], "--target-per-class"),
    ("augment", "both count options",
     lambda t: ["augment", "--model", str(make_generator(t / "g.onnx")), "--out", str(t / "a"),
                "--target-per-class", "3", "--per-class", "3"], "--per-class"),
    ("augment", "an impossible shard (`3/2`)",
     lambda t: ["augment", "--model", str(make_generator(t / "g.onnx")), "--out", str(t / "a"),
                "--per-class", "1", "--shard", "3/2"], "--shard"),
    ("augment", "--out is a file",
     lambda t: ["augment", "--model", str(make_generator(t / "g.onnx")), "--out",
                str(_text(t / "a", "x")), "--per-class", "1"], "is a file"),
    ("augment", "an unknown class",
     lambda t: ["augment", "--model", str(make_generator(t / "g.onnx")), "--out", str(t / "a"),
                "--per-class", "1", "--classes", "Masss"], "Mass"),
    ("inspect", "a file that is not ONNX",
     lambda t: ["inspect", str(_text(t / "g.onnx", "hello"))], "not an ONNX"),
    ("evaluate", "a held-out split that is not held out (`--split train`)",
     lambda t: ["evaluate", "--model", str(make_generator(t / "g.onnx")), "--data",
                str(_text(t / "x.h5", "")), "--out", str(t / "r"), "--split", "train"],
     "--split"),
    ("evaluate", "a cache that is not HDF5",
     lambda t: ["evaluate", "--model", str(make_generator(t / "g.onnx")), "--data",
                str(_text(t / "x.h5", "")), "--out", str(t / "r")], "not an HDF5 file"),
    ("downstream", "a synthetic CSV that does not exist",
     lambda t: ["downstream", "--data", _prepare_cache(t), "--synthetic", str(t / "none.csv")],
     "not found"),
    ("downstream", "a mixing strategy that does not exist",
     lambda t: ["downstream", "--data", _prepare_cache(t), "--synthetic", str(t / "none.csv"),
                "--strategy", "mixup"], "unknown; choose from real, ceiling"),
]


@pytest.mark.parametrize(("command", "what", "setup", "fragment"), CASES,
                         ids=[f"{c}: {w}" for c, w, _, _ in CASES])
def test_bad_input_is_one_error_line(command: str, what: str, setup: Setup, fragment: str,
                                     tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = setup(tmp_path)
    capsys.readouterr()
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    assert main(argv) == 2
    printed = capsys.readouterr().err
    errors = [line for line in printed.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "Traceback" not in printed, printed  # (a progress line may
    assert errors[0].startswith("error: ") and fragment in errors[0], errors  # come before it)
    after = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    assert {p: t for p, t in after.items() if p in before} == before  # nothing touched


def test_unusual_images_are_read_or_skipped_with_a_reason(tmp_path: Path) -> None:
    """16-bit, RGBA and non-square images are converted; a corrupt one and a name escaping the
    data root are skipped and listed in the report, the rest is cached."""
    import pandas as pd

    from cxraug.data.cache import CacheReader

    def image(i: int) -> Image.Image | bytes:
        pixels = np.random.default_rng(i).integers(0, 256, (40, 40), dtype=np.uint8)
        return [Image.fromarray(pixels.astype(np.uint16) * 200),
                Image.fromarray(np.stack([pixels] * 3 + [np.full_like(pixels, 255)], -1)),
                Image.fromarray(pixels[:, :30]), b"\x89PNG broken", Image.fromarray(pixels),
                Image.fromarray(pixels)][i]

    argv = _prepare(tmp_path, labels=["Mass", "No Finding", "Mass", "Mass", "No Finding",
                                      "Mass"], image=image)
    csv = Path(argv[3])
    table = pd.read_csv(csv)
    table.loc[5, "Image Index"] = "../escape.png"
    write_nih_csv(table.iloc[:, :11].rename(columns={"OriginalImage[Width": "OriginalImage Width",
                                                     "Height]": "OriginalImage Height"}), csv)
    assert main(argv) == 0
    with CacheReader(tmp_path / "c.h5") as cache:
        assert cache.n == 4
    report = (tmp_path / "c.h5.report.csv").read_text()
    assert "00000004_000.png" in report and "escape" in report


def test_a_full_disk_is_one_error_line_and_resume_finishes(tmp_path: Path) -> None:
    """Writes beyond a file-size limit fail like a full disk: one error line, exit 2, the
    images already written stay, and --resume without the limit finishes the job."""
    model = make_generator(tmp_path / "g.onnx")
    out = tmp_path / "aug"
    args = ["augment", "--model", str(model), "--out", str(out), "--per-class", "400",
            "--classes", "Mass,Nodule", "--device", "cpu"]
    code = "import sys; from cxraug.cli import main; sys.exit(main(sys.argv[1:]))"

    def limit() -> None:  # in the child: files may not grow past 8 KiB (the CSVs will)
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))

    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          preexec_fn=limit, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert proc.returncode == 2 and len(lines) == 1 and "File too large" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    kept = sorted(os.listdir(out / "images"))
    proc = subprocess.run([sys.executable, "-c", code, *args, "--resume"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert set(kept) <= set(os.listdir(out / "images")) and len(os.listdir(out / "images")) == 800
