"""TensorBoard event files of a run (``runs/NAME/tensorboard``), written through TensorFlow's
low-level ``tf.summary.write``: the ``tensorboard`` package is not a dependency.

Runs on the JAX backend (where TensorFlow may not be installed: the GPU machine) write none and
say so in the run log; metrics.csv and the sample grids hold the same numbers and images.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any


def _tb_metadata(plugin: str) -> bytes:
    from tensorflow.core.framework import summary_pb2

    return summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin)).SerializeToString()


class EventWriter:
    """Scalars and images at a step; :class:`NoEvents` where TensorFlow is not the backend."""

    def __init__(self, folder: Path) -> None:
        import tensorflow as tf

        self._tf = tf
        self._writer = tf.summary.create_file_writer(str(folder))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Scalars with the "scalars" plugin metadata (what ``tf.summary.scalar`` would write)."""
        tf = self._tf
        with self._writer.as_default(step=step):
            for tag, value in values.items():
                tf.summary.write(tag, tf.constant(value, tf.float32),
                                 metadata=_tb_metadata("scalars"))

    def image(self, step: int, tag: str, image: Any) -> None:
        """A PIL image: [width, height, PNG bytes] with "images" plugin metadata."""
        tf = self._tf
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        tensor = tf.constant([str(image.width).encode(), str(image.height).encode(),
                              buffer.getvalue()])
        with self._writer.as_default(step=step):
            tf.summary.write(tag, tensor, metadata=_tb_metadata("images"))

    def close(self) -> None:
        self._writer.close()


class NoEvents:
    """The writer of a run without TensorBoard events."""

    def scalars(self, step: int, values: dict[str, float]) -> None:
        pass

    def image(self, step: int, tag: str, image: Any) -> None:
        pass

    def close(self) -> None:
        pass


def event_writer(folder: Path, backend: str) -> EventWriter | NoEvents:
    return EventWriter(folder) if backend == "tensorflow" else NoEvents()
