"""cxraug from Python: load a generator, draw labelled synthetic chest X-rays into memory, or
stream them into a training loop without writing PNGs first.

    import cxraug
    g = cxraug.load_generator()                        # the shipped model (or a path)
    drawn = g.generate("Effusion", n=64, seed=0)       # uint8 [64, H, W] + multi-hot labels
    ds = g.torch_dataset(n=10_000, seed=0)             # a PyTorch IterableDataset
    ds = g.tf_dataset(n=10_000, seed=0, batch_size=32) # a tf.data.Dataset

The images are the ones ``cxraug augment`` writes for the same model, seed and label: image ``k``
of a label comes from the same counter-based latent (:func:`.augment.latents`), goes through the
same privacy filter (on wherever the model's training reference is found; a slot whose every try
is a near-copy is left out, as augment leaves it empty) and the same 8-bit conversion. So
``generate("Mass", n=100, seed=0).images[k]`` is the pixels of augment's ``k``-th Mass PNG.

Streams (:class:`Stream`, and the PyTorch / TensorFlow adapters over it) draw a label for every
position from a seeded categorical draw over the mix (class-balanced by default, or weights you
give), and image ``k`` of that label for its ``k``-th occurrence: the sequence depends only on
the seed and the mix. With several data-loader workers, worker ``w`` of ``W`` takes the positions
``i % W == w``, so no image is drawn twice and the union is the one-worker stream. Neither
PyTorch nor TensorFlow is a dependency: each is imported only when its adapter is asked for.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CxrError
from ..grid import to_uint8
from ..inference.generator import DEFAULT_MODEL, OnnxGenerator
from .filtering import filtered_batch, open_filters
from .naming import MAX_PER_TARGET, latents, synthetic_name
from .targets import Target, resolve_targets

#: Positions whose labels are drawn per block of the stream's categorical draw.
BLOCK = 1024
#: Images generated per onnxruntime call in streams.
CHUNK = 64


@dataclass
class Drawn:
    """Synthetic images in memory, with their labels."""

    images: np.ndarray  # uint8 [N, H, W]
    labels: np.ndarray  # float32 multi-hot [N, C], in the generator's class order
    label_names: list[str]  # NIH "Finding Labels" text of each image
    names: list[str]  # the file name augment gives each image (PPPPPPPP_000.png)
    ks: list[int]  # each image's index within its label
    dropped: int = 0  # slots left out: every try was a near-copy of a training image

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class Generator:
    """An exported cxraug generator with augment's filters, for use from Python."""

    onnx: OnnxGenerator
    model_path: Path
    filters: Any  # cxraug.synthesis.filters.Filters
    notes: list[str] = field(default_factory=list)
    _scratch: Any = None  # the temporary folder of a privacy reference built from ``data``
    _open_options: dict[str, Any] = field(default_factory=dict)  # to reopen it in a worker

    # -------------------------------------------------------------------------- the model
    @property
    def classes(self) -> list[str]:
        return list(self.onnx.class_names)

    @property
    def image_size(self) -> int:
        return int(self.onnx.image_size)

    @property
    def label_mode(self) -> str:
        return str(self.onnx.label_mode)

    @property
    def provider(self) -> str:
        return str(self.onnx.provider)

    @property
    def card(self) -> str:
        """What ``cxraug inspect`` prints: metadata, I/O, size, hash."""
        from ..inference.generator import model_card

        return model_card(self.model_path)

    @property
    def privacy_filter(self) -> bool:
        return self.filters.privacy is not None

    def __repr__(self) -> str:
        return (f"Generator({str(self.model_path)!r}, {len(self.classes)} classes, "
                f"{self.image_size}x{self.image_size}, {self.label_mode}, {self.provider}, "
                f"privacy filter {'on' if self.privacy_filter else 'off'})")

    # ------------------------------------------------------------------------- drawing
    def targets(self, labels: str | Sequence[str]) -> list[Target]:
        """Targets as augment makes them: a class name, or a combination ``"A|B"`` (multi-hot
        models), or a list of these."""
        wanted = [labels] if isinstance(labels, str) else list(labels)
        if not wanted:
            raise CxrError("no labels given; name one of the generator's classes: "
                           + ", ".join(self.classes))
        classes = [w for w in wanted if "|" not in w]
        combos = [w for w in wanted if "|" in w]
        raw = resolve_targets(self.onnx, classes or None, combos or None)
        order = {name: i for i, name in enumerate(wanted)}
        raw.sort(key=lambda r: order.get(r[0], len(order)))
        return [Target(name=n, code=c, key=k, classes=idx, folder="", real=None, count=0)
                for n, c, k, idx in raw]

    def generate(self, labels: str | Sequence[str], n: int = 1, seed: int = 0,
                 start: int = 0) -> Drawn:
        """``n`` images of each label (images ``start .. start + n - 1`` of it), the pixels
        augment writes for the same seed. Deterministic: the same call gives the same images."""
        if n < 0 or start < 0:
            raise CxrError(f"n={n}, start={start}: give non-negative numbers")
        targets = self.targets(labels)
        if start + n > MAX_PER_TARGET:
            raise CxrError(f"start + n = {start + n:,}: at most {MAX_PER_TARGET:,} images a label")
        slots = [(i, k) for i in range(len(targets)) for k in range(start, start + n)]
        return self._draw(targets, slots, seed)

    def _draw(self, targets: list[Target], slots: list[tuple[int, int]], seed: int,
              chunk: int = 256) -> Drawn:
        images, kept = [], []
        for s in range(0, len(slots), chunk):
            batch = slots[s:s + chunk]
            label_rows = self._label_rows(targets)
            if self.filters.active:
                out, records, _ = filtered_batch(self.onnx, self.filters, seed, targets, batch,
                                                 label_rows)
                ok = [j for j, r in enumerate(records) if r is not None]
            else:
                z = np.concatenate([latents(seed, targets[i].key, [k], self.onnx.latent_dim)
                                    for i, k in batch]) if batch else np.zeros((0, 1))
                out = self.onnx.generate(z, label_rows(np.array([i for i, _ in batch],
                                                                np.int64))) if batch else z
                ok = list(range(len(batch)))
            if ok:
                images.append(to_uint8(out[ok]))
                kept += [batch[j] for j in ok]
        c = len(self.classes)
        hot = np.zeros((len(kept), c), np.float32)
        for row, (i, _) in enumerate(kept):
            hot[row, list(targets[i].classes)] = 1.0
        size = self.image_size
        return Drawn(images=np.concatenate(images) if images else np.zeros((0, size, size),
                                                                            np.uint8),
                     labels=hot, label_names=[targets[i].name for i, _ in kept],
                     names=[synthetic_name(targets[i].code, k) for i, k in kept],
                     ks=[k for _, k in kept], dropped=len(slots) - len(kept))

    def _label_rows(self, targets: list[Target]) -> Callable[[np.ndarray], np.ndarray]:
        index = np.array([t.classes[0] for t in targets], dtype=np.int64)
        hot = np.zeros((len(targets), len(self.classes)), np.float32)
        for i, t in enumerate(targets):
            hot[i, list(t.classes)] = 1.0
        return (lambda rows: hot[rows]) if self.label_mode == "multi-hot" else (
            lambda rows: index[rows])

    # ------------------------------------------------------------------------- streams
    def stream(self, mix: Mapping[str, float] | Sequence[str] | None = None, seed: int = 0,
               n: int | None = None, worker: int = 0, workers: int = 1) -> Stream:
        """A stream of ``(image uint8 [H, W], multi-hot [C])`` pairs: see :class:`Stream`."""
        return Stream(self, mix, seed, n, worker, workers)

    def torch_dataset(self, mix: Mapping[str, float] | Sequence[str] | None = None,
                      seed: int = 0, n: int | None = None,
                      transform: Callable[[np.ndarray], Any] | None = None) -> Any:
        """A ``torch.utils.data.IterableDataset`` of ``(image, multi-hot label)`` pairs: images
        float32 ``[1, H, W]`` in [0, 1] (or ``transform(uint8 [H, W])``), labels float32
        ``[C]``. Sharded across DataLoader workers without repeats (each worker opens its own
        onnxruntime session). Use it with ``DataLoader(ds, batch_size=..., num_workers=...)``."""
        from .adapters import torch_dataset

        return torch_dataset(self.model_path, self._options(), mix, seed, n, transform)

    def tf_dataset(self, mix: Mapping[str, float] | Sequence[str] | None = None,
                   seed: int = 0, n: int | None = None, batch_size: int | None = 32) -> Any:
        """A ``tf.data.Dataset`` of ``(image float32 [H, W, 1] in [0, 1], labels float32
        [C])``, batched by ``batch_size`` (None: unbatched)."""
        from .adapters import tf_dataset

        return tf_dataset(self, mix, seed, n, batch_size)

    def _options(self) -> dict[str, Any]:
        """How to open the same generator again (in a data-loader worker)."""
        return dict(self._open_options)


