"""Errors raised by ``tritonvision.export``.

::

    ExportError
    ├── CheckpointError (ValueError)   the checkpoint directory cannot be exported as given
    ├── ExportValidationError          the ONNX model does not match PyTorch (names, shapes, values)
    └── VerificationError              a live Triton model does not match PyTorch
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._validate import ValidationReport
    from ._verify import VerifyReport

__all__ = ["CheckpointError", "ExportError", "ExportValidationError", "VerificationError"]


class ExportError(Exception):
    """Root of every error raised by the exporter."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class CheckpointError(ExportError, ValueError):
    """The checkpoint directory is missing something the export needs, or is of an unknown kind."""

    def __init__(self, message: str, *, checkpoint: object = None) -> None:
        super().__init__(message)
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


class VerificationError(ExportError):
    """A model served by Triton disagrees with PyTorch, or does not publish what verify needs."""

    def __init__(self, message: str, *, report: VerifyReport | None = None) -> None:
        super().__init__(message)
        self.report = report
