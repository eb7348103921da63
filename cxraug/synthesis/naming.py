"""augment's naming scheme and latent draws: both depend only on (seed, target, k), so every
machine, shard and rerun gives image k of a target the same name and the same pixels.

See :mod:`.augment`'s docstring ("Naming", "Determinism") for the scheme itself.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

SYNTH_PATIENT_BASE = 10_000_000  # above every NIH patient id (1..30,805), 8 digits
CODE_STRIDE = 1_000_000  # synthetic patients (= images) per target
MAX_CODES = 90  # the last code's last patient is 99,999,999
MAX_PER_TARGET = CODE_STRIDE
MULTI_HOT_KEY = 1 << 62  # RNG keys of multi-hot targets: this bit | class bitmask

_SYNTH_RE = re.compile(r"^[1-9]\d{7}_000\.png$")
#: Names of the earlier scheme (removed by --overwrite of such a job, never resumed).
_OLD_SYNTH_RE = re.compile(r"^9\d{7}_\d{3}\.png$")


def synthetic_name(code: int, k: int) -> str:
    """NIH-style name of image ``k`` of the target with ``code``: its own synthetic patient
    (never a real NIH id), follow-up 0."""
    if not (0 <= code < MAX_CODES and 0 <= k < CODE_STRIDE):
        raise ValueError(f"code {code}, k {k} outside the naming scheme")
    return f"{SYNTH_PATIENT_BASE + code * CODE_STRIDE + k:08d}_000.png"


def parse_synthetic_name(name: str) -> tuple[int, int]:
    """``(code, k)`` of a name :func:`synthetic_name` made."""
    return divmod(int(name[:8]) - SYNTH_PATIENT_BASE, CODE_STRIDE)


def is_synthetic_name(name: str) -> bool:
    """Whether a stored name is one of augment's (never a user's file)."""
    return _SYNTH_RE.match(name) is not None


def is_old_synthetic_name(name: str) -> bool:
    """The same for a job of the earlier naming scheme (what --overwrite removes)."""
    return _OLD_SYNTH_RE.match(name) is not None


def safe_folder(name: str) -> str:
    """Folder name for a label: ``Effusion|Infiltration`` -> ``Effusion+Infiltration``."""
    return re.sub(r"[^A-Za-z0-9 _.+-]", "_", name.replace("|", "+")).strip(" .") or "class"


def latents(seed: int, key: int, ks: Sequence[int] | np.ndarray, dim: int,
            tries: Sequence[int] | None = None) -> np.ndarray:
    """Latent vectors float32 ``[len(ks), dim]``; row i depends only on (seed, key, ks[i]) and
    the try ``tries[i]`` (default 0).

    A Philox stream per image, keyed by (seed, key) and started at counter
    ``k * 2**128 + try * 2**96``, so images never share random numbers and no batching changes
    them; try 0 is the unfiltered image, the later tries are the filters' replacements.
    """
    out = np.empty((len(ks), dim), dtype=np.float32)
    full_key = (int(seed) << 64) | int(key)
    for i, k in enumerate(ks):
        attempt = 0 if tries is None else int(tries[i])
        bitgen = np.random.Philox(key=full_key, counter=(int(k) << 128) | (attempt << 96))
        out[i] = np.random.Generator(bitgen).standard_normal(dim, dtype=np.float32)
    return out
