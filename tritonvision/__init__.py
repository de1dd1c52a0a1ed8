"""tritonvision: export vision encoders to Triton, serve them, embed images with one client.

Subpackages: :mod:`tritonvision.client` (the client library; never imports torch),
:mod:`tritonvision.export` (PyTorch -> ONNX -> Triton model repository) and
:mod:`tritonvision.serve` (the embedded local Triton server).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
