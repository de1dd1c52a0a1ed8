"""The serve package's own error (a leaf module: the launcher and its checks both raise it)."""

from __future__ import annotations

__all__ = ["ServeError"]


class ServeError(RuntimeError):
    """The local Triton could not be started, failed while starting, or answers wrongly."""
