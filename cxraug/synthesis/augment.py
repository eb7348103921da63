"""``cxraug augment``: class-balanced synthetic data in NIH's format, deterministic and resumable.

NO TensorFlow here: onnxruntime runs the exported generator (:mod:`cxraug.inference.generator`).

Output folder (``out``)::

    job.json               what this job is (model sha256, seed, per-class counts, size, layout)
    images/10000000_000.png ...   8-bit grayscale PNGs (``layout="class-folders"``: <class>/...)
    Data_Entry_2017.csv    the synthetic rows in NIH's exact layout (header quirk kept)
    mixed.csv              real rows + synthetic rows with ``Path`` and ``Synthetic`` (0/1) columns
    manifest.json          model sha256 + metadata, seed, shard, counts, provider, versions, timings
    parts/shard-I-of-N.csv/.json   a sharded run's own rows and manifest (``--shard I/N``)

Naming. Every generated image has a *target* (a class, or a label combination for multi-hot
models) with a code and an index ``k`` (0, 1, ...). Each image comes from its own latent draw, so
it is its own synthetic patient: its NIH name is ``PPPPPPPP_000.png`` with Patient ID
``10,000,000 + code * 1,000,000 + k`` and Follow-up 0. Real NIH patient ids are 1..30,805, so a
synthetic patient is never a real one, no two synthetic images share a patient (loaders that keep
one image per patient, such as torchxrayvision's ``NIH_Dataset``, and patient-level splits such as
GroupKFold treat every image as the new patient it is), and the same (target, k) always gets the
same name on every machine, shard and rerun. A class's code is its index in the model's
``class_names``; a label combination's code is ``len(class_names) + j`` (its position among the
``--label`` options). Up to 90 codes and a million images per target. Folders written by the
earlier scheme (``cxraug-augment-1``: a synthetic patient per 1,000 images of a target, Patient ID
``90,000,000 + code * 100,000 + k // 1000``) are not resumed or mixed with this one: ``--overwrite``
replaces such a job, or give a new ``--out``.

CSV columns. ``Finding Labels``: the generated label (``A|B`` for combinations, in NIH's
alphabetical order); ``Follow-up #`` and ``Patient ID`` from the name; ``OriginalImage Width`` /
``Height``: the written size; ``View Position``: the view of the generator's training images
(its metadata ``view``, or ``view=``); age, gender and pixel spacing are left empty (a generator
has none). ``mixed.csv`` ``Path``: synthetic rows relative to the output folder (so the folder can
move); real rows the absolute path of the real PNG, found under ``real_root`` or, without it,
under the real CSV's folder (``real_csv``) or the cache's data root (``data``) the way ``prepare``
finds images; real images that cannot be found are left out of mixed.csv and counted
(``real_missing``). Real rows keep every NIH column (a cache's rows are completed from the CSV it
was prepared from, when that file is still there). Join ``Path`` to the folder holding mixed.csv
(``os.path.join`` keeps absolute paths).

Determinism. The latent vector of image ``k`` of a target comes from a counter-based Philox
stream keyed by ``(seed, target)`` at counter ``k * 2**128``: it depends only on (seed, target, k),
never on the batch size, the worker count, the shard or interruptions. PNGs are written by a small
built-in encoder (filter Up, zlib level 1, run-length strategy) so the bytes do not depend on
Pillow's version. Bytes are reproducible for the same onnxruntime provider and library versions
(the manifest records them); CUDA and CPU results differ in the last bits. onnxruntime's CPU
kernels give bit-identical images whatever the batch size (checked on the cxraug-128 export and
in the tests). On CUDA, cuDNN may pick other algorithms for other batch shapes: there, keep the
same ``--batch-size`` across shards and reruns.

Sharding. ``shard="i/n"`` makes the images with ``k % n == i - 1`` of every target and writes
``parts/shard-i-of-n.csv`` (NIH layout) and ``.json``. To merge: copy every shard's folder into
one (``cp -r``/``rsync``: the file names never overlap), then run the same command without
``--shard`` and with ``--resume``: it finds every image on disk, generates nothing and writes the
merged ``Data_Entry_2017.csv``, ``mixed.csv`` and ``manifest.json``, byte-identical to an unsharded
run.

Crash safety. Each PNG is written to a temporary ``.NAME.PID.tmp`` and renamed into place, so a
file with a final name is always complete. ``job.json`` is written before any image. The CSVs are
rewritten atomically after every class, on Ctrl-C and at the end, from the set of files on disk;
after a kill -9 they may list fewer images than the folder holds until ``--resume`` finishes the
job (it validates every file's PNG signature and IEND trailer, regenerates broken ones and removes
temporary files whose writer process is gone: shards running at once in one folder, each with
``--resume``, keep each other's files in flight). Real counts: ``target_per_class`` counts the
real images of ``real_csv`` or ``data``; with neither, every class is topped up from zero (and
``augment`` says so).

Code. This module is the entry point (:func:`augment`, :func:`run_augment`, the generate loop);
the pieces are its siblings: :mod:`.options` (the options, checked), :mod:`.targets` (what to
make), :mod:`.naming` (names, latents), :mod:`.real_data` (the real rows), :mod:`.out_folder`
(job.json, resume, overwrite, what is stored), :mod:`.job` (spec and state of a run),
:mod:`.writers` (PNG threads), :mod:`.resize`, :mod:`.csv_rows` and :mod:`.outputs` (CSVs,
manifest), :mod:`.filtering` (the filters during a run).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..inference.generator import OnnxGenerator
from ..io_utils import sha256_file
from .filtering import (
    PRIVACY_FAIL_SLOTS,
    check_privacy_failure,
    filter_warnings,
    filtered_batch,
    open_filters,
)
from .filters import SlotRecord
from .job import Job, JobSpec
from .naming import (
    CODE_STRIDE,
    MAX_CODES,
    MAX_PER_TARGET,
    MULTI_HOT_KEY,
    SYNTH_PATIENT_BASE,
    latents,
    parse_synthetic_name,
    synthetic_name,
)
from .options import AugmentOptions, PathArg, parse_shard
from .out_folder import (
    DATA_CSV,
    JOB_FILE,
    JOB_FORMAT,
    MANIFEST,
    MIXED_CSV,
    OLD_JOB_FORMAT,
    PARTS,
    prepare_out,
)
from .outputs import write_outputs
from .png import PNG_DEFLATE, png_settings
from .real_data import (
    LocatedReal,
    RealData,
    image_sizes,
    locate_real,
    real_from_cache,
    real_from_csv,
)
from .resize import lanczos_matrix, resize_to_uint8
from .sinks import SINKS
from .targets import Target, plan_counts, planned_targets, resolve_targets
from .writers import Writers

#: What other modules, tests and benchmarks import from here (the pieces' own modules work too).
__all__ = [
    "CODE_STRIDE", "DATA_CSV", "JOB_FILE", "JOB_FORMAT", "MANIFEST", "MAX_CODES", "MAX_PER_TARGET",
    "MIXED_CSV", "MULTI_HOT_KEY", "OLD_JOB_FORMAT", "PARTS", "PRIVACY_FAIL_SLOTS",
    "SYNTH_PATIENT_BASE", "AugmentOptions", "AugmentResult", "RealData", "Target", "augment",
    "downstream_note", "lanczos_matrix", "latents", "parse_shard", "parse_synthetic_name",
    "plan_counts", "resize_to_uint8", "run_augment", "synthetic_name",
]


# ----------------------------------------------------------------------------- result
@dataclass
class AugmentResult:
    """What an augment run did; ``summary()`` is what the CLI prints."""

    out: Path
    provider: str
    shard: tuple[int, int]
    image_size: int
    layout: str
    targets: list[dict[str, Any]]
    generated: int
    skipped: int
    wall_s: float
    paths: dict[str, Path] = field(default_factory=dict)
    real_rows: int = 0
    real_missing: int = 0
    notes: list[str] = field(default_factory=list)  # what the run assumed (default model, ...)
    notes_shown: bool = False  # already printed at the start (progress on): not repeated

    @property
    def counts(self) -> dict[str, int]:
        """Images on disk per target after the run (this shard's share when sharded)."""
        return {t["name"]: t["on_disk"] for t in self.targets}

    def summary(self) -> str:
        i, n = self.shard
        width = max([len("class")] + [len(t["name"]) for t in self.targets])
        notes = [] if self.notes_shown else self.notes
        filtered = any("filter" in t for t in self.targets)
        lines = [*notes, f"augment: {len(self.targets)} target(s), provider {self.provider}"
                 + (f", shard {i}/{n}" if n > 1 else ""),
                 f"  {'class':{width}s} {'real':>8s} {'target':>8s} {'generate':>9s} "
                 f"{'on disk':>8s}" + (f" {'tried':>8s} {'privacy':>8s} {'label':>8s} "
                                       f"{'unfilled':>8s}" if filtered else "")]
        for t in self.targets:
            real = "-" if t["real"] is None else f"{t['real']:,}"
            goal = "-" if t["target"] is None else f"{t['target']:,}"
            f = t.get("filter")
            extra = (f" {f['tried']:>8,} {f['dropped_privacy']:>8,} {f['dropped_label']:>8,} "
                     f"{f['unfilled']:>8,}" if f else "")
            lines.append(f"  {t['name']:{width}s} {real:>8s} {goal:>8s} {t['generate']:>9,} "
                         f"{t['on_disk']:>8,}{extra}")
        if filtered:
            lines.append("  (tried: generated images; privacy / label: dropped by each filter "
                         "and replaced; unfilled: images that no try passed)")
        rate = self.generated / self.wall_s if self.wall_s > 0 else 0.0
        lines.append(f"generated {self.generated:,} images ({self.image_size}x{self.image_size} "
                     f"PNG, {self.layout}) in {self.wall_s:.1f} s ({rate:.1f} img/s); "
                     f"{self.skipped:,} were already on disk")
        files = ", ".join(str(p) for p in self.paths.values())
        lines.append(f"wrote {files}")
        if self.real_missing:
            lines.append(f"note: {self.real_missing:,} real images were not found under "
                         "--real-root and are left out of mixed.csv")
        if n > 1:
            lines.append("merge: copy every shard's folder into one and rerun the same command "
                         "without --shard, with --resume (it generates nothing and writes the "
                         "merged CSVs)")
        return "\n".join(lines)


def downstream_note(model: Path) -> str | None:
    """What ``cxraug downstream`` measured for this generator's images, when a
    ``<model>.downstream.json`` (a copy of its ``downstream.json``) sits beside the model: the
    way of using them that helped a classifier on real patients, or that none did. One log line
    (its numbers; the full text is in the file)."""
    path = model.with_suffix(".downstream.json")
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
        recommendation = result["recommendation"]
        arms = result["arms"]
        n_test, patients = int(result["n_test"]), int(result["n_test_patients"])

        def gain(name: str) -> str:
            v = arms[name]["verdict"]
            return f"{v['difference']:+.3f} ({v['low']:+.3f} to {v['high']:+.3f})"

        chosen = recommendation.get("strategy")
        if chosen:
            said = f"mix them as {chosen}: macro AUROC {gain(chosen)} over real images alone"
        else:
            closest = recommendation.get("closest")
            said = "no way of mixing them helped" + (
                f" (closest {closest}: {gain(closest)})" if closest else "")
        if "ceiling" in arms:
            said += f"; more real patients gave {gain('ceiling')}"
        if not chosen:
            said += ". Train on real images only"
    except (OSError, ValueError, KeyError, TypeError):
        return f"{path}: not a readable `cxraug downstream` result; ignored"
    return (f"how to use these images (`cxraug downstream`, {n_test} real test images of "
            f"{patients} patients, {path.name}): {said}")


def augment(
    model: PathArg | None,
    out: PathArg,
    real_csv: PathArg | None = None,
    data: PathArg | None = None,
    split_list: PathArg | None = None,
    real_root: PathArg | None = None,
    target_per_class: int | None = None,
    per_class: int | None = None,
    classes: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
    multi_label: str = "drop",
    output_size: int | None = None,
    view: str | None = None,
    layout: str = "flat",
    device: str = "auto",
    seed: int = 0,
    batch_size: int = 64,
    workers: int | None = None,
    shard: str = "1/1",
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    *,
    threads: int | None = None,
    spinning: bool = False,
    privacy_filter: bool = True,
    privacy_reference: PathArg | None = None,
    privacy_percentile: float | None = None,
    judge: PathArg | None = None,
    judge_real_share: float = 0.9,
    max_tries: int = 10,
    png_deflate: str = PNG_DEFLATE,
) -> AugmentResult:
    """Generate a class-balanced synthetic NIH-format data set (see the module docstring).

    ``view``: the synthetic rows' ``View Position`` (default: the generator's training view).
    ``threads``/``spinning``: onnxruntime intra-op threads (default: every core) and whether idle
    ones busy-wait (off: the PNG writer threads and anything else on the machine need those
    cycles; benchmarks/augment.py measures both).
    ``privacy_*``, ``judge*``, ``max_tries``: the filters (:mod:`.filters`); the privacy filter is
    on wherever a training reference is found.
    ``png_deflate``: "zlib" (reproducible bytes) or "isal" (faster, same pixels; :mod:`.png`).
    """
    return run_augment(AugmentOptions(
        model=model, out=out, real_csv=real_csv, data=data, split_list=split_list,
        real_root=real_root, target_per_class=target_per_class, per_class=per_class,
        classes=classes, labels=labels, multi_label=multi_label, output_size=output_size,
        view=view, layout=layout, device=device, seed=seed, batch_size=batch_size,
        workers=workers, shard=shard, resume=resume, overwrite=overwrite, progress=progress,
        threads=threads, spinning=spinning, privacy_filter=privacy_filter,
        privacy_reference=privacy_reference, privacy_percentile=privacy_percentile, judge=judge,
        judge_real_share=judge_real_share, max_tries=max_tries, png_deflate=png_deflate))


def run_augment(options: AugmentOptions) -> AugmentResult:
    """:func:`augment` with its options in one object: checked, then run."""
    o = options
    started = time.perf_counter()
    o.validate()
    model, out = o.model_path, Path(o.out)
    notes = _start_notes(o, model)
    if o.progress:  # the options are valid: say what the run will do before anything slow
        for note in notes:
            print(note, file=sys.stderr)

    # ---- model, targets, real counts
    gen = OnnxGenerator(model, device=o.device, threads=o.threads, spinning=o.spinning)
    raw_targets = resolve_targets(gen, o.classes, o.labels)
    real: RealData | None = None
    if o.real_csv is not None:
        real = real_from_csv(Path(o.real_csv), gen.class_names, o.multi_label,
                             None if o.split_list is None else Path(o.split_list))
    elif o.data is not None:
        real = real_from_cache(Path(o.data))
    real_counts = None
    if real is not None:
        real_counts = {name: real.count([gen.class_names[j] for j in idx])
                       for name, _c, _k, idx in raw_targets}
    targets = planned_targets(raw_targets, real_counts, o.target_per_class, o.per_class)
    size = int(o.output_size or gen.image_size)
    view = gen.view if o.view is None else o.view.strip().upper()
    scratch = tempfile.TemporaryDirectory(prefix="cxraug-augment-")  # lives as long as the run
    wanted = sorted({c for t in targets for c in t.classes})
    filters = open_filters(gen, model, None if o.data is None else Path(o.data), wanted,
                           o.privacy_filter, None if o.privacy_reference is None
                           else Path(o.privacy_reference), o.privacy_percentile,
                           None if o.judge is None else Path(o.judge), o.judge_real_share,
                           o.max_tries, Path(scratch.name))
    model_sha = sha256_file(model)
    record = {  # job.json: what a resume must match
        "format": JOB_FORMAT, "model_sha256": model_sha, "seed": int(o.seed),
        "image_size": size, "model_image_size": gen.image_size, "layout": o.layout,
        "label_mode": gen.label_mode, "view": view,
        "png": png_settings(o.png_deflate),
        "targets": [{"name": t.name, "code": t.code, "folder": t.folder, "count": t.count}
                    for t in targets],
    }
    if filters.active:  # (an unfiltered job's record is what it always was)
        record["filters"] = filters.spec()
    notes += filters.notes
    if o.progress:
        for note in filters.notes:
            print(note, file=sys.stderr)
    shard_i, shard_n = o.shard_parts
    located = LocatedReal(real)
    if real is not None and shard_n == 1:  # (a shard writes no mixed.csv)
        located = locate_real(real, None if o.real_root is None else Path(o.real_root), notes,
                              o.progress)
    prepare_out(out, record, resume=o.resume, overwrite=o.overwrite)

    # ---- what is left to do, then make it
    if located.paths is not None:
        located.sizes = image_sizes(located.paths)
    spec = JobSpec(
        out=out, sink=SINKS[o.layout], gen=gen, model=model, model_sha=model_sha,
        targets=targets, size=size, view=view, seed=int(o.seed), device=o.device,
        shard=(shard_i, shard_n), deflate=o.png_deflate, filters=filters,
        target_per_class=o.target_per_class, options=_options_record(o, view))
    job = Job(spec=spec, real=located, notes=notes, started=started)
    job.scan()
    skipped = job.stored_count()
    _generate(job, o.batch_size, o.writer_threads, o.progress, skipped)
    filters.close()
    warnings = filter_warnings(job.target_rows(), filters) if filters.active else []
    notes += warnings
    if o.progress:
        for line in warnings:
            print(line, file=sys.stderr)
    if gen.specialize_fallbacks:
        notes.append(f"{len(gen.specialize_fallbacks)} label(s) ran on the full graph (slower, "
                     "same images) instead of a specialized one: "
                     + "; ".join(gen.specialize_fallbacks[:3]))
        if o.progress:
            print(f"note: {notes[-1]}", file=sys.stderr)
    write_outputs(job, final=True)
    return AugmentResult(
        out=out, provider=gen.provider, shard=(shard_i, shard_n), image_size=size,
        layout=o.layout, targets=job.target_rows(), generated=job.state.generated,
        skipped=skipped, wall_s=time.perf_counter() - started, paths=dict(job.paths),
        real_rows=located.rows_in_mixed, real_missing=located.missing, notes=notes,
        notes_shown=o.progress,
    )


def _start_notes(o: AugmentOptions, model: Path) -> list[str]:
    """What the run assumes, said before the model loads (default model, its measured use, no
    real data)."""
    notes: list[str] = []
    if o.model is None:
        notes.append(f"using the default generator {model} (64x64, trained on the "
                     "401-image NIH sample; see exported_models/README.md); --model for another")
    use = downstream_note(model)
    if use:
        notes.append(use)
    if o.target_per_class is not None and not o.has_real_data:
        notes.append(f"no real data given (--real-csv or --data): every class is topped up "
                     f"from 0 to {o.target_per_class} synthetic images")
    return notes


def _options_record(o: AugmentOptions, view: str) -> dict[str, Any]:
    """The options as the manifest records them (``view``: the one used)."""
    return {"real_csv": None if o.real_csv is None else str(o.real_csv),
            "data": None if o.data is None else str(o.data),
            "split_list": None if o.split_list is None else str(o.split_list),
            "real_root": None if o.real_root is None else str(o.real_root),
            "target_per_class": o.target_per_class, "per_class": o.per_class,
            "multi_label": o.multi_label, "output_size": o.output_size, "view": view,
            "batch_size": o.batch_size, "workers": o.writer_threads, "resume": o.resume}


def _generate(job: Job, batch_size: int, workers: int, progress: bool, skipped: int) -> None:
    """Inference on this thread, PNG encoding and storing on the writer threads. Batches run
    across class boundaries, so every batch is full whatever the per-class counts."""
    from ..blas import one_blas_thread

    spec, state = job.spec, job.state
    gen, targets, filters = spec.gen, spec.targets, spec.filters
    work: list[tuple[int, int]] = []  # (target position, k), in CSV order
    todo: list[int] = []
    for i, t in enumerate(targets):
        ks = [k for k in range(t.count) if spec.mine(k) and k not in state.present[t.code]]
        work += [(i, k) for k in ks]
        todo.append(len(ks))
    if progress:
        shard_i, shard_n = spec.shard
        print(f"augment: {len(work):,} images to make ({skipped:,} already on disk) with "
              f"{gen.provider}, {spec.size}x{spec.size} PNG into {spec.out}"
              + (f", shard {shard_i}/{shard_n}" if shard_n > 1 else ""), file=sys.stderr)
    label_of = np.array([t.classes[0] for t in targets], dtype=np.int64)
    hot_of = np.zeros((len(targets), len(gen.class_names)), dtype=np.float32)
    for i, t in enumerate(targets):
        hot_of[i, list(t.classes)] = 1.0

    def label_rows(rows: np.ndarray) -> np.ndarray:
        """The generator's label input for targets at positions ``rows``."""
        picked: np.ndarray = hot_of[rows] if gen.label_mode == "multi-hot" else label_of[rows]
        return picked

    writers = Writers(job, todo, workers, progress)
    blas = one_blas_thread()  # writer threads resize by matrix products: one BLAS thread each
    blas.__enter__()
    try:
        for start in range(0, len(work), batch_size):
            batch = work[start:start + batch_size]
            t0 = time.perf_counter()
            # contiguous runs of one target: [(target position, first row, end row)]
            cuts = [0] + [j for j in range(1, len(batch)) if batch[j][0] != batch[j - 1][0]]
            runs = [(batch[c][0], c, e) for c, e in zip(cuts, cuts[1:] + [len(batch)],
                                                         strict=True)]
            slot_records: list[SlotRecord | None] | None = None
            if filters.active:
                t1 = t0
                images, slot_records, drops = filtered_batch(gen, filters, spec.seed, targets,
                                                             batch, label_rows)
                assert state.records is not None
                for j, ((i, k), record) in enumerate(zip(batch, slot_records, strict=True)):
                    if record is None:
                        state.unfilled[targets[i].code][k] = drops[j]
                    else:
                        state.records[targets[i].code][k] = record
                check_privacy_failure(targets, state.unfilled, state.present, state.records,
                                      filters)
            else:
                z = np.concatenate([latents(spec.seed, targets[i].key,
                                            [k for _, k in batch[c:e]], gen.latent_dim)
                                    for i, c, e in runs])
                t1 = time.perf_counter()
                images = gen.generate(z, label_rows(np.array([i for i, _ in batch], np.int64)))
            t2 = time.perf_counter()
            state.timings["latents_s"] += t1 - t0
            state.timings["inference_s"] += t2 - t1
            step = max(1, -(-len(batch) // workers))
            for i, c, e in runs:
                writers.bar(i)
                for s0 in range(c, e, step):
                    s1 = min(e, s0 + step)
                    pos = [j for j in range(s0, s1)
                           if slot_records is None or slot_records[j] is not None]
                    writers.skip(i, (s1 - s0) - len(pos))  # slots every try failed
                    if pos:
                        texts = (None if slot_records is None else
                                 [slot_records[j].text() for j in pos])  # type: ignore[union-attr]
                        writers.submit(i, images[pos], [batch[j][1] for j in pos], texts)
            writers.wait(2 * workers)
        writers.wait(0)
    except BaseException:
        # Ctrl-C or a write error: keep what is complete, list exactly that, then re-raise
        writers.abandon()
        filters.close()
        blas.__exit__(None, None, None)
        try:
            write_outputs(job, final=False)
        except Exception as exc:  # say so, but the original error is the one to report
            print(f"warning: could not rewrite the CSVs of {spec.out} while stopping ({exc}); "
                  "`--resume` rewrites them from the images on disk", file=sys.stderr)
        raise
    writers.close()
    blas.__exit__(None, None, None)
