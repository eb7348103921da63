"""A cache's training reference (``MODEL.trainref.h5``, :mod:`cxraug.copy_reference`'s format):
its train split's thumbnails, the near-copy threshold from its val and test splits (other
patients). Export writes one beside the model, augment builds one for ``--data``, evaluate counts
near-copies with one. NO TensorFlow."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..copy_reference import DEFAULT_PERCENTILE, write_reference
from ..errors import CxrError
from .cache import CacheReader


def build_reference(cache: str | os.PathLike, out: str | os.PathLike,
                    percentile: float = DEFAULT_PERCENTILE, progress: bool = False) -> Path:
    """Write the reference of a cache's training split, with the threshold measured on its val
    and test splits (other patients). Streams the cache: memory is flat in its size."""
    cache, out = Path(cache), Path(out)
    if not 0 < percentile < 100:
        raise CxrError(f"--privacy-percentile {percentile}: give a percentile between 0 and 100")
    if not cache.is_file():
        raise CxrError(f"cache {cache} not found; make it with `cxraug prepare`")
    with CacheReader(cache) as reader:
        train = np.asarray(reader.indices("train"))
        held = np.concatenate([np.asarray(reader.indices("val")),
                               np.asarray(reader.indices("test"))]).astype(np.int64)
        if len(train) == 0:
            raise CxrError(f"{cache}: no training images to build a privacy reference from")
        if len(held) == 0:
            raise CxrError(f"{cache}: no val or test images (other patients) to set the "
                           "near-copy threshold with; re-prepare with --val-fraction above 0, "
                           "or turn the filter off with --no-privacy-filter")
        held = np.sort(held)
        return write_reference(
            out, lambda a, b: reader.read(train[a:b]), len(train),
            lambda a, b: reader.read(held[a:b]), len(held), percentile=percentile,
            data_fingerprint=str(reader.fingerprint), source=str(cache), progress=progress)
