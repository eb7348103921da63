"""Realism measured during training, to pick the checkpoint to ship (``train.eval_every``).

On a few hundred images a GAN first improves, then starts to reproduce its training images; the
last checkpoint is not the best one. StyleGAN2-ADA computes a metric every few hundred kimg and
keeps the best snapshot; cxraug does the same with the metrics of
:mod:`cxraug.evaluation.realism`, which need no pretrained network (numpy only):

* ``c2st_val``: the classifier two-sample test between synthetic images and the cache's **val**
  split (patients never trained on), 0.5 = indistinguishable;
* ``near_copy``: the share of synthetic images closer to a training image than 95% of those val
  patients are (memorization);
* ``diversity``: synthetic pixel diversity over the val images'.

The latents and labels are fixed for the whole run, so two measurements differ only by the
generator. The best checkpoint is the one with the lowest ``c2st_val`` among those with at most
``MAX_NEAR_COPY`` near-copies and a diversity of at least ``MIN_DIVERSITY``; ties go to the
later one. On a few hundred images realism stops improving long before training stops, while
copies and a loss of variety creep in (benchmarks/real_small_data.py): the guards keep those out
of the checkpoint that ships.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CxrError
from ..evaluation.realism import thumbnails, two_sample_test
from ..grid import to_uint8
from ..neighbors import nearest_neighbors

REALISM_COLUMNS = ("c2st_val", "near_copy", "diversity")
#: A checkpoint with more near-copies than this is never "best", however realistic.
MAX_NEAR_COPY = 0.01
#: ... nor one whose images vary less than this share of the val images' variety.
MIN_DIVERSITY = 0.9
#: Training images the near-copy test compares with (a fixed random subset on large caches).
MAX_REFERENCE = 5000
#: Val images needed for a measurement (the two-sample test's folds need a few a side).
MIN_VAL = 10
NEAR_COPY_PERCENTILE = 5.0


class RealismTracker:
    """Fixed latents and labels, val thumbnails and the near-copy reference of one run."""

    def __init__(self, cache: str | Path, label_pool: np.ndarray, latent_dim: int, n: int,
                 seed: int) -> None:
        from ..data.cache import CacheReader

        rng = np.random.default_rng([seed, 0x7EA1])
        with CacheReader(cache) as reader:
            val = np.sort(np.asarray(reader.indices("val"), dtype=np.int64))
            train = np.sort(np.asarray(reader.indices("train"), dtype=np.int64))
            if len(val) < MIN_VAL:
                raise CxrError(f"train.eval_every needs at least {MIN_VAL} images in the cache's "
                               f"val split, {cache} has {len(val)}; re-run `cxraug prepare` with "
                               "a larger --val-fraction or set train.eval_every = 0")
            if len(train) > MAX_REFERENCE:
                train = np.sort(rng.choice(train, MAX_REFERENCE, replace=False))
            self.val = thumbnails(reader.read(val))
            self.train = thumbnails(reader.read(train))
        _, val_d = nearest_neighbors(self.val, self.train)
        self.threshold = float(np.percentile(val_d, NEAR_COPY_PERCENTILE))
        self.z = rng.standard_normal((n, latent_dim)).astype(np.float32)
        self.labels = label_pool[rng.integers(0, len(label_pool), n)]
        self.best: float | None = None

    def measure(self, generate: Any, batch: int = 128) -> dict[str, float]:
        """``generate(z, labels)`` -> images in [-1, 1]; returns the REALISM_COLUMNS."""
        from ..evaluation.realism import diversity_ratio

        images = np.concatenate([to_uint8(generate(self.z[i:i + batch],
                                                   self.labels[i:i + batch]))
                                 for i in range(0, len(self.z), batch)])
        syn = thumbnails(images)
        test = two_sample_test(syn, self.val)
        _, dist = nearest_neighbors(syn, self.train)
        return {"c2st_val": test.accuracy,
                "near_copy": float(np.mean((dist < self.threshold) | (dist == 0))),
                "diversity": diversity_ratio(syn, self.val)}

    def is_best(self, result: dict[str, float]) -> bool:
        """Whether ``result`` beats every earlier measurement of this run (and remember it)."""
        if result["near_copy"] > MAX_NEAR_COPY or result["diversity"] < MIN_DIVERSITY:
            return False
        if self.best is None or result["c2st_val"] <= self.best:
            self.best = result["c2st_val"]
            return True
        return False
