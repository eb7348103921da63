"""The data set's plan: which images exist, whose they are and which findings each carries.

Nothing is drawn here. The plan comes from one RNG seeded by ``(seed, n)``, so labels, patients
and follow-ups are fixed before any pixel is drawn, and an image never depends on which process
draws it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...errors import CxrError
from ..nih import NO_FINDING, image_name

#: Relative frequency of each single-label class, ordered like NIH's single-label counts
#: (Infiltration > Atelectasis > Effusion > Nodule > Mass > Pneumothorax), so ``--top-k 6`` picks
#: the paper's six; Cardiomegaly is the rarer extra class.
CLASS_WEIGHTS: dict[str, float] = {
    NO_FINDING: 30.5,
    "Infiltration": 13.0,
    "Atelectasis": 10.5,
    "Effusion": 10.0,
    "Nodule": 9.5,
    "Mass": 9.0,
    "Pneumothorax": 8.5,
    "Cardiomegaly": 5.0,
}

#: Every class a phantom can show.
PHANTOM_CLASSES: tuple[str, ...] = tuple(CLASS_WEIGHTS)
#: The findings a phantom can carry: each needs a registered sign (:mod:`.signs`).
PHANTOM_PATHOLOGIES: tuple[str, ...] = tuple(c for c in PHANTOM_CLASSES if c != NO_FINDING)

#: RNG domains: the plan, a patient and an image each seed their own stream with one of these
#: first, so the three streams never collide.
PLAN_STREAM, PATIENT_STREAM, IMAGE_STREAM = 0, 1, 2

_FOLLOW_UP_P = (0.45, 0.27, 0.17, 0.11)  # share of patients with 1, 2, 3, 4 images
MIN_SIZE, MAX_SIZE = 32, 2048
MAX_N = 1_000_000


@dataclass(frozen=True)
class ImageSpec:
    """One image of the plan: who it shows and which findings it carries."""

    index: int
    patient_id: int
    follow_up: int
    labels: tuple[str, ...]  # () for No Finding, else sorted pathology names
    age: int
    gender: str
    view: str

    @property
    def name(self) -> str:
        return image_name(self.patient_id, self.follow_up)

    @property
    def finding_labels(self) -> str:
        """NIH's ``Finding Labels`` text: names joined by ``|`` in alphabetical order."""
        return "|".join(self.labels) if self.labels else NO_FINDING


def quotas(total: int, weights: dict[str, float]) -> dict[str, int]:
    """Largest-remainder apportionment: exact counts, so small sets still hold every class."""
    wsum = sum(weights.values())
    raw = {k: total * w / wsum for k, w in weights.items()}
    counts = {k: int(math.floor(v)) for k, v in raw.items()}
    left = total - sum(counts.values())
    order = sorted(weights, key=lambda k: (-(raw[k] - counts[k]), list(weights).index(k)))
    for k in order[:left]:
        counts[k] += 1
    return counts


def check_options(n: int, size: int, seed: int, multi_label_fraction: float) -> None:
    """The option errors of ``demo-data``, before anything is planned or written."""
    if not isinstance(n, int | np.integer) or not 1 <= n <= MAX_N:
        raise CxrError(f"--n {n}: the number of images must be between 1 and {MAX_N:,}")
    if not isinstance(size, int | np.integer) or not MIN_SIZE <= size <= MAX_SIZE:
        raise CxrError(f"--size {size}: choose a side between {MIN_SIZE} and {MAX_SIZE} pixels")
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise CxrError(f"--seed {seed}: the seed must be a non-negative integer")
    if not 0.0 <= float(multi_label_fraction) < 1.0:
        raise CxrError(f"--multi-label-fraction {multi_label_fraction}: "
                       "choose a share in [0, 1), e.g. 0.1")


def plan_dataset(n: int, seed: int = 0, multi_label_fraction: float = 0.1) -> list[ImageSpec]:
    """Labels, patients and metadata of every image, in file order (patient, then follow-up)."""
    check_options(n, 64, seed, multi_label_fraction)
    rng = np.random.default_rng([seed, PLAN_STREAM, n])
    n_multi = int(round(n * multi_label_fraction))
    singles = quotas(n - n_multi, CLASS_WEIGHTS)
    labels: list[tuple[str, ...]] = []
    for name, count in singles.items():
        labels += [() if name == NO_FINDING else (name,)] * count
    path_w = np.array([CLASS_WEIGHTS[p] for p in PHANTOM_PATHOLOGIES])
    for _ in range(n_multi):
        pair = rng.choice(len(PHANTOM_PATHOLOGIES), size=2, replace=False, p=path_w / path_w.sum())
        labels.append(tuple(sorted(PHANTOM_PATHOLOGIES[int(j)] for j in pair)))
    order = rng.permutation(len(labels))

    specs: list[ImageSpec] = []
    patient = 0
    while len(specs) < n:
        patient += 1
        follow_ups = int(rng.choice(len(_FOLLOW_UP_P), p=_FOLLOW_UP_P)) + 1
        prng = np.random.default_rng([seed, PATIENT_STREAM, patient, 0])
        age0 = int(prng.integers(18, 86))
        gender = "M" if prng.random() < 0.56 else "F"
        for f in range(follow_ups):
            if len(specs) == n:
                break
            i = len(specs)
            view = "PA" if rng.random() < 0.6 else "AP"
            age = min(age0 + int(rng.integers(0, 2)) * (f > 0) + f // 2, 95)
            specs.append(ImageSpec(i, patient, f, labels[order[i]], age, gender, view))
    return specs
