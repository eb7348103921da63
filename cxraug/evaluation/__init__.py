"""Evaluation stage: the chest X-ray feature network, set metrics, the report and downstream test.

Nothing here imports TensorFlow at import time; only training a classifier does.
"""
