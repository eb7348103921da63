"""The ``cxraug`` command line: parses options and calls the stage modules, nothing more.

Stage modules are imported inside each command so that commands which do not need TensorFlow
(prepare, info, demo-data, augment, inspect, evaluate) never pay for importing it.
"""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from . import __version__
from .errors import CxrError
from .quiet_tf import import_tensorflow
from .synthesis.sinks import SINKS

app = typer.Typer(
    name="cxraug",
    help="Expand chest X-ray data sets (NIH ChestX-ray14 format) with synthetic, labelled images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cxraug {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """cxraug: conditional-GAN augmentation for chest X-ray data sets."""


def _split_list(value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    return items or None


#: A working command line per command, shown when required options are missing.
EXAMPLES = {
    "prepare": "cxraug prepare NIH/ --csv NIH/Data_Entry_2017.csv --size 64 --multi-label keep "
               "--out cache64.h5",
    "info": "cxraug info cache64.h5",
    "demo-data": "cxraug demo-data --out phantom/ --n 600 --size 64",
    "train": "cxraug train --data cache64.h5 --out runs/small --recipe small-data-64",
    "sample": "cxraug sample --run runs/small --out grid.png",
    "export-onnx": "cxraug export-onnx --run runs/small --out exported_models/small.onnx",
    "inspect": "cxraug inspect exported_models/small.onnx",
    "augment": "cxraug augment --target-per-class 5000 --out data/aug",
    "train-classifier": "cxraug train-classifier --data cache64.h5 --out classifiers/nih64",
    "evaluate": "cxraug evaluate --model exported_models/small.onnx --data cache64.h5 "
                "--out report/",
    "downstream": "cxraug downstream --data cache64.h5 --synthetic data/aug/mixed.csv",
}
#: What to do when the missing piece does not exist yet.
HINTS = {
    "--data": "no cache yet? make one with `" + EXAMPLES["prepare"] + "` (or try phantom data "
              "first: `cxraug demo-data --out phantom/ --n 600 --size 64` then `cxraug prepare "
              "phantom/ --csv phantom/Data_Entry_2017.csv --size 64 --out cache64.h5`)",
}


def _require(command: str, **given: object) -> None:
    """One line naming every missing option at once, with a command line that works."""
    missing = [name if name.isupper() else "--" + name.replace("_", "-")
               for name, value in given.items() if value is None]
    if not missing:
        return
    # the --data hint (how to make a cache) is for the commands that train on one
    wants_cache = command in ("train", "train-classifier")
    hint = "; ".join(HINTS[m] for m in missing if m in HINTS and wants_cache)
    raise CxrError(f"{command}: missing {', '.join(missing)}; for example: "
                   f"{EXAMPLES[command]}" + (f"; {hint}" if hint else ""))


class MultiLabel(str, Enum):
    drop = "drop"
    keep = "keep"


class Device(str, Enum):
    auto = "auto"
    cuda = "cuda"
    cpu = "cpu"


# --------------------------------------------------------------------------------------- data
@app.command()
def prepare(
    data_root: Annotated[Path | None, typer.Argument(help="Folder holding the PNGs (searched recursively).")] = None,
    csv: Annotated[Path | None, typer.Option(help="NIH label file, e.g. Data_Entry_2017.csv.")] = None,
    out: Annotated[Path, typer.Option(help="HDF5 cache to write.")] = Path("cache.h5"),
    size: Annotated[int, typer.Option(help="Output side in pixels.")] = 128,
    classes: Annotated[str | None, typer.Option(help="Comma-separated class names.")] = None,
    top_k: Annotated[
        int | None, typer.Option(help="No Finding + the K most frequent single-label pathologies.")
    ] = None,
    multi_label: Annotated[MultiLabel, typer.Option(help="drop (the paper) or keep (multi-hot).")] = MultiLabel.drop,
    view: Annotated[str | None, typer.Option(help="Keep only this View Position (PA or AP).")] = None,
    val_fraction: Annotated[float, typer.Option(help="Share of patients for validation.")] = 0.1,
    test_fraction: Annotated[float, typer.Option(help="Share of patients for test (without --test-list).")] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of the patient split.")] = 0,
    train_val_list: Annotated[Path | None, typer.Option(help="NIH's train_val_list.txt.")] = None,
    test_list: Annotated[Path | None, typer.Option(help="NIH's test_list.txt.")] = None,
    workers: Annotated[int | None, typer.Option(help="Decoder processes (default: all cores).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing cache.")] = False,
) -> None:
    """Decode NIH PNGs into a fast HDF5 training cache."""
    from .data.cache import prepare as run_prepare

    _require("prepare", DATA_ROOT=data_root, csv=csv)
    assert data_root is not None and csv is not None  # _require raised otherwise
    result = run_prepare(
        data_root=data_root, csv=csv, out=out, size=size, classes=_split_list(classes),
        top_k=top_k, multi_label=multi_label.value, view=view, val_fraction=val_fraction,
        test_fraction=test_fraction, seed=seed, train_val_list=train_val_list,
        test_list=test_list, workers=workers, overwrite=overwrite,
    )
    typer.echo(result.summary())


@app.command()
def info(cache: Annotated[Path | None, typer.Argument(help="A cache written by `cxraug prepare`.")] = None) -> None:
    """Print a cache's counts per class and split."""
    from .data.cache import describe_cache

    _require("info", CACHE=cache)
    assert cache is not None
    typer.echo(describe_cache(cache))


@app.command("demo-data")
def demo_data(
    out: Annotated[Path | None, typer.Option(help="Folder to create.")] = None,
    n: Annotated[int, typer.Option(help="Number of images.")] = 2000,
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 256,
    seed: Annotated[int, typer.Option(help="Seed; the same seed gives the same bytes.")] = 0,
    multi_label_fraction: Annotated[float, typer.Option(help="Share of multi-label images.")] = 0.1,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing data set.")] = False,
    workers: Annotated[int | None, typer.Option(help="Drawing processes (default: all cores for large sets; the output never depends on it).")] = None,
) -> None:
    """Make a phantom chest X-ray data set in NIH format."""
    from .data.phantom import make_phantom_dataset

    _require("demo-data", out=out)
    assert out is not None
    result = make_phantom_dataset(out=out, n=n, size=size, seed=seed,
                                  multi_label_fraction=multi_label_fraction, overwrite=overwrite,
                                  workers=workers)
    typer.echo(result.summary())


# ----------------------------------------------------------------------------------- training
@app.command()
def train(
    data: Annotated[Path | None, typer.Option(help="Cache written by `cxraug prepare` (with --resume, default: the run's).")] = None,
    out: Annotated[Path | None, typer.Option(help="Run folder.")] = None,
    recipe: Annotated[str | None, typer.Option(help="Built-in recipe name or path to a .toml (default: cxraug-128; with --resume, the run's own recipe).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint.")] = False,
    epochs: Annotated[int | None, typer.Option(help="Override train.epochs.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Override train.batch_size.")] = None,
    seed: Annotated[int | None, typer.Option(help="Override train.seed.")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", metavar="<section.key=value>",
                                       help="Override any field (repeatable).")
    ] = None,
    devices: Annotated[int | None, typer.Option(help="Use the first N accelerators (default: all; of each machine); the batch is split across them.")] = None,
    coordinator: Annotated[str | None, typer.Option(help="Train across machines (JAX): host:port of process 0, or 'auto' under Slurm/Open MPI. Run the same command on every machine; process 0 writes the run.")] = None,
    processes: Annotated[int | None, typer.Option(help="With --coordinator host:port: how many processes (machines) train together.")] = None,
    process_id: Annotated[int | None, typer.Option(help="With --coordinator host:port: this process's rank (0 on the coordinator's machine).")] = None,
    cluster_timeout: Annotated[int, typer.Option(help="With --coordinator: seconds the processes wait for each other (to start, before the first step, at every meeting) before they stop with an error naming the late one.")] = 300,
) -> None:
    """Train a conditional GAN from a recipe.

    On TensorFlow by default; KERAS_BACKEND=jax trains with JAX (pip install 'cxraug[jax]'), also across machines (--coordinator).
    """
    from .recipe import load_recipe

    if resume and out is not None and (out / "run.json").is_file():
        # a run knows its own cache and recipe: --resume needs neither again
        from .training.run import read_run_json

        cache = read_run_json(out).get("data", {}).get("path")
        data = data or (Path(cache) if cache else None)
        recipe = recipe or str(out / "recipe.toml")
    _require("train", data=data, out=out)
    assert data is not None and out is not None
    recipe = recipe or "cxraug-128"
    overrides: dict[str, object] = {}
    for item in set_ or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise CxrError(f"--set {item!r}: expected section.key=value, e.g. train.epochs=10")
        overrides[key.strip()] = value.strip()
    for key, number in (("train.epochs", epochs), ("train.batch_size", batch_size), ("train.seed", seed)):
        if number is not None:
            overrides[key] = number
    resolved = load_recipe(recipe, overrides=overrides)
    if not data.is_file():  # before TensorFlow loads (seconds)
        raise CxrError(f"cache {data} not found; {HINTS['--data']}")
    if devices is not None and devices < 1:
        raise CxrError(f"--devices {devices}: give a positive number")
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if backend not in ("tensorflow", "jax"):
        raise CxrError(f"KERAS_BACKEND={backend}: cxraug trains on tensorflow (the default) or "
                       "jax; unset it or set KERAS_BACKEND=jax")
    cluster = None
    if coordinator is not None:
        from .training.cluster import Cluster

        cluster = Cluster(coordinator, processes, process_id, timeout_s=cluster_timeout)
        cluster.check(backend)
    elif processes is not None or process_id is not None:
        raise CxrError("--processes/--process-id go with --coordinator host:port (training "
                       "across machines)")
    if backend == "jax":
        import importlib.util

        if importlib.util.find_spec("jax") is None:
            raise CxrError("KERAS_BACKEND=jax but JAX is not installed; pip install "
                           "'cxraug[jax]' (CPU) or 'cxraug[jax-cuda]' (NVIDIA GPUs)")
    else:
        import_tensorflow()
    from .training.loop import train as run_train

    result = run_train(resolved, data=data, out=out, resume=resume, devices=devices,
                       cluster=cluster)
    typer.echo(result.summary())


