"""Procedural chest radiograph phantoms in NIH ChestX-ray14 format (``cxraug demo-data``).

Anyone without the 45 GB NIH download can still try every command: this package draws a
deterministic data set of synthetic PA chest radiographs (body outline, lungs with vessel markings,
heart and mediastinum, ribs, clavicles, diaphragm domes, spine) with one visible, class-specific
sign per finding, and writes it exactly as NIH ships its data: ``images/PPPPPPPP_FFF.png`` plus a
``Data_Entry_2017.csv`` with NIH's header quirk.

Its modules, one job each, in the order an image is made:

* :mod:`.plan`: which images exist (labels, patients, follow-ups): ``ImageSpec``,
  ``plan_dataset``;
* :mod:`.anatomy`: a patient's chest (``Anatomy``, ``patient_anatomy``), a follow-up's pose, the
  lungs' and heart's distances;
* :mod:`.shapes`: drawing primitives (smooth steps, bands, smooth random fields, the pixel grid);
* :mod:`.signs`: each finding's sign, registered by finding name (``SIGNS``, ``register_sign``);
* :mod:`.render`: one image from its spec (``render_image``), a whole set in memory;
* :mod:`.dataset`: the folder on disk (``make_phantom_dataset``): PNGs, CSV, README, swapped
  into place.

Design choices, and why:

* **Deterministic and worker-independent.** The data-set plan (labels, patients, follow-ups) comes
  from one RNG seeded by ``(seed, n)``; each patient's anatomy from ``(seed, patient id)``; each
  image's pose, sign and exposure from ``(seed, image index)``. An image therefore never depends on
  which process drew it, and the same ``(n, size, seed)`` gives byte-identical files (with the
  same numpy and Pillow versions).
* **Resolution-independent.** Geometry lives in normalized coordinates and every random field is
  drawn on a fixed coarse grid, so ``--size 64`` and ``--size 256`` show the same patients.
* **Not separable by brightness.** Every image is rescaled to a random target mean and contrast
  (as a radiograph's automatic exposure processing does), so a classifier on global mean and
  standard deviation is at chance while the signs themselves stay visible.
* **Patients.** Each patient has 1-4 follow-ups sharing anatomy with small changes in position,
  inspiration and exposure, so a patient-level split is meaningful.

Only numpy and Pillow are used; all drawing is vectorized over the pixel grid.
"""

from __future__ import annotations

from .anatomy import Anatomy, patient_anatomy
from .dataset import (
    CSV_NAME,
    NIH_SPACING_MM,
    README_MARKER,
    README_NAME,
    PhantomResult,
    encode_png,
    make_phantom_dataset,
)
from .plan import (
    CLASS_WEIGHTS,
    PHANTOM_CLASSES,
    PHANTOM_PATHOLOGIES,
    ImageSpec,
    plan_dataset,
)
from .render import render_image, render_phantoms
from .signs import SIGNS, Sign, register_sign

__all__ = [
    "CLASS_WEIGHTS",
    "CSV_NAME",
    "NIH_SPACING_MM",
    "PHANTOM_CLASSES",
    "PHANTOM_PATHOLOGIES",
    "README_MARKER",
    "README_NAME",
    "SIGNS",
    "Anatomy",
    "ImageSpec",
    "PhantomResult",
    "Sign",
    "encode_png",
    "make_phantom_dataset",
    "patient_anatomy",
    "plan_dataset",
    "register_sign",
    "render_image",
    "render_phantoms",
]
