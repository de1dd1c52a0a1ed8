"""``tritonvision embed`` (TEMPORARY shim during the restructure; replaced by the real module)."""

from __future__ import annotations

from tritonvision.client._cli import add_embed_parser as register

__all__ = ["register"]
