"""The bulk-embed application's errors, in the one tree under :class:`TritonVisionError`::

TritonVisionError
├── UsageError (ValueError)   bad inputs, options or work dir: nothing was embedded
└── JobAborted                the job cannot go on (Triton gone); finished chunks are kept
"""

from __future__ import annotations

from tritonvision.errors import TritonVisionError

__all__ = ["JobAborted", "UsageError"]


class UsageError(TritonVisionError, ValueError):
    """Bad inputs, options or work dir; ``tritonvision embed`` prints it and exits 2."""


class JobAborted(TritonVisionError):
    """The job cannot go on (Triton gone, a non-item error); finished chunks are kept."""
