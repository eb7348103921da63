"""Export of trained generators to self-describing ONNX files (TensorFlow side of the hand-off).

Import :mod:`cxraug.export.onnx_export` for ``export_run`` / ``export_generator``; this package
file stays empty of imports so that ``import cxraug.export`` does not load TensorFlow.
"""