@app.command()
def sample(
    run: Annotated[Path | None, typer.Option(help="Run folder.")] = None,
    out: Annotated[Path, typer.Option(help="PNG grid to write.")] = Path("grid.png"),
    checkpoint: Annotated[str | None, typer.Option(help="Checkpoint: best, latest, a name or an epoch (default: best where the run measured realism, else latest).")] = None,
    columns: Annotated[int, typer.Option(help="Latent vectors per class row.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the latent vectors.")] = 0,
) -> None:
    """Draw a class-by-latent sample grid from a run."""
    _require("sample", run=run)
    assert run is not None
    import_tensorflow()
    from .training.sampling import sample_grid

    path = sample_grid(run=run, out=out, checkpoint=checkpoint, columns=columns, seed=seed)
    typer.echo(f"wrote {path}")


@app.command()
def recipes() -> None:
    """List built-in recipes and every recipe field."""
    from .recipe import available_recipes, field_docs, load_recipe

    for name in available_recipes():
        typer.echo(f"{name:18s} {load_recipe(name).description}")
    typer.echo("\nfields:")
    for key, doc in field_docs().items():
        typer.echo(f"  {key:24s} {doc}")


# ------------------------------------------------------------------------------ export/synth
@app.command("export-onnx")
def export_onnx(
    run: Annotated[Path | None, typer.Option(help="Run folder.")] = None,
    out: Annotated[Path | None, typer.Option(help="ONNX file to write.")] = None,
    checkpoint: Annotated[str | None, typer.Option(help="Checkpoint: best, latest, a name or an epoch (default: best where the run measured realism, else latest).")] = None,
    fp16: Annotated[bool, typer.Option(help="Also write a float16 copy for GPUs.")] = False,
) -> None:
    """Export a run's generator to ONNX, checked against Keras."""
    _require("export-onnx", run=run, out=out)
    assert run is not None and out is not None
    import_tensorflow()
    from .export.onnx_export import export_run

    result = export_run(run=run, out=out, checkpoint=checkpoint, fp16=fp16)
    typer.echo(result.summary())


