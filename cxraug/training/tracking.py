"""Realism measured during training, to pick the checkpoint to ship (``train.eval_every``).

On a few hundred images a GAN first improves, then starts to reproduce its training images; the
last checkpoint is not the best one. StyleGAN2-ADA computes a metric every few hundred kimg and
keeps the best snapshot; cxraug does the same with the realism probes of
:mod:`cxraug.probes.battery` (contrast, dynamic range, exposure, brightness, sharpness, linear
two-sample tests on histograms, spectra and pixels, a small CNN), which need no pretrained network,
against the cache's **val** split (patients never trained on):

* ``realism_gap``: the battery's rule, the worst probe in units of its tolerance, less the same
  probe between training and val images (two sets of real patients); lower is better;
* one column per probe (``contrast``, ``hf_energy``, ``cnn_c2st``, ...; ``c2st_val`` is the pixel
  two-sample test);
* ``near_copy``: the share of synthetic images that are near-copies of a training image by the
  one rule (:mod:`cxraug.near_copy`, augment's privacy filter's and evaluate's): closer to a
  training image than 95% of the cache's held-out patients (val + test) are (memorization);
* ``diversity``: synthetic pixel diversity over the val images'.

The latents and labels are fixed for the whole run, so two measurements differ only by the
generator. The best checkpoint is the one with the lowest ``realism_gap`` among those with at most
``MAX_NEAR_COPY`` near-copies and a diversity of at least ``MIN_DIVERSITY``; ties go to the later
one. One number alone picked washed-out, blurry checkpoints before (the pixel test cannot see
contrast or detail): the rule looks at every probe, so a checkpoint is only as good as its worst.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CxrError
from ..grid import to_uint8
from ..near_copy import EXPECTED_SHARE, CopyCheck, NearCopyReference, thumbnails_u8
from ..probes.battery import SPECS, Probe, realism_gap, run_probes, summarize, worst
from ..probes.stats import thumbnails

#: metrics.csv's probe columns: the pixel test keeps its old name, c2st_val
PROBE_COLUMNS = {name: ("c2st_val" if name == "pixel_c2st" else name) for name in SPECS}
REALISM_COLUMNS = ("realism_gap", *PROBE_COLUMNS.values(), "near_copy", "diversity")
#: Synthetic draws of val's size whose two-sample tests are averaged in one measurement.
TWO_SAMPLE_DRAWS = 2
#: A checkpoint with more near-copies than this is never "best", however realistic: by the
#: rule's own definition 5% of new real patients are that close to a training image, so a
#: generator of new patients is allowed as many, and no more (augment's privacy filter, the
#: same rule, then replaces them).
MAX_NEAR_COPY = EXPECTED_SHARE
#: ... nor one whose images vary less than this share of the val images' variety.
MIN_DIVERSITY = 0.9
#: Training images the near-copy test compares with (a fixed random subset on large caches;
#: the threshold is measured against the same subset, so the rule keeps its meaning).
MAX_REFERENCE = 5000
#: Val images needed for a measurement (the two-sample test's folds need a few a side).
MIN_VAL = 10
#: Held-out images read at a time for the near-copy threshold.
READ_BLOCK = 2048


class RealismTracker:
    """Fixed latents and labels, val thumbnails and the near-copy reference of one run."""

    def __init__(self, cache: str | Path, label_pool: np.ndarray, latent_dim: int, n: int,
                 seed: int) -> None:
        from ..data.cache import CacheReader

        rng = np.random.default_rng([seed, 0x7EA1])
        with CacheReader(cache) as reader:
            val = np.sort(np.asarray(reader.indices("val"), dtype=np.int64))
            # the near-copy threshold's patients: the privacy filter's (val + test)
            held = np.sort(np.concatenate([val, np.asarray(reader.indices("test"),
                                                           dtype=np.int64)]))
            train = np.sort(np.asarray(reader.indices("train"), dtype=np.int64))
            if len(val) < MIN_VAL:
                raise CxrError(f"train.eval_every needs at least {MIN_VAL} images in the cache's "
                               f"val split, {cache} has {len(val)}; re-run `cxraug prepare` with "
                               "a larger --val-fraction or set train.eval_every = 0")
            if len(train) > MAX_REFERENCE:
                train = np.sort(rng.choice(train, MAX_REFERENCE, replace=False))
            val_images = np.asarray(reader.read(val))
            train_images = np.asarray(reader.read(train))
            held_thumbs = np.concatenate([thumbnails_u8(reader.read(held[s:s + READ_BLOCK]))
                                          for s in range(0, len(held), READ_BLOCK)])
        self.val_summary = summarize(val_images)
        self.val = self.val_summary.thumbs
        self.copies = NearCopyReference.from_thumbnails(thumbnails_u8(train_images), held_thumbs)
        # two sets of real patients: as many training images as val has, against val
        pick = np.sort(rng.choice(len(train_images), min(len(val), len(train_images)),
                                  replace=False))
        self.real_probes = run_probes(train_images[pick], self.val_summary, seed=seed)
        self.z = rng.standard_normal((n, latent_dim)).astype(np.float32)
        self.labels = label_pool[rng.integers(0, len(label_pool), n)]
        self.seed = seed
        self.best: float | None = None

    def measure(self, generate: Any, batch: int = 128) -> dict[str, float]:
        """``generate(z, labels)`` -> images in [-1, 1]; returns the REALISM_COLUMNS (and
        ``worst``, the probe that sets the gap)."""
        images = np.concatenate([to_uint8(generate(self.z[i:i + batch],
                                                   self.labels[i:i + batch]))
                                 for i in range(0, len(self.z), batch)])
        probes = self.probe(images)
        from ..probes.stats import diversity_ratio

        return {"realism_gap": realism_gap(probes), "worst": worst(probes),
                **{PROBE_COLUMNS[k]: p.value for k, p in probes.items()},
                "near_copy": float(self.near_copies(images).copy.mean()),
                "diversity": diversity_ratio(thumbnails(images), self.val)}

    def near_copies(self, images: np.ndarray) -> CopyCheck:
        """The near-copy rule's verdict on uint8 images against this run's training images."""
        return self.copies.check(images)

    def probe(self, images: np.ndarray) -> dict[str, Probe]:
        """The battery on uint8 images against val, beside training-vs-val (the rule's real
        figure); each two-sample test is the mean over ``TWO_SAMPLE_DRAWS`` synthetic draws."""
        draws = max(1, min(TWO_SAMPLE_DRAWS, len(images) // self.val_summary.n))
        probes = run_probes(images, self.val_summary, repeats=draws, seed=self.seed)
        for name, p in probes.items():
            p.real, p.real_score = self.real_probes[name].value, self.real_probes[name].score
        return probes

    def is_best(self, result: dict[str, Any]) -> bool:
        """Whether ``result`` beats every earlier measurement of this run (and remember it)."""
        if result["near_copy"] > MAX_NEAR_COPY or result["diversity"] < MIN_DIVERSITY:
            return False
        if self.best is None or result["realism_gap"] <= self.best:
            self.best = result["realism_gap"]
            return True
        return False


def realism_line(result: dict[str, Any]) -> str:
    """One log line for a measurement (or a best-checkpoint entry of an older run, which has
    only the pixel test)."""
    tail = (f"near-copies {result['near_copy']:.1%}, diversity {result['diversity']:.2f}"
            if "diversity" in result else f"near-copies {result['near_copy']:.1%}")
    if "realism_gap" not in result:
        return f"two-sample accuracy vs val {result['c2st_val']:.3f}, {tail}"
    w = result.get("worst", "")
    worst_part = f" (worst: {w} {result[PROBE_COLUMNS[w]]:.2f})" if w in PROBE_COLUMNS else ""
    return (f"realism gap {result['realism_gap']:+.2f}{worst_part}; contrast "
            f"{result['contrast']:.2f}, fine detail {result['hf_energy']:.2f}, CNN "
            f"{result['cnn_c2st']:.2f}, pixels {result['c2st_val']:.2f} vs val; {tail}")
