"""Run the real Triton Inference Server on this machine, no Docker.

:class:`LocalTriton` derives the CPU runtime repository, starts the wheel's
``tritonserver`` in its own process group, waits for ``/v2/health/ready`` and stops it
(and every python-backend stub it spawned) on ``stop()``. Start-up failures come back
as :class:`ServeError` carrying Triton's own reason.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from ._binary import find_triton
from ._runtime_repo import (
    DEFAULT_CPU_INSTANCES,
    DEFAULT_CPU_QUEUE_DELAY_US,
    derive_runtime_repository,
)

__all__ = [
    "DEFAULT_PORTS",
    "LocalTriton",
    "ServeError",
    "ServerPorts",
    "free_port",
    "stub_shm_regions",
]

logger = logging.getLogger(__name__)


class ServeError(RuntimeError):
    """The local Triton could not be started or failed while starting."""


@dataclass(frozen=True)
class ServerPorts:
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002


DEFAULT_PORTS = ServerPorts()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for tests and ``--http-port 0``)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_in_use(port: int, host: str) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def stub_shm_regions(server_pid: int) -> list[Path]:
    """Shared-memory files of the python-backend stubs in a server's process group.

    A stub removes its region when it exits cleanly; after a SIGKILL the file stays in
    /dev/shm (about 1 MB each), so :meth:`LocalTriton.stop` collects the names first.
    """
    regions = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getpgid(int(entry)) != server_pid:
                continue
            args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except (OSError, ProcessLookupError):
            continue
        regions.extend(
            Path("/dev/shm") / arg.decode()
            for arg in args
            if arg.startswith(b"triton_python_backend_shm_region")
        )
    return regions


_ERROR_LINE = re.compile(r"^E\d{4} |failed to load|error:|Error:", re.IGNORECASE)


class LocalTriton:
    """A real ``tritonserver`` serving a model repository on this machine.

    Example::

        with LocalTriton("model_repository") as server:
            print(server.http_url)   # http://127.0.0.1:8000
    """

    def __init__(
        self,
        repository: str | os.PathLike[str] = "model_repository",
        *,
        ports: ServerPorts = DEFAULT_PORTS,
        host: str = "127.0.0.1",
        workdir: str | os.PathLike[str] | None = None,
        log_verbose: int = 0,
        extra_args: tuple[str, ...] = (),
        cpu_instances: int | None = DEFAULT_CPU_INSTANCES,
        queue_delay_us: int | None = DEFAULT_CPU_QUEUE_DELAY_US,
    ) -> None:
        self.repository = Path(repository)
        self.ports = ports
        self.host = host
        self.log_verbose = log_verbose
        self.extra_args = extra_args
        self.cpu_instances = cpu_instances
        self.queue_delay_us = queue_delay_us
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="tritonvision-serve-"))
        self.log_path = self.workdir / "tritonserver.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: object | None = None

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.ports.http}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://{self.host}:{self.ports.grpc}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.ports.metrics}/metrics"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def start(self, ready_timeout_s: float = 180.0) -> LocalTriton:
        """Start the server and wait until it is ready; raise :class:`ServeError` on failure."""
        if self._process is not None:
            raise ServeError("server already started")
        for name, port in (
            ("HTTP", self.ports.http),
            ("gRPC", self.ports.grpc),
            ("metrics", self.ports.metrics),
        ):
            if _port_in_use(port, self.host):
                raise ServeError(
                    f"{name} port {port} is already in use on {self.host}; "
                    f"pick another with --{name.lower()}-port"
                )
        dist = find_triton()
        runtime = derive_runtime_repository(
            self.repository,
            self.workdir / "runtime_repository",
            cpu_instances=self.cpu_instances,
            queue_delay_us=self.queue_delay_us,
        )
        logger.info("runtime repository %s: models %s", runtime.path, ", ".join(runtime.models))
        cmd = [
            str(dist.binary),
            f"--model-repository={runtime.path}",
            f"--backend-directory={dist.backend_dir}",
            f"--http-address={self.host}",
            f"--http-port={self.ports.http}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.ports.grpc}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.ports.metrics}",
            "--allow-gpu-metrics=false",
            "--allow-cpu-metrics=true",
            f"--log-verbose={self.log_verbose}",
            "--exit-timeout-secs=10",
            *self.extra_args,
        ]
        log_file = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the server
        self._log_file = log_file
        # Own process group: stop() can reach the python-backend stubs too.
        self._process = subprocess.Popen(
            cmd,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dist.environment(),
            start_new_session=True,
        )
        try:
            self._wait_ready(ready_timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        assert self._process is not None
        deadline = time.monotonic() + timeout_s
        url = f"{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                reason = self._failure_reason()
                raise ServeError(f"tritonserver exited with code {code} while starting:\n{reason}")
            with (
                contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError),
                urllib.request.urlopen(url, timeout=2) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.25)
        raise ServeError(
            f"tritonserver was not ready after {timeout_s:.0f}s:\n{self._failure_reason()}"
        )

    def _failure_reason(self) -> str:
        lines = [ln for ln in self.log_text().splitlines() if _ERROR_LINE.search(ln)]
        lines = [
            ln for ln in lines if not any(k in ln for k in ("NVML", "DCGM", "CudaDriverHelper"))
        ]
        states = self._model_states()
        if states:
            lines.append(states)
        return "\n".join(lines[-20:]) or f"(no error lines; full log: {self.log_path})"

    def _model_states(self) -> str:
        req = urllib.request.Request(
            f"{self.http_url}/v2/repository/index", method="POST", data=b"{}"
        )
        try:
            with urllib.request.urlopen(req, timeout=2) as response:
                index = json.loads(response.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
            return ""
        bad = [m for m in index if m.get("state") != "READY"]
        return "\n".join(f"model {m['name']}: {m.get('state')} {m.get('reason', '')}" for m in bad)

    def stop(self, timeout_s: float = 20.0) -> None:
        """Stop the server and its python-backend stubs. Safe to call twice."""
        process, self._process = self._process, None
        if process is not None:
            regions = stub_shm_regions(process.pid)
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    process.wait(timeout=5)
            # Stubs exit when their parent goes, but not at once: don't leave them orphaned.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            for region in regions:  # already gone after a clean exit
                region.unlink(missing_ok=True)
        if self._log_file is not None:
            self._log_file.close()  # type: ignore[attr-defined]
            self._log_file = None

    def __enter__(self) -> LocalTriton:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
