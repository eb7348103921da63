"""Run by tests/test_backends.py in one fresh process per backend (``KERAS_BACKEND`` is fixed
when Keras is imported; one process per backend keeps JAX's start-up and compilations to one):

* ``probe``: build each recipe's networks, compute the step's objectives on fixed inputs without
  augmentation, take one real step. The first backend to probe a recipe saves its initial weights
  into ``weights``, the next one loads them: both compute with the same weights and batch.
* ``make_cache``: first write the phantom cache the runs train on (as tests/conftest.py makes
  its own: 420 phantoms at 64x64, prepared at 32x32 with the paper's 7 classes).
* ``runs``: train smoke-32 runs ``[out, overrides, train() keywords]`` one after the other.
* ``images``: a run's generator on fixed inputs, saved as ``.npy``.

``python tests/backend_probe.py JOB.json`` prints the results as JSON on its last line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import keras
import numpy as np

from cxraug.contract import IMAGE
from cxraug.recipe import load_recipe
from cxraug.training.backends import make_trainer

NUM_CLASSES = 7
SMALL = {"model.image_size": 32, "train.batch_size": 8}


def probe(name: str, weights: Path) -> dict[str, object]:
    recipe = load_recipe(name, overrides=SMALL)
    keras.utils.set_random_seed(0)
    trainer = make_trainer(recipe, NUM_CLASSES, devices=1)
    models = {"g": trainer.generator, "d": trainer.discriminator}
    for key, model in models.items():
        path = weights / f"{name}.{key}.weights.h5"
        if path.is_file():
            model.load_weights(path)
        else:
            model.save_weights(path)
    if hasattr(trainer, "state_from_models"):  # JAX keeps its own copy of the weights
        trainer.state_from_models()
    rng = np.random.default_rng(1)
    n, size = trainer.real_batch, recipe.model.image_size
    real = rng.uniform(-1, 1, (n, size, size, 1)).astype(np.float32)
    if trainer.label_mode == "multi-hot":
        labels = np.eye(NUM_CLASSES, dtype=np.float32)[np.arange(n) % NUM_CLASSES]
    else:
        labels = (np.arange(n) % NUM_CLASSES).astype(np.int32)
    z = rng.standard_normal((n, recipe.model.latent_dim)).astype(np.float32)
    fake_labels = labels[::-1].copy()
    real, labels, z, fake_labels = (keras.ops.convert_to_tensor(a)
                                    for a in (real, labels, z, fake_labels))

    def d_call(images: object, labs: object) -> tuple[object, object]:
        inputs = images if trainer.label_mode == "none" else {IMAGE: images,
                                                               trainer.label_key: labs}
        return trainer.split_d_output(trainer.discriminator(inputs, training=True))

    # dropout (the paper's D) draws its masks from each backend's own generator: off while the
    # objectives are compared, on again for the real step
    dropouts = [layer for layer in trainer.discriminator._flatten_layers()
                if isinstance(layer, keras.layers.Dropout)]
    rates = [layer.rate for layer in dropouts]
    for layer in dropouts:
        layer.rate = 0.0
    fake = trainer.generator(trainer.g_inputs(z, fake_labels), training=True)
    fake = keras.ops.cast(fake, "float32")
    if trainer.half:
        d_loss = 0.5 * (float(trainer.d_real_loss(d_call, real, labels)[0])
                        + float(trainer.d_fake_loss(d_call, fake, fake_labels)[0]))
    else:
        d_loss = float(trainer.d_full_loss(d_call, real, labels, fake, fake_labels)[0])
    g_loss = float(trainer.g_loss(d_call, fake, fake_labels))
    for layer, rate in zip(dropouts, rates, strict=True):
        layer.rate = rate
    before = [np.asarray(v).copy() for v in trainer.generator.trainable_variables]
    step = {k: float(v) for k, v in trainer.train_step(real, labels).items()}
    # (JAX: generate writes the state back into the models)
    trainer.generate(np.asarray(z)[:2], np.asarray(labels)[:2])
    moved = sum(not np.array_equal(b, np.asarray(v)) for b, v in
                zip(before, trainer.generator.trainable_variables, strict=True))
    return {"backend": keras.backend.backend(), "d_loss": d_loss, "g_loss": g_loss,
            "step": step, "g_weights_moved": moved,
            "g_weights": len(trainer.generator.trainable_variables)}


def run(out: str, overrides: dict, kw: dict, data: str) -> dict[str, object]:
    from cxraug.training.loop import train

    result = train(load_recipe("smoke-32", overrides=overrides), data=data, out=out,
                   progress=False, **kw)
    return {"status": result.status, "step": result.step,
            "rows": [{k: v for k, v in r.items() if k not in ("wall_s", "img_per_s")}
                     for r in result.metrics]}


def images(run_dir: str, out: str) -> None:
    from cxraug.training.run import load_generator

    g = load_generator(run_dir).model
    z = np.random.default_rng(5).standard_normal((6, 32)).astype(np.float32)
    np.save(out, np.asarray(g({"z": z, "label": np.arange(6, dtype=np.int32)}, training=False)))


def main() -> None:
    job = json.loads(Path(sys.argv[1]).read_text())
    results: dict[str, object] = {}
    if job.get("make_cache"):
        from cxraug.data.cache import prepare
        from cxraug.data.phantom import make_phantom_dataset

        phantoms = Path(job["make_cache"]).with_suffix("")
        make_phantom_dataset(out=phantoms, n=420, size=64, seed=0, multi_label_fraction=0.1)
        prepare(data_root=phantoms, csv=phantoms / "Data_Entry_2017.csv",
                out=job["make_cache"], size=32, top_k=6, multi_label="drop",
                val_fraction=0.15, test_fraction=0.15, seed=0, workers=1)
    if job.get("probe"):
        results["probe"] = {name: probe(name, Path(job["weights"])) for name in job["probe"]}
    results["runs"] = [run(out, overrides, kw, job["data"]) for out, overrides, kw in
                       job.get("runs", [])]
    for run_dir, out in job.get("images", []):
        images(run_dir, out)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
