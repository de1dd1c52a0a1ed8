"""``tritonvision export`` (TEMPORARY shim during the restructure; replaced by the real module)."""

from __future__ import annotations

from tritonvision.export._cli import add_export_parser as register

__all__ = ["register"]
