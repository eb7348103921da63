"""The training input pipeline streamed from the HDF5 cache: ``tf.data`` for the TensorFlow step,
a prefetching numpy iterator for the JAX step (same batches, same order).

Why streamed: the paper's code held the whole data set in RAM (3.2 GiB as float32 for 52,703
images at 128x128). Here only the *index plan* of an epoch lives in memory (a few bytes per image);
images are read one batch at a time with h5py, so memory does not grow with the cache size.

Why an index plan: the order of an epoch is a pure function of ``(seed, epoch)``. A resumed run
rebuilds the same plan and skips the steps already done, so it sees exactly the batches an
uninterrupted run would have seen.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from queue import Queue
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

if TYPE_CHECKING:
    import tensorflow as tf

from ..errors import CxrError


class CacheDataset:
    """One split of a cache as a reproducible stream of batches.

    ``batch_size`` here is the number of *real* images per training step (the paper's half-batch
    mode asks for half of the recipe's batch). ``steps_per_epoch`` 0 means ``n // step_batch`` where
    ``step_batch`` (default: ``batch_size``) is the recipe batch, so an epoch of the paper's recipe
    is ``N / 128`` steps of 64 reals, as in its code.
    """

    def __init__(
        self,
        path: str | Path,
        split: str = "train",
        batch_size: int = 32,
        seed: int = 0,
        class_balanced: bool = False,
        label_mode: str = "index",
        steps_per_epoch: int = 0,
        step_batch: int | None = None,
        prefetch: int = 2,
    ) -> None:
        from ..data.cache import CacheReader

        self.path = Path(path)
        if not self.path.is_file():
            raise CxrError(f"cache {self.path} not found; make one with `cxraug prepare`")
        with CacheReader(self.path) as reader:
            self.class_names: list[str] = list(reader.class_names)
            self.size = int(reader.size)
            self.fingerprint = str(reader.fingerprint)
            self.view = reader.view("train" if split == "all" else split)
            if split == "all":
                indices = np.arange(reader.n, dtype=np.int64)
            else:
                indices = np.asarray(reader.indices(split), dtype=np.int64)
            labels = np.asarray(reader.labels, dtype=np.int64)[indices]
            multi_hot = np.asarray(reader.multi_hot, dtype=np.uint8)[indices]
        self.split = split
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.class_balanced = bool(class_balanced)
        self.label_mode = label_mode
        self.prefetch = prefetch
        self.num_classes = len(self.class_names)
        if label_mode == "index":
            keep = labels >= 0  # -1: several classes (multi-label kept); no single index exists
            self.dropped_multi_label = int((~keep).sum())
            indices, labels, multi_hot = indices[keep], labels[keep], multi_hot[keep]
        else:
            self.dropped_multi_label = 0
        if len(indices) == 0:
            raise CxrError(f"cache {self.path}: split {split!r} has no usable images; "
                           "choose another data.split or re-run `cxraug prepare`")
        self.indices = indices
        self.labels = labels
        self.multi_hot = multi_hot
        # Members of each class: by index label, or by multi-hot column in multi-hot mode.
        if label_mode == "index":
            members = [np.flatnonzero(labels == c) for c in range(self.num_classes)]
        else:
            members = [np.flatnonzero(multi_hot[:, c] > 0) for c in range(self.num_classes)]
        self.class_members = members
        self.class_counts = np.array([len(m) for m in members], dtype=np.int64)
        self.present_classes = np.flatnonzero(self.class_counts > 0)
        step_batch = int(step_batch or batch_size)
        self.steps_per_epoch = int(steps_per_epoch) or max(1, len(indices) // step_batch)

    @property
    def n(self) -> int:
        return int(len(self.indices))

    # ------------------------------------------------------------------------------- the plan
    def epoch_plan(self, epoch: int) -> np.ndarray:
        """Positions (into this split) of every image of ``epoch``: int64 ``[steps, batch]``.

        Frequency sampling walks a fresh permutation per pass; class-balanced sampling draws a class
        uniformly for every slot, then the next image of that class's own permutation, so each class
        is equally likely per draw and images within a class are reused only after all were shown.
        """
        total = self.steps_per_epoch * self.batch_size
        rng = np.random.default_rng([self.seed, int(epoch), 0x5EED])
        if not self.class_balanced:
            passes = -(-total // self.n)
            order = np.concatenate([rng.permutation(self.n) for _ in range(passes)])[:total]
        else:
            cls = self.present_classes[rng.integers(0, len(self.present_classes), size=total)]
            order = np.empty(total, dtype=np.int64)
            for c in self.present_classes:
                slots = np.flatnonzero(cls == c)
                if len(slots) == 0:
                    continue
                members = self.class_members[c]
                passes = -(-len(slots) // len(members))
                picks = np.concatenate([rng.permutation(members) for _ in range(passes)])
                order[slots] = picks[: len(slots)]
        return order.reshape(self.steps_per_epoch, self.batch_size)

    def read_batch(self, handle: h5py.File, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Read one batch: h5py wants increasing unique indices, so read sorted and reorder."""
        rows = self.indices[positions]
        unique, inverse = np.unique(rows, return_inverse=True)
        images = handle["images"][unique][inverse]
        if self.label_mode == "index":
            labels = self.labels[positions].astype(np.int32)
        else:
            labels = self.multi_hot[positions].astype(np.float32)
        return images, labels

    def batches(self, epoch: int, start_step: int = 0, part: tuple[int, int] = (0, 1),
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """uint8 images ``[B, H, W]`` and labels for the steps of ``epoch`` from ``start_step``.

        ``part=(i, n)``: only the i-th of n equal slices of every batch (process i of n that
        train together reads its own rows; the plan is the same on every process)."""
        index, count = part
        plan = self.epoch_plan(epoch)
        if plan.shape[1] % count:
            raise ValueError(f"a batch of {plan.shape[1]} does not split into {count} parts")
        plan = plan.reshape(plan.shape[0], count, -1)[:, index]
        with h5py.File(self.path, "r") as handle:
            for positions in plan[start_step:]:
                yield self.read_batch(handle, positions)

    # ---------------------------------------------------------------------------- tf.data
    def element_spec(self) -> tuple[tf.TensorSpec, tf.TensorSpec]:
        import tensorflow as tf

        b, s = self.batch_size, self.size
        if self.label_mode == "index":
            label_spec = tf.TensorSpec([b], tf.int32)
        else:
            label_spec = tf.TensorSpec([b, self.num_classes], tf.float32)
        return tf.TensorSpec([b, s, s], tf.uint8), label_spec

    def dataset(self, epoch: int, start_step: int = 0) -> tf.data.Dataset:
        """Batches of float32 images ``[B, H, W, 1]`` in [-1, 1] and labels, prefetched."""
        import tensorflow as tf

        ds = tf.data.Dataset.from_generator(
            lambda: self.batches(epoch, start_step), output_signature=self.element_spec()
        )
        ds = ds.map(_to_model_input, num_parallel_calls=1, deterministic=True)
        return ds.prefetch(self.prefetch)


    def numpy_batches(self, epoch: int, start_step: int = 0, part: tuple[int, int] = (0, 1),
                      ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """What :meth:`dataset` yields (``part``: see :meth:`batches`), as numpy arrays read
        ahead by one thread (no TensorFlow: the JAX step's input)."""
        queue: Queue[Any] = Queue(maxsize=max(1, int(self.prefetch)))
        stop = threading.Event()
        done = object()

        def reader() -> None:
            try:
                for images, labels in self.batches(epoch, start_step, part):
                    if stop.is_set():
                        return
                    x = (images.astype(np.float32) - 127.5) / 127.5
                    queue.put((x[..., None], labels))
            except BaseException as exc:  # handed to the consumer
                queue.put(exc)
                return
            queue.put(done)

        thread = threading.Thread(target=reader, daemon=True, name="cxraug-batches")
        thread.start()
        try:
            while True:
                item = queue.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while thread.is_alive():  # unblock a reader waiting on a full queue
                while not queue.empty():
                    queue.get_nowait()
                thread.join(timeout=0.05)


def _to_model_input(images: Any, labels: Any) -> tuple[Any, Any]:
    import tensorflow as tf

    x = (tf.cast(images, tf.float32) - 127.5) / 127.5
    return x[..., None], labels
