"""``cxraug demo``: the whole pipeline on an embedded default, in minutes on 2 CPU cores.

phantom data set -> cache -> smoke-32 training -> ONNX export -> class-balanced augmentation ->
evaluation report (realism, label fidelity, diversity, copying; the point of the tour) -> contact
sheet. Each finished step is recorded in ``demo.json``, so a rerun after an interruption
continues where it stopped instead of starting over.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import CxrError
from .grid import labelled_grid, to_uint8
from .io_utils import write_json_atomic

DEMO_RECIPE = "smoke-32"
PHANTOM_SIZE = 64
CACHE_SIZE = 32
EVAL_PER_CLASS = 50  # synthetic images per class for the demo's report


@dataclass
class DemoResult:
    out: Path
    steps: dict[str, float] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    contact_sheet: Path | None = None
    report: Path | None = None

    def summary(self) -> str:
        total = sum(self.steps.values())
        timing = ", ".join(f"{k} {v:.0f}s" for k, v in self.steps.items())
        return "\n".join(
            ["cxraug demo finished", *self.lines, f"time: {total:.0f}s ({timing})",
             f"report: {self.report}", f"contact sheet: {self.contact_sheet}"]
        )


def _warnings(flags: list[str]) -> str:
    if not flags:
        return "no warnings"
    first = flags[0] if len(flags[0]) <= 90 else flags[0][:87] + "..."
    return f"{len(flags)} warning(s), first: {first}"


def _load_state(path: Path) -> dict:
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return {}
    return {}


def run_demo(
    out: Path, n: int = 1400, epochs: int | None = None, target_per_class: int = 300,
    progress: bool = True,
) -> DemoResult:
    """Run every stage on phantom data; return what each stage produced and how long it took."""
    from .data.cache import prepare
    from .data.phantom import make_phantom_dataset

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CxrError(f"--out {out} is a file; give a folder for the demo")
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "demo.json"
    state = _load_state(state_path)
    options = {"n": n, "epochs": epochs, "target_per_class": target_per_class}
    if state.get("options", options) != options:
        raise CxrError(f"{out} holds a demo made with other options {state['options']}; "
                       "use another --out or delete the folder")
    state["options"] = options
    result = DemoResult(out=out)

    def step(name: str, fn: Callable[[], object]) -> None:
        if name in state.get("done", {}):  # finished by an earlier, interrupted demo
            result.steps[name] = float(state["done"][name])
            return
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        fn()
        result.steps[name] = time.perf_counter() - start
        state.setdefault("done", {})[name] = round(result.steps[name], 2)
        write_json_atomic(state_path, state)

    phantom = out / "phantom"
    cache = out / "cache.h5"
    run_dir = out / "runs" / DEMO_RECIPE
    model = out / f"{DEMO_RECIPE}.onnx"
    aug = out / "aug"

    step("demo-data", lambda: make_phantom_dataset(
        out=phantom, n=n, size=PHANTOM_SIZE, seed=0, overwrite=True, progress=progress))
    step("prepare", lambda: prepare(
        data_root=phantom, csv=phantom / "Data_Entry_2017.csv", out=cache, size=CACHE_SIZE,
        top_k=6, multi_label="drop", seed=0, overwrite=True, progress=progress))

    def train_step() -> None:
        from .recipe import load_recipe
        from .training.loop import train

        overrides = {"train.epochs": epochs} if epochs else {}
        recipe = load_recipe(DEMO_RECIPE, overrides=overrides)
        resume = (run_dir / "run.json").is_file()
        train(recipe, data=cache, out=run_dir, resume=resume, progress=progress)

    step("train", train_step)

    def export_step() -> None:
        from .export.onnx_export import export_run

        export_run(run=run_dir, out=model)

    step("export-onnx", export_step)

    def augment_step() -> None:
        from .synthesis.augment import augment

        # synthetic images at the real ones' size, so mixed.csv holds one size
        augment(model=model, out=aug, data=cache, target_per_class=target_per_class,
                output_size=PHANTOM_SIZE, resume=aug.exists(), progress=progress)

    step("augment", augment_step)
    report = out / "report"

    def evaluate_step() -> None:
        from .evaluation.report import evaluate

        evaluate(model=model, data=cache, out=report, n_per_class=EVAL_PER_CLASS, run=run_dir,
                 progress=progress)

    step("evaluate", evaluate_step)
    result.report = report / "report.html"
    verdict = json.loads((report / "report.json").read_text())

    result.contact_sheet = write_contact_sheet(model, cache, out / "contact_sheet.png")
    manifest = json.loads((aug / "manifest.json").read_text())
    result.lines += [
        f"note: {DEMO_RECIPE} trains for minutes on a CPU: its images show the pipeline, not the "
        "quality; measure a generator with `cxraug evaluate` and train a full recipe for real use",
        f"phantom data: {phantom}",
        f"cache:        {cache}",
        f"run:          {run_dir}",
        f"generator:    {model}",
        f"augmented:    {aug} (provider {manifest.get('provider', '?')})",
        f"evaluated:    {report / 'report.html'} ({_warnings(verdict.get('flags', []))})",
    ]
    result.lines.append("per class in the training split (real + synthetic = total):")
    for c in manifest.get("classes", []):
        real, gen = int(c.get("real", 0)), int(c.get("on_disk", 0))
        result.lines.append(f"  {c['name']:14s} {real:5d} + {gen:5d} = {real + gen:5d}")
    return result


def write_contact_sheet(model: Path, cache: Path, path: Path, real_cols: int = 3,
                        fake_cols: int = 6, seed: int = 0) -> Path:
    """Rows = classes; real examples on the left, then one fixed z per column across classes."""
    from .data.cache import CacheReader
    from .inference.generator import OnnxGenerator

    gen = OnnxGenerator(model, device="auto")
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((fake_cols, gen.latent_dim)).astype(np.float32)
    rows = []
    with CacheReader(cache) as reader:
        size = reader.size
        train_idx = reader.indices("train")
        labels = reader.labels[train_idx]
        for c, _name in enumerate(gen.class_names):
            pool = train_idx[labels == c][:real_cols]
            real = reader.read(pool) if len(pool) else np.zeros((0, size, size), np.uint8)
            real = np.concatenate([real, np.full((real_cols - len(real), size, size), 255,
                                                 np.uint8)])
            fake = to_uint8(gen.generate(z, np.full(fake_cols, c, dtype=np.int64)))
            if fake.shape[1] != size:
                from PIL import Image

                fake = np.stack([np.asarray(Image.fromarray(f).resize((size, size)))
                                 for f in fake])
            rows.append(np.concatenate([real, fake]))
    sheet = labelled_grid(np.stack(rows), row_labels=gen.class_names,
                          column_labels=["real"] * real_cols + [f"z{i}" for i in range(fake_cols)])
    sheet.save(path)
    return path
