"""Cascade R-CNN trainer (tensorpack + TF 2.21 graph mode) that streams from ddcache caches.

tensorpack's layers need legacy Keras: the variable must be set before
TensorFlow is imported anywhere in the process, so it is set here, at the
root of the package.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
