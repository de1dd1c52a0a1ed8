"""Triton python-backend model: encoded image bytes -> pixels.

The logic lives in tritonvision.serve.backends.preprocess.
"""

from tritonvision.serve.backends.preprocess import TritonPythonModel  # noqa: F401
