"""Package attributes loaded on first use (PEP 562), for ``__init__`` modules that must stay light.

The python-backend models import ``tritonvision.client._imaging`` and
``tritonvision.serve.backends`` inside Triton's stub, where only numpy and Pillow are
installed; importing those submodules runs their packages' ``__init__``, so the packages
load the rest of their public API only when an attribute is first read.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

__all__ = ["lazy_attributes"]


def lazy_attributes(
    namespace: MutableMapping[str, Any], exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for a package whose ``exports`` map name -> submodule.

    ``namespace`` is the package's ``globals()``: a loaded attribute is stored there, so
    later reads do not come back here.
    """
    package = str(namespace["__name__"])

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
