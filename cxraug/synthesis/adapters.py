"""On-the-fly synthetic batches for PyTorch and TensorFlow training loops.

Each adapter is a thin shell over :class:`cxraug.synthesis.draw.Stream` (which holds the mixing
and the sharding); its framework is imported only when the adapter is built, so neither PyTorch
nor TensorFlow is a dependency of cxraug.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CxrError


def _require(module: str, extra: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise CxrError(f"{module} is not installed: {extra}") from None


def torch_dataset(model: str | os.PathLike, options: dict[str, Any],
                  mix: Mapping[str, float] | Sequence[str] | None, seed: int, n: int | None,
                  transform: Callable[[np.ndarray], Any] | None) -> Any:
    """A ``torch.utils.data.IterableDataset`` over a stream of the generator at ``model``
    (reopened in each DataLoader worker with ``options``, so no onnxruntime session crosses a
    fork)."""
    torch = _require("torch", "pip install torch (cxraug does not depend on it)")
    from torch.utils.data import IterableDataset, get_worker_info

    class SyntheticXrays(IterableDataset):
        """Labelled synthetic chest X-rays, drawn as they are read (cxraug)."""

        def __init__(self) -> None:
            super().__init__()
            self.model, self.options = Path(model), dict(options)
            self.mix, self.seed, self.n, self.transform = mix, int(seed), n, transform
            self._gen: Any = None

        def __len__(self) -> int:
            if self.n is None:
                raise TypeError("an endless synthetic stream (n=None) has no length")
            return int(self.n)

        def __iter__(self) -> Iterator[tuple[Any, Any]]:
            from .draw import load_generator

            info = get_worker_info()
            worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
            if self._gen is None:
                self._gen = load_generator(self.model, **self.options)
            for image, label in self._gen.stream(self.mix, self.seed, self.n, worker, workers):
                x = (self.transform(image) if self.transform is not None else
                     torch.from_numpy(image.astype(np.float32) / 255.0)[None])
                yield x, torch.from_numpy(label)

    return SyntheticXrays()


def tf_dataset(gen: Any, mix: Mapping[str, float] | Sequence[str] | None, seed: int,
               n: int | None, batch_size: int | None) -> Any:
    """A ``tf.data.Dataset`` of (image float32 [H, W, 1] in [0, 1], multi-hot float32 [C])."""
    tf = _require("tensorflow", "pip install tensorflow (cxraug's training extra has it)")
    size, classes = gen.image_size, len(gen.classes)

    def pairs() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for image, label in gen.stream(mix, seed, n):
            yield (image.astype(np.float32) / 255.0)[..., None], label

    ds = tf.data.Dataset.from_generator(pairs, output_signature=(
        tf.TensorSpec((size, size, 1), tf.float32), tf.TensorSpec((classes,), tf.float32)))
    return ds.batch(batch_size) if batch_size else ds
