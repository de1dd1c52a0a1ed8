"""``tritonvision bench`` (TEMPORARY shim during the restructure; replaced by the real module)."""

from __future__ import annotations

from tritonvision._bench_cli import add_bench_parser as register

__all__ = ["register"]
