"""Proof that a local Triton will really serve, before and right after it starts.

Before: :func:`check_stub_environment`. The python-backend stub is a C++ program built
against NumPy 1's C API and linked to this Python's ``libpython``. With NumPy 2 installed
next to nvidia-pytriton (which requires ``numpy<2``) Triton still loads every model and
reports ready, then answers each inference with an empty output tensor; so we compare the
installed versions with nvidia-pytriton's own requirements and refuse to start.

After ready: :func:`warm_up`. One inference per model, over plain HTTP, whose outputs must
have the shape the model's config declares; anything else names the model. It also pays
each model's first-call costs before the first user request does.
"""

from __future__ import annotations

import glob
import io
import logging
import sysconfig
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from typing import Any

import numpy as np
import numpy.typing as npt
from packaging.requirements import InvalidRequirement, Requirement

from tritonvision.client._protocol import (
    HEADER_LENGTH_HEADER,
    InputTensor,
    ModelConfig,
    build_infer_request,
    config_path,
    dtype_of,
    infer_path,
    parse_infer_response,
    parse_model_config,
)
from tritonvision.contract import IMAGES_INPUT, TEXTS_INPUT
from tritonvision.errors import TritonVisionError

from ._errors import ServeError

__all__ = [
    "STUB_PACKAGES",
    "TRITON_DISTRIBUTION",
    "check_stub_environment",
    "restricted_api_headers",
    "warm_up",
]

logger = logging.getLogger(__name__)

TRITON_DISTRIBUTION = "nvidia-pytriton"
STUB_PACKAGES: tuple[str, ...] = ("numpy",)
"""Packages the stub itself loads (through pybind11's NumPy C API), not just pytriton's API."""
_BYTES = "BYTES"


