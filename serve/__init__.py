"""The embedded local Triton: the real ``tritonserver`` from PyPI's nvidia-pytriton wheel.

Example::

    from tritonvision.serve import LocalTriton

    with LocalTriton("model_repository") as server:
        print(server.http_url)
"""

from ._binary import TritonBinaryNotFound, TritonDistribution, find_triton
from ._runtime_repo import RepositoryError, RuntimeRepository, derive_runtime_repository
from ._server import DEFAULT_PORTS, LocalTriton, ServeError, ServerPorts, free_port

__all__ = [
    "DEFAULT_PORTS",
    "LocalTriton",
    "RepositoryError",
    "RuntimeRepository",
    "ServeError",
    "ServerPorts",
    "TritonBinaryNotFound",
    "TritonDistribution",
    "derive_runtime_repository",
    "find_triton",
    "free_port",
]
