"""Synthesis stage (NO TensorFlow): class-balanced augment, its filters and outputs, and the
library's Generator, over the ONNX generator of :mod:`cxraug.inference.generator`.

Submodules are imported explicitly (``cxraug.synthesis.augment``, ``cxraug.synthesis.draw``)
so that importing this package costs nothing.
"""
