"""Errors raised by ``tritonvision.export``: a branch of tritonvision's one error tree.

::

    TritonVisionError                  (tritonvision.errors)
    └── ExportError                    the exporter could not produce or confirm a model
        ├── CheckpointError (ValueError)   the checkpoint directory cannot be exported as given
        ├── ExportValidationError          the ONNX model does not match PyTorch (names, shapes,
        │   │                              values; ``problems``, ``reports``), or the module
        │   │                              does not give [N, D] embeddings
        │   └── OnnxExportError            torch.onnx.export could not convert the module
        └── VerificationError              a live Triton model does not match PyTorch (``report``)

They pickle with their fields (``TritonVisionError.__reduce__``), so they cross process pools.
"""

from __future__ import annotations

from collections.abc import Sequence

from tritonvision.errors import TritonVisionError

from ._reports import ValidationReport, VerifyReport

__all__ = [
    "CheckpointError",
    "ExportError",
    "ExportValidationError",
    "OnnxExportError",
    "VerificationError",
]


class ExportError(TritonVisionError):
    """Root of every error raised by the exporter."""


class CheckpointError(ExportError, ValueError):
    """The checkpoint directory is missing something the export needs, or is of an unknown kind.

    ``checkpoint`` (also ``source``) is the directory or file at fault, when known.
    """

    def __init__(self, message: str, *, checkpoint: object = None) -> None:
        super().__init__(message, source=checkpoint)
        self.checkpoint = checkpoint


class ExportValidationError(ExportError):
    """The exported ONNX model disagrees with the PyTorch module it came from.

    ``problems`` lists each failed check in words; ``reports`` holds the numeric figures of
    every batch size that got as far as a value comparison.
    """

    def __init__(
        self,
        message: str,
        *,
        problems: Sequence[str] = (),
        reports: Sequence[ValidationReport] = (),
    ) -> None:
        super().__init__(message)
        self.problems = tuple(problems)
        self.reports = tuple(reports)


class OnnxExportError(ExportValidationError):
    """``torch.onnx.export`` (or the ONNX checker) failed on the module: nothing was exported.

    A subclass of :class:`ExportValidationError`, so one ``except`` covers every way an
    export can fail to produce a model that matches PyTorch.
    """


class VerificationError(ExportError):
    """A model served by Triton disagrees with PyTorch, or does not publish what verify needs."""

    def __init__(self, message: str, *, report: VerifyReport | None = None) -> None:
        super().__init__(message)
        self.report = report
