"""Helpers the python-backend models share inside Triton's stub."""

from __future__ import annotations

import sys
from typing import Any

import triton_python_backend_utils as pb_utils


def log_info(message: str) -> None:
    """Into Triton's log: the python backend's logger, or the stub's stderr (same log)."""
    logger = getattr(pb_utils, "Logger", None)
    if logger is not None:
        logger.log_info(message)
    else:
        print(message, file=sys.stderr, flush=True)


def config_parameter(config: dict[str, Any], key: str, default: str = "") -> str:
    """A ``parameters`` string value of a model config (JSON form), or ``default``."""
    value = config.get("parameters", {}).get(key, {})
    return str(value.get("string_value", default)) if isinstance(value, dict) else default
