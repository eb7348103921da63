"""What the report's sections read: :class:`Shared`, built once per evaluation by the phases of
:func:`cxraug.evaluation.report.evaluate` (generate, embed, neighbours, probes), so that no
section generates, embeds or searches on its own and each reads only arrays.

Shapes below: C evaluated classes, n synthetic images a class (``n_per_class``), N = C * n the
pooled synthetic set (class after class, in ``classes`` order), H held-out real images of the
evaluated classes, T training images (every one, in cache-row order), D feature dimensions,
S the cache's image side in pixels, Z latents of the label-swap grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class JudgeOutputs:
    """The judge classifier's view of the synthetic and held-out images (evaluated classes'
    columns only, in ``Shared.classes`` order)."""

    synthetic_probs: np.ndarray  # float [N, C]: the judge's probability of each evaluated class
    heldout_probs: np.ndarray  # float [H, C]: the same for the held-out real images
    #: int [N]: class position the judge decides on: argmax of the probabilities divided by each
    #: class's training prevalence (so a frequent class does not win every argmax)
    synthetic_decisions: np.ndarray
    heldout_decisions: np.ndarray  # int [H]: the same decision for the held-out images
    heldout_class: np.ndarray  # int [H]: each held-out image's true class position


@dataclass(frozen=True)
class Neighbours:
    """Each synthetic image's nearest training image, and the held-out -> train distances that
    say what "near" is for images of other patients (the memorization phase's output)."""

    #: float [N]: L2 distance in full-size uint8 pixels to the nearest training image
    pixel_distance: np.ndarray
    pixel_nearest: np.ndarray  # int [N]: that image's position in the training split
    feature_distance: np.ndarray  # float [N]: L2 distance to the nearest training feature vector
    #: bool [N]: feature distance below the held-out -> train ``feature_p01``
    feature_near: np.ndarray
    #: bool [N]: a near-copy by the one rule (:mod:`cxraug.near_copy`), what augment replaces
    near_copy: np.ndarray
    #: :func:`~cxraug.evaluation.report.near_copy_check`'s result for the pooled synthetic set:
    #: ``copy``, ``distance``, ``train_row`` per image; ``rule``, ``threshold``, ``percentile``,
    #: ``n_heldout`` of the reference
    near_copy_check: dict[str, Any]
    #: held-out -> nearest training image, full-size pixels: the FEATURE_NEAR_PERCENTILE-th
    #: percentile (an observed distance) and the median
    heldout_pixel_p01: float
    heldout_pixel_median: float
    heldout_feature_p01: float  # the same in feature space (the ``feature_near`` threshold)
    heldout_feature_median: float
    n_heldout: int  # held-out images those four numbers come from (H)


@dataclass
class Shared:
    """Everything the sections read, computed once per evaluation. Fields with a default are
    each one section's input: evaluate sets them all (``judge`` stays None without a judge); a
    Shared built by hand to test :func:`~cxraug.evaluation.sections.compute` may leave them out,
    and the section that needs one asserts it is set."""

    classes: list[str]  # evaluated class names: the generator's classes in the cache, its order
    cache_index: dict[str, int]  # class name -> its index in the cache (the labels' values)
    seed: int  # the evaluation's seed: every section's fixed seed (never the shared generator)
    min_heldout: int  # held-out images a class needs before FID, KID and precision/recall
    synthetic: dict[str, np.ndarray]  # class name -> uint8 [n, S, S] generated images
    synthetic_class: np.ndarray  # int [N]: class position of each pooled synthetic image
    synthetic_features: np.ndarray  # float [N, D]: the feature model's embedding of each
    heldout_images: np.ndarray  # uint8 [H, S, S]: the held-out split's images of these classes
    heldout_labels: np.ndarray  # int [H]: each one's cache class index
    heldout_features: np.ndarray  # float [H, D]
    train_features: np.ndarray  # float [T, D]: every training image, in training-split order
    train_labels: np.ndarray  # int [T]: cache class index (-1: multi-label) of each
    #: class name -> sorted positions into the training split of min(n, available) random
    #: training images of the class: the baseline, what a perfect generator would score
    train_subset: dict[str, np.ndarray]
    train_subset_images: dict[str, np.ndarray]  # class name -> uint8 [<=n, S, S] those images
    judge_info: dict[str, Any]  # the feature model's classifier.json (``val_auroc`` per class)
    judge: JudgeOutputs | None = None  # None: the feature model cannot judge these classes
    label_swap_images: np.ndarray | None = None  # uint8 [C, Z, S, S]: same z, every label
    label_swap_features: np.ndarray | None = None  # float [C, Z, D]: their features
    neighbours: Neighbours | None = None  # nearest training images (memorization)
    #: the realism probes on all labelable held-out images (the two_sample section's overall
    #: numbers): ``two_sample``, ``two_sample_real``, ``pixel_diversity_ratio``, ``probes``,
    #: ``realism_gap``, ``realism_worst`` (when measured) and ``two_sample_note``
    pooled_probes: dict[str, Any] | None = None

    def macro(self, per_class: dict[str, Any], section: str, key: str) -> float | None:
        """Mean of a per-class number over the classes that have it."""
        values = [float(v) for c in self.classes
                  if (v := per_class[c][section].get(key)) is not None
                  and not (isinstance(v, float) and np.isnan(v))]
        return float(np.mean(values)) if values else None
