"""Find the ``tritonserver`` that ships in PyPI's ``nvidia-pytriton`` wheel; make it runnable.

The wheel keeps one python-backend stub per Python version under
``pytriton/tritonserver/python_backend_stubs/<X.Y>/``; Triton expects the stub inside
``backends/python/`` next to ``libtriton_python.so``. We assemble that backend
directory once per (pytriton version, Python version) in a cache folder instead of
copying the whole distribution like pytriton does.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

__all__ = ["TritonBinaryNotFound", "TritonDistribution", "find_triton"]


class TritonBinaryNotFound(RuntimeError):
    """``tritonserver`` is missing (``pip install 'tritonvision[serve]'``) or incomplete."""


@dataclass(frozen=True)
class TritonDistribution:
    """Where the pieces of a runnable local Triton are."""

    binary: Path
    backend_dir: Path
    libs_dir: Path
    version: str

    def environment(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for ``tritonserver``: bundled libs, our libpython and ``python``.

        The stub embeds Python and runs the backend models with whatever ``python``
        comes first on PATH, so this interpreter's bin dir goes first: the models then
        see the same site-packages (numpy, pillow, onnxruntime, tritonvision) as we do.
        """
        env = dict(os.environ if base is None else base)
        lib_dirs = [str(self.libs_dir)]
        libpython_dir = sysconfig.get_config_var("LIBDIR")
        if libpython_dir:
            lib_dirs.append(str(libpython_dir))
        if env.get("LD_LIBRARY_PATH"):
            lib_dirs.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(lib_dirs)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        return env


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tritonvision"


def find_triton(cache_dir: Path | None = None) -> TritonDistribution:
    """Find the wheel's ``tritonserver`` and assemble a backend directory for this Python.

    Raises :class:`TritonBinaryNotFound` with an install hint when something is missing.
    """
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonBinaryNotFound(
            "tritonserver not found: the 'nvidia-pytriton' package is not installed. "
            "Install it with: pip install 'tritonvision[serve]'"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    dist_dir = root / "tritonserver"
    binary = dist_dir / "bin" / "tritonserver"
    python_backend = dist_dir / "backends" / "python"
    pyver = f"{sys.version_info[0]}.{sys.version_info[1]}"
    stub = dist_dir / "python_backend_stubs" / pyver / "triton_python_backend_stub"
    libs_dir = root.parent / "nvidia_pytriton.libs"
    for needed, what in (
        (binary, "tritonserver binary"),
        (python_backend / "libtriton_python.so", "python backend"),
        (stub, f"python backend stub for Python {pyver}"),
    ):
        if not needed.exists():
            raise TritonBinaryNotFound(f"{what} missing from nvidia-pytriton: {needed}")
    version = metadata.version("nvidia-pytriton")

    backend_dir = (cache_dir or _cache_root()) / f"backends-pytriton{version}-py{pyver}"
    target = backend_dir / "python"
    if not (target / "triton_python_backend_stub").exists():
        tmp = backend_dir.with_name(backend_dir.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "python").mkdir(parents=True)
        for item in python_backend.iterdir():
            if item.is_file():
                shutil.copy2(item, tmp / "python" / item.name)
        shutil.copy2(stub, tmp / "python" / "triton_python_backend_stub")
        # Another process may have won the race; either result is complete.
        try:
            tmp.rename(backend_dir)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return TritonDistribution(
        binary=binary, backend_dir=backend_dir, libs_dir=libs_dir, version=version
    )
