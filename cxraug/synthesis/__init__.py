"""Synthesis stage (NO TensorFlow): the ONNX generator in onnxruntime and class-balanced augment.

Submodules are imported explicitly (``cxraug.synthesis.generator``, ``cxraug.synthesis.augment``)
so that importing this package costs nothing.
"""
