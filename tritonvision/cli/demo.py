"""``tritonvision demo`` (TEMPORARY shim during the restructure; replaced by the real module)."""

from __future__ import annotations

from tritonvision._demo import add_demo_parser as register

__all__ = ["register"]