@app.command()
def doctor() -> None:
    """Check backends, devices, CUDA and onnxruntime.

    Keras's backend, TensorFlow's and JAX's devices, the CUDA libraries found, and the onnxruntime providers that a session really uses (not only those it lists).
    """
    from .doctor import main_text

    typer.echo(main_text())


@app.command()
def inspect(model: Annotated[Path | None, typer.Argument(help="ONNX generator.")] = None) -> None:
    """Print an exported generator's model card."""
    from .inference.generator import model_card

    _require("inspect", MODEL=model)
    assert model is not None
    typer.echo(model_card(model))


@app.command()
def augment(
    model: Annotated[Path | None, typer.Option(help="ONNX generator from `cxraug export-onnx` (default: the generator that ships with cxraug).")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder.")] = None,
    real_csv: Annotated[Path | None, typer.Option(help="Real NIH label CSV to balance against.")] = None,
    data: Annotated[Path | None, typer.Option(help="A cache: count its training split.")] = None,
    split_list: Annotated[Path | None, typer.Option(help="Count only images in this list (e.g. train_val_list.txt).")] = None,
    real_root: Annotated[Path | None, typer.Option(help="Folder of the real PNGs, for mixed.csv paths.")] = None,
    target_per_class: Annotated[int | None, typer.Option(help="Top every class up to N images: N minus its real images in --real-csv or --data (without either, N). Not with --per-class.")] = None,
    per_class: Annotated[int | None, typer.Option(help="Generate exactly N images per class, whatever the real counts. Not with --target-per-class.")] = None,
    classes: Annotated[str | None, typer.Option(help="Comma-separated subset of the model's classes.")] = None,
    label: Annotated[list[str] | None, typer.Option(metavar="<A|B>", help="A label combination, e.g. 'Effusion|Infiltration' (multi-label models; repeatable).")] = None,
    multi_label: Annotated[MultiLabel, typer.Option(help="How real multi-label rows are counted.")] = MultiLabel.drop,
    output_size: Annotated[int | None, typer.Option(help="Resize outputs, e.g. 1024 for NIH's size (the manifest records the real images' size).")] = None,
    view: Annotated[str | None, typer.Option(help="View Position of the synthetic rows, PA or AP (default: the view the generator was trained on; '' for none).")] = None,
    layout: Annotated[str, typer.Option(help="Where the PNGs go: " + ", ".join(f"{n} ({s.description})" for n, s in SINKS.items()) + ".")] = "flat",
    device: Annotated[Device, typer.Option(help="auto, cuda or cpu.")] = Device.auto,
    seed: Annotated[int, typer.Option(help="Image k of class c depends only on (seed, c, k).")] = 0,
    batch_size: Annotated[int, typer.Option(help="Images per inference batch.")] = 64,
    workers: Annotated[int | None, typer.Option(help="PNG writer threads (default: all cores).")] = None,
    shard: Annotated[str, typer.Option(help="i/n: this machine's share of the work.")] = "1/1",
    resume: Annotated[bool, typer.Option(help="Finish an interrupted job in --out.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace a different job in --out.")] = False,
    privacy_filter: Annotated[bool, typer.Option(help="Replace images closer to a training image than 95% of new patients are (on wherever a training reference is found: beside the model, --privacy-reference, or --data the model was trained on).")] = True,
    privacy_reference: Annotated[Path | None, typer.Option(help="The model's training reference (MODEL.trainref.h5 from `cxraug export-onnx`).")] = None,
    privacy_percentile: Annotated[float | None, typer.Option(help="Near-copy rule: closer than this percentile of held-out patients' distances to the training set (default 5).")] = None,
    judge: Annotated[Path | None, typer.Option(help="Classifier folder (`cxraug train-classifier`): keep only images it rates at least as high for their class as --judge-real-share of real validation images.")] = None,
    judge_real_share: Annotated[float, typer.Option(help="Share of real validation images of a class that its judge threshold passes.")] = 0.9,
    max_tries: Annotated[int, typer.Option(help="Tries per image before a filtered slot is left empty.")] = 10,
    png_deflate: Annotated[str, typer.Option(help="PNG compression: zlib (the default: the same bytes on every run) or isal (3x faster at --output-size 1024, 15% larger files, same pixels, bytes not guaranteed identical across runs; pip install 'cxraug[fast-png]').")] = "zlib",
) -> None:
    """Synthesize a class-balanced NIH-format data set."""
    from .synthesis.augment import augment as run_augment

    _require("augment", out=out)
    assert out is not None
    result = run_augment(
        model=model, out=out, real_csv=real_csv, data=data, split_list=split_list,
        real_root=real_root, target_per_class=target_per_class, per_class=per_class,
        classes=_split_list(classes), labels=label, multi_label=multi_label.value,
        output_size=output_size, view=view, layout=layout, device=device.value, seed=seed,
        batch_size=batch_size, workers=workers, shard=shard, resume=resume, overwrite=overwrite,
        privacy_filter=privacy_filter, privacy_reference=privacy_reference,
        privacy_percentile=privacy_percentile, judge=judge, judge_real_share=judge_real_share,
        max_tries=max_tries, png_deflate=png_deflate,
    )
    typer.echo(result.summary())


# --------------------------------------------------------------------------------- evaluation
@app.command("train-classifier")
def train_classifier(
    data: Annotated[Path | None, typer.Option(help="Cache written by `cxraug prepare`.")] = None,
    out: Annotated[Path | None, typer.Option(help="Classifier folder.")] = None,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 15,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    image_size: Annotated[int | None, typer.Option(
        help="Train at this size (default: the cache's); generators of another size are resized "
             "to it when judged.")] = None,
) -> None:
    """Train the CNN used as feature space and label judge."""
    _require("train-classifier", data=data, out=out)
    assert data is not None and out is not None
    import_tensorflow()
    from .evaluation.classifier import train_classifier as run

    result = run(data=data, out=out, epochs=epochs, seed=seed, image_size=image_size)
    typer.echo(result.summary())


@app.command()
def evaluate(
    model: Annotated[Path | None, typer.Option(help="ONNX generator.")] = None,
    data: Annotated[Path | None, typer.Option(help="Cache with the real images.")] = None,
    out: Annotated[Path | None, typer.Option(help="Report folder.")] = None,
    classifier: Annotated[Path | None, typer.Option(help="Classifier folder or ONNX feature model.")] = None,
    split: Annotated[str, typer.Option(help="Held-out real split to compare with.")] = "val",
    n_per_class: Annotated[int, typer.Option(help="Synthetic images per class.")] = 200,
    run: Annotated[Path | None, typer.Option(help="Run folder, for training curves.")] = None,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    min_heldout: Annotated[int, typer.Option(help="Held-out images a class needs before FID/KID/precision/recall are computed for it.")] = 50,
) -> None:
    """Measure realism, label fidelity, diversity, copying."""
    from .evaluation.report import evaluate as run_evaluate

    _require("evaluate", model=model, data=data, out=out)
    assert data is not None and out is not None
    if min_heldout < 2:
        raise CxrError(f"--min-heldout {min_heldout}: use at least 2 (50 or more for numbers that mean something)")
    result = run_evaluate(model=model, data=data, out=out, classifier=classifier, split=split,
                          n_per_class=n_per_class, run=run, seed=seed, min_heldout=min_heldout)
    typer.echo(result.summary())


@app.command()
def downstream(
    data: Annotated[Path | None, typer.Option(help="Cache with the real images and splits.")] = None,
    synthetic: Annotated[Path | None, typer.Option(help="mixed.csv or Data_Entry_2017.csv from augment.")] = None,
    out: Annotated[Path | None, typer.Option(help="Folder for the JSON result.")] = None,
    seeds: Annotated[int, typer.Option(help="Training seeds per arm.")] = 3,
    strategy: Annotated[list[str] | None, typer.Option(
        metavar="<name>", help="Ways to mix (repeat or comma-separate): real, ceiling, all, share-S, weight-W, "
             "rare, pretrain, judge. Default: all of them.")] = None,
    test_data: Annotated[list[Path] | None, typer.Option(
        metavar="<path>", help="More test patients: a cache (`cxraug prepare`) of other patients, same classes "
             "and size; every image is a test image. Repeatable.")] = None,
    holdback: Annotated[float, typer.Option(
        show_default="1/3", help="Share of training patients held back for the ceiling arm.")
    ] = 1 / 3,
    steps: Annotated[int, typer.Option(help="Optimizer steps per classifier.")] = 300,
) -> None:
    """Which way of adding synthetic images helps a classifier?"""
    from .evaluation.downstream import DEFAULT_STRATEGIES
    from .evaluation.downstream import downstream as run_downstream
    from .evaluation.mixing import ClassifierRecipe

    _require("downstream", data=data, synthetic=synthetic)
    assert data is not None and synthetic is not None
    import_tensorflow()  # without its start-up notices, as train does
    recipe = ClassifierRecipe(steps=steps)
    result = run_downstream(data=data, synthetic=synthetic, out=out, seeds=seeds,
                            strategies=strategy or DEFAULT_STRATEGIES, test_data=tuple(test_data or ()),
                            holdback=holdback, recipe=recipe)
    typer.echo(result.summary())


# ------------------------------------------------------------------------------------- demo
@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for everything the demo makes.")] = Path("demo"),
    n: Annotated[int, typer.Option(help="Phantom images to make.")] = 1400,
    epochs: Annotated[int | None, typer.Option(help="Override the smoke recipe's epochs.")] = None,
    target_per_class: Annotated[int, typer.Option(help="Balance every class up to N images.")] = 300,
) -> None:
    """Run the whole pipeline on phantom data (minutes, CPU)."""
    import_tensorflow()
    from .demo import run_demo

    result = run_demo(out=out, n=n, epochs=epochs, target_per_class=target_per_class)
    typer.echo(result.summary())


