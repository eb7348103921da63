"""`cxraug demo`: the whole tour, evaluate included, and a mixed.csv that works as is."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image


@pytest.mark.slow
def test_demo_runs_every_stage_and_its_outputs_are_usable(tmp_path: Path) -> None:
    from cxraug.demo import run_demo

    out = tmp_path / "demo"
    result = run_demo(out, n=300, epochs=1, target_per_class=60, progress=False)
    assert list(result.steps) == ["demo-data", "prepare", "train", "export-onnx", "augment",
                                  "evaluate"]
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["overall"]["two_sample"] is not None
    assert (out / "report" / "report.html").is_file()
    assert "evaluated:" in result.summary() and str(result.report) in result.summary()
    mixed = pd.read_csv(out / "aug" / "mixed.csv")
    sizes = set()
    for path in mixed["Path"]:
        with Image.open(os.path.join(out / "aug", path)) as im:
            sizes.add(im.size)
    assert sizes == {(64, 64)}  # synthetic images at the real ones' size
    assert (mixed["Synthetic"] == 0).any() and (mixed["Synthetic"] == 1).any()
    # a rerun finds every step done and redoes nothing
    again = run_demo(out, n=300, epochs=1, target_per_class=60, progress=False)
    assert again.steps == pytest.approx(result.steps, abs=0.01)  # the recorded times
