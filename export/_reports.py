"""Tolerances and the reports that measure an export against them.

A leaf module: it imports nothing of tritonvision's, so the encoders, validation, verify and
the error types can all use it without a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Tolerance", "ValidationReport", "VerifyReport"]


@dataclass(frozen=True, kw_only=True)
class Tolerance:
    """How close ONNX (or Triton) must be to PyTorch: |a - b| <= atol + rtol * |b| elementwise,
    and every row's cosine similarity >= min_cosine."""

    atol: float
    rtol: float
    min_cosine: float

    def describe(self, max_abs_diff: float, min_cosine: float, passed: bool) -> str:
        """Measured figures against these limits, for reports."""
        verdict = "ok" if passed else "MISMATCH"
        return (
            f"max abs diff {max_abs_diff:.3g} (atol {self.atol:g} + rtol {self.rtol:g}*|ref|), "
            f"min cosine {min_cosine:.7f} (>= {self.min_cosine:g}) {verdict}"
        )


@dataclass(frozen=True, kw_only=True)
class ValidationReport:
    """The figures of one ONNX-against-PyTorch comparison at one batch size."""

    batch_size: int
    output_shape: tuple[int, ...]
    max_abs_diff: float
    min_cosine: float
    tolerance: Tolerance
    passed: bool

    def describe(self) -> str:
        figures = self.tolerance.describe(self.max_abs_diff, self.min_cosine, self.passed)
        return f"batch {self.batch_size}: {figures}"


@dataclass(frozen=True, kw_only=True)
class VerifyReport:
    """How a served model compared with PyTorch over the sample images."""

    model_name: str
    served_source: str
    reference_source: str
    images: tuple[str, ...]
    cosines: tuple[float, ...]
    max_abs_diff: float
    min_cosine: float
    tolerance: Tolerance
    passed: bool

    def describe(self) -> str:
        figures = self.tolerance.describe(self.max_abs_diff, self.min_cosine, self.passed)
        return f"{self.model_name}: {len(self.images)} images, {figures}"