def check_stub_environment(
    *,
    version: Callable[[str], str] = metadata.version,
    requires: Callable[[str], list[str] | None] = metadata.requires,
    libpython_found: Callable[[], bool] | None = None,
) -> None:
    """Raise :class:`ServeError` naming each package whose version the stub cannot use.

    ``version`` and ``requires`` are :mod:`importlib.metadata`'s functions by default, so
    a test can describe another environment without installing one; ``libpython_found``
    says whether this Python's shared library is there for the stub to load.
    """
    problems: list[str] = []
    try:
        triton_version = version(TRITON_DISTRIBUTION)
        requirements = requires(TRITON_DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        return  # find_triton() reports a missing nvidia-pytriton with the install hint
    for text in requirements:
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue
        if req.name.lower() not in STUB_PACKAGES:
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        needed = f"{req.name}{req.specifier}"
        try:
            found = version(req.name)
        except metadata.PackageNotFoundError:
            problems.append(f"{req.name} is not installed; {TRITON_DISTRIBUTION} needs {needed}")
            continue
        if not req.specifier.contains(found, prereleases=True):
            problems.append(
                f"{req.name} {found} is installed, but the python-backend stub of "
                f"{TRITON_DISTRIBUTION} {triton_version} needs {needed} "
                f"(pip install '{needed}')"
            )
    if not (libpython_found or _libpython_found)():
        problems.append(
            f"no shared libpython{sysconfig.get_python_version()} in "
            f"{sysconfig.get_config_var('LIBDIR')}: the python-backend stub links it "
            "(use a Python built with --enable-shared)"
        )
    if problems:
        raise ServeError(
            "this environment cannot run Triton's python backend:\n  " + "\n  ".join(problems)
        )


def _libpython_found() -> bool:
    libdir = sysconfig.get_config_var("LIBDIR")
    pattern = f"{libdir}/libpython{sysconfig.get_python_version()}*.so*"
    return bool(libdir) and bool(glob.glob(pattern))


def restricted_api_headers(server_args: Sequence[str]) -> dict[str, str]:
    """The headers that open Triton's ``--http-restricted-api`` groups the warm-up uses.

    Each flag is ``GROUP[,GROUP...]:KEY=VALUE``, given as ``--flag=V`` or ``--flag V``.
    """
    headers: dict[str, str] = {}
    values: list[str] = []
    args = list(server_args)
    for i, arg in enumerate(args):
        if arg.startswith("--http-restricted-api="):
            values.append(arg.split("=", 1)[1])
        elif arg == "--http-restricted-api" and i + 1 < len(args):
            values.append(args[i + 1])
    for value in values:
        groups, _, pair = value.rpartition(":")
        key, sep, secret = pair.partition("=")
        if sep and {"inference", "model-config"} & set(groups.split(",")):
            headers[key] = secret
    return headers


def _tiny_png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 12), (200, 120, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def _sample_input(
    config: ModelConfig, name: str, datatype: str, dims: Sequence[int]
) -> InputTensor | None:
    """A valid one-item input, or None when we cannot make one up."""
    if any(d < 0 for d in dims):
        return None
    shape = (1, *dims) if config.max_batch_size > 0 else tuple(dims)
    if datatype == _BYTES:
        if name == IMAGES_INPUT:
            array: npt.NDArray[Any] = np.full(shape, _tiny_png(), dtype=np.object_)
        elif name == TEXTS_INPUT:  # NAME_tokenize / NAME_texts (export --text)
            array = np.full(shape, b"a warm-up sentence", dtype=np.object_)
        else:
            return None
        return InputTensor(name, array, _BYTES)
    try:
        array = np.zeros(shape, dtype=dtype_of(datatype))
    except (TritonVisionError, ValueError):
        return None
    return InputTensor(name, array, datatype)


def _request(
    url: str, *, data: bytes | None, headers: dict[str, str], timeout_s: float
) -> tuple[bytes, dict[str, str]]:
    req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
    with urllib.request.urlopen(req, timeout=timeout_s) as response:
        return response.read(), {k.lower(): v for k, v in response.headers.items()}


def _shape_ok(shape: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    if len(shape) != len(expected) or 0 in shape:
        return False
    return all(e < 0 or s == e for s, e in zip(shape, expected, strict=True))


def warm_up(
    http_url: str,
    models: Sequence[str],
    *,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 120.0,
) -> list[str]:
    """One inference per model; raise :class:`ServeError` naming the first that answers wrongly.

    Returns the models that were warmed up; a model whose inputs cannot be made up (BYTES
    other than ``images`` and ``texts``, variable dims) is skipped with a log line.
    ``headers`` go with every request (the key of ``--http-restricted-api``).
    """
    extra = dict(headers or {})
    warmed: list[str] = []
    for model in models:
        try:
            body, _ = _request(
                http_url + config_path(model), data=None, headers=extra, timeout_s=timeout_s
            )
            config = parse_model_config(body)
        except (urllib.error.URLError, OSError, TritonVisionError) as exc:
            raise ServeError(f"model {model!r}: cannot read its config: {exc}") from exc
        inputs = [_sample_input(config, t.name, t.datatype, t.dims) for t in config.inputs]
        ready = [i for i in inputs if i is not None]
        if len(ready) != len(inputs) or not ready:
            logger.info("model %s not warmed up: cannot make up all of its inputs", model)
            continue
        request = build_infer_request(ready, [t.name for t in config.outputs])
        try:
            body, answer_headers = _request(
                http_url + infer_path(model),
                data=request.body,
                headers={**request.headers, **extra},
                timeout_s=timeout_s,
            )
            length = answer_headers.get(HEADER_LENGTH_HEADER.lower())
            response = parse_infer_response(body, header_length=int(length) if length else None)
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:500]
            raise ServeError(f"model {model!r} failed its warm-up inference: {detail}") from exc
        except (urllib.error.URLError, OSError, ValueError, TritonVisionError) as exc:
            raise ServeError(f"model {model!r} failed its warm-up inference: {exc}") from exc
        for output in config.outputs:
            expected = (1, *output.dims) if config.max_batch_size > 0 else output.dims
            got = response.outputs.get(output.name)
            shape = None if got is None else tuple(int(d) for d in got.shape)
            if shape is None or not _shape_ok(shape, expected):
                raise ServeError(
                    f"model {model!r} answered its warm-up inference with output "
                    f"{output.name!r} of shape {shape}, expected {expected} "
                    "(-1: any size); its backend is broken in this environment"
                )
        warmed.append(model)
    return warmed