class Stream:
    """An (in)finite, deterministic stream of labelled synthetic images.

    Position ``i`` gets a label from a seeded categorical draw over ``mix`` (blocks of
    :data:`BLOCK` positions, each from its own counter-based stream, so a position's label does
    not depend on how far anyone read), and the label's next image ``k`` (its ``k``-th
    occurrence). This worker takes the positions with ``i % workers == worker``; ``n`` bounds
    the positions (all workers together); None: endless. A position whose every try the privacy
    filter dropped yields nothing.
    """

    def __init__(self, gen: Generator, mix: Mapping[str, float] | Sequence[str] | None,
                 seed: int, n: int | None, worker: int = 0, workers: int = 1) -> None:
        if not 0 <= worker < workers:
            raise CxrError(f"worker {worker} of {workers}: give 0 <= worker < workers")
        if n is not None and n < 0:
            raise CxrError(f"n={n}: give a non-negative number of images (or None: endless)")
        self.gen, self.seed, self.n = gen, int(seed), n
        self.worker, self.workers = int(worker), int(workers)
        names, weights = mix_weights(gen.classes, mix)
        self.targets = gen.targets(names)
        self.p = np.asarray(weights, np.float64) / float(np.sum(weights))

    def positions(self) -> Iterator[tuple[int, int, int]]:
        """``(position, target index, k)`` of this worker's positions, in order."""
        seen = np.zeros(len(self.targets), np.int64)
        block = 0
        while True:
            rng = np.random.Generator(np.random.Philox(key=self.seed, counter=block))
            picks = rng.choice(len(self.targets), BLOCK, p=self.p)
            for j, t in enumerate(picks):
                i = block * BLOCK + j
                if self.n is not None and i >= self.n:
                    return
                k = int(seen[t])
                seen[t] += 1
                if k >= MAX_PER_TARGET:
                    raise CxrError(f"{self.targets[t].name}: more than {MAX_PER_TARGET:,} "
                                   "images of one label in one stream; use another seed")
                if i % self.workers == self.worker:
                    yield i, int(t), k
            block += 1

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        chunk: list[tuple[int, int]] = []
        for _, t, k in self.positions():
            chunk.append((t, k))
            if len(chunk) == CHUNK:
                yield from self._emit(chunk)
                chunk = []
        if chunk:
            yield from self._emit(chunk)

    def _emit(self, chunk: list[tuple[int, int]]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        drawn = self.gen._draw(self.targets, chunk, self.seed)
        yield from zip(drawn.images, drawn.labels, strict=True)


def mix_weights(classes: list[str], mix: Mapping[str, float] | Sequence[str] | None,
                ) -> tuple[list[str], list[float]]:
    """Labels and their weights: None = every class equally often; a list of labels = those,
    equally; a mapping = those, by weight (need not sum to 1)."""
    if mix is None:
        return list(classes), [1.0] * len(classes)
    if isinstance(mix, str):
        return [mix], [1.0]
    if isinstance(mix, Mapping):
        names, weights = list(mix), [float(w) for w in mix.values()]
    else:
        names, weights = list(mix), [1.0] * len(mix)
    if not names:
        raise CxrError("an empty mix: name at least one label")
    if any(w < 0 or not np.isfinite(w) for w in weights) or sum(weights) <= 0:
        raise CxrError(f"mix weights {weights}: give non-negative numbers, not all 0")
    if len(set(names)) != len(names):
        raise CxrError("the mix names a label twice")
    return names, weights


def load_generator(path: str | os.PathLike | None = None, device: str = "auto", *,
                   privacy_filter: bool = True,
                   privacy_reference: str | os.PathLike | None = None,
                   privacy_percentile: float | None = None, data: str | os.PathLike | None = None,
                   max_tries: int = 10, threads: int | None = None) -> Generator:
    """An exported generator for use from Python: the shipped model when ``path`` is None.

    ``device``: "auto" (CUDA where onnxruntime can use it), "cpu" or "cuda" (fails loudly).
    The privacy filter is augment's: on wherever a training reference is found
    (``MODEL.trainref.h5`` beside the model, ``privacy_reference``, or ``data``: the cache the
    model was trained on); ``generator.notes`` says what was found.
    """
    model = Path(path) if path is not None else DEFAULT_MODEL
    gen = OnnxGenerator(model, device=device, threads=threads)
    scratch = tempfile.TemporaryDirectory(prefix="cxraug-draw-")
    filters = open_filters(gen, model, None if data is None else Path(data),
                           list(range(len(gen.class_names))), privacy_filter,
                           None if privacy_reference is None else Path(privacy_reference),
                           privacy_percentile, None, 0.9, max_tries, Path(scratch.name))
    out = Generator(onnx=gen, model_path=model, filters=filters, notes=list(filters.notes),
                    _scratch=scratch)
    out._open_options = {"device": "cpu" if device == "auto" else device,
                         "privacy_filter": privacy_filter,
                         "privacy_reference": privacy_reference,
                         "privacy_percentile": privacy_percentile, "data": data,
                         "max_tries": max_tries, "threads": 1}
    return out
