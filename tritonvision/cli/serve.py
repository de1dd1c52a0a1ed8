"""``tritonvision serve`` (TEMPORARY shim during the restructure; replaced by the real module)."""

from __future__ import annotations

from tritonvision.serve._cli import add_serve_parser as register

__all__ = ["register"]