def _leave_cluster(reason: str, code: int) -> None:
    """A process of a training cluster that stops with an error tells the others why, then
    exits now: JAX's exit handler would wait at its shutdown barrier for peers that are gone
    (minutes), then abort with native stack traces. Its run folder is as a checkpoint left it
    (every write is atomic)."""
    from .training.cluster import farewell, joined

    if joined():
        sys.stdout.flush()
        sys.stderr.flush()
        farewell(reason)
        os._exit(code)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: user errors become one line on stderr and exit status 2."""
    # TensorFlow's C++ log (cuInit failures on CPU-only machines, graph attribute notices) buries
    # the progress bars; Python errors still surface. Set TF_CPP_MIN_LOG_LEVEL=0 to see it.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        code = app(args=argv, prog_name="cxraug", standalone_mode=False)
        if code == 130:  # typer turns Ctrl-C into Exit(130) and returns it in this mode
            raise KeyboardInterrupt
        if isinstance(code, int) and not isinstance(code, bool) and code:
            return code
    except CxrError as exc:
        typer.echo(f"error: {exc}", err=True)
        _leave_cluster(str(exc), exc.exit_code)
        return exc.exit_code
    except KeyboardInterrupt:
        typer.echo("interrupted: finished work is kept and nothing half-written is left; "
                   "train and augment continue with --resume", err=True)
        return 130
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 1
    except Exception as exc:  # click usage errors and unexpected failures
        show = getattr(exc, "show", None)
        if callable(show) and hasattr(exc, "exit_code"):
            show()  # a usage error from the option parser: already one clear message
            return exc.exit_code
        if isinstance(exc, OSError):
            where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
            typer.echo(f"error: {exc.strerror or exc}{where}", err=True)
            return 2
        if os.environ.get("CXRAUG_DEBUG"):
            raise
        typer.echo(f"internal error: {type(exc).__name__}: {exc} "
                   "(set CXRAUG_DEBUG=1 for a traceback and please report it)", err=True)
        _leave_cluster(f"training cluster: another process stopped with an internal error "
                       f"({type(exc).__name__}); see its output", 1)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
