"""ONNX inference below the stages (NO TensorFlow): onnxruntime sessions, the exported generator
and the classifier's feature reader.

Synthesis (augment, the library's Generator, the label judge) and evaluation (evaluate) both run
these models, so they live here and neither stage imports the other. Submodules are imported
explicitly (``cxraug.inference.generator``, ``cxraug.inference.classifier``) so that importing
this package costs nothing; onnxruntime is imported when a session is made.
"""
