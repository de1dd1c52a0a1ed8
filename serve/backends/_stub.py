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


def error_response(message: str, *, invalid_input: bool = False) -> Any:
    """An error response; ``invalid_input`` marks the caller's mistake (``INVALID_ARG``:
    HTTP 400 / gRPC INVALID_ARGUMENT) where the stub knows the code, else an internal error."""
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None) if invalid_input else None
    error = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
    return pb_utils.InferenceResponse(error=error)
