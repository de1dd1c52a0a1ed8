"""``tritonvision deploy`` (TEMPORARY placeholder during the restructure)."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    pass
