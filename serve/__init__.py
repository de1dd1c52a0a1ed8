"""The embedded local Triton: the real ``tritonserver`` from PyPI's nvidia-pytriton wheel.

Modules: ``_binary`` finds the wheel's server; ``_runtime_repo`` derives the CPU runtime
repository; ``_server`` is :class:`LocalTriton`; ``_watchdog`` stops the server when its
owner dies; ``_workdir`` owns the work dir and removes dead servers' leftovers;
``_preflight`` checks the environment before start and warms each model up after;
``backends/`` holds the python-backend models Triton loads. The CLI is
``tritonvision/cli/serve.py``.

Example::

    from tritonvision.serve import LocalTriton

    with LocalTriton("model_repository") as server:
        print(server.http_url)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tritonvision._lazy import lazy_attributes

# Loaded on first use (PEP 562): Triton's python-backend stub imports
# ``tritonvision.serve.backends.*``, and that must not pull in the launcher's dependencies
# (tritonclient, protobuf, packaging): the container image installs numpy and Pillow only.
_LAZY: dict[str, str] = {
    "TritonBinaryNotFound": "_binary",
    "TritonDistribution": "_binary",
    "find_triton": "_binary",
    "ServeError": "_errors",
    "check_stub_environment": "_preflight",
    "RepositoryError": "_runtime_repo",
    "RuntimeRepository": "_runtime_repo",
    "derive_runtime_repository": "_runtime_repo",
    "DEFAULT_PORTS": "_server",
    "LocalTriton": "_server",
    "ServerPorts": "_server",
    "free_port": "_server",
}

if TYPE_CHECKING:
    from ._binary import TritonBinaryNotFound, TritonDistribution, find_triton
    from ._errors import ServeError
    from ._preflight import check_stub_environment
    from ._runtime_repo import RepositoryError, RuntimeRepository, derive_runtime_repository
    from ._server import DEFAULT_PORTS, LocalTriton, ServerPorts, free_port


__getattr__, __dir__ = lazy_attributes(globals(), _LAZY)


__all__ = [
    "DEFAULT_PORTS",
    "LocalTriton",
    "RepositoryError",
    "RuntimeRepository",
    "ServeError",
    "ServerPorts",
    "TritonBinaryNotFound",
    "TritonDistribution",
    "check_stub_environment",
    "derive_runtime_repository",
    "find_triton",
    "free_port",
]
