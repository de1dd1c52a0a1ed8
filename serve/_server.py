"""Run the real Triton Inference Server on this machine, no Docker.

:class:`LocalTriton` derives the CPU runtime repository, starts the wheel's
``tritonserver`` behind a watchdog (:mod:`._watchdog`) and waits for ``/v2/health/ready``,
then proves each model answers (:func:`._preflight.warm_up`). ``stop()`` stops it with every
python-backend stub it spawned and removes its work dir (:mod:`._workdir`); so does the
watchdog when the owner process dies without calling ``stop()``, even by SIGKILL.
Start-up failures come back as :class:`ServeError` carrying Triton's own reason.

Response cache: ``cache_size_bytes`` starts Triton with its local cache (``--cache-config
local,size=N``, the library the wheel ships). Triton caches only models whose config
enables ``response_cache`` (``tritonvision export --response-cache``). A repository that
asks for the cache served without one loads and answers normally, uncached, and Triton says
nothing; so ``start()`` logs a warning, and :attr:`LocalTriton.cache_warning` holds it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from . import _watchdog
from ._binary import find_triton
from ._device import DevicePlan, DeviceProbe, probe_device, resolve_device
from ._errors import ServeError
from ._preflight import check_stub_environment, restricted_api_headers, warm_up
from ._runtime_repo import (
    DEFAULT_CPU_INSTANCES,
    DEFAULT_CPU_QUEUE_DELAY_US,
    derive_runtime_repository,
)
from ._workdir import OWNER_FILE, claim_workdir, create_workdir, remove_dead_leftovers

__all__ = [
    "DEFAULT_PORTS",
    "MIN_CACHE_SIZE_BYTES",
    "LocalTriton",
    "ServeError",
    "ServerPorts",
    "free_port",
    "stub_shm_regions",
]

logger = logging.getLogger(__name__)

# Triton's own grace for in-flight requests (--exit-timeout-secs) plus time to unload.
_EXIT_TIMEOUT_S = 10
_STOP_GRACE_S = 20.0
# ONNX Runtime's TensorRT engines (GPU with tensorrt installed), kept for this server's life.
_TENSORRT_CACHE = "tensorrt_cache"
# Triton's local cache fails to initialise below about 1 KiB (its docs say so; 100 bytes
# fails, "Could not initialize buffer"): refuse such sizes before starting.
MIN_CACHE_SIZE_BYTES = 1024
# Server flags that configure a response cache (ours, or given through extra_args).
_CACHE_FLAGS = ("--cache-config", "--response-cache-byte-size")


@dataclass(frozen=True)
class ServerPorts:
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002


DEFAULT_PORTS = ServerPorts()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for tests)."""
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
    /dev/shm (about 1 MB each). :class:`LocalTriton` removes its own by name prefix; this
    finds the regions of any server by its process group.
    """
    regions: list[Path] = []
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
            _watchdog.SHM_DIR / arg.decode()
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

    The server never outlives this process: it runs behind a watchdog that stops it, with
    its stubs, and removes the work dir when this process exits without ``stop()``.
    ``log_path`` keeps Triton's log at a path of your choice; by default it lives in the
    work dir and goes with it (a ``workdir`` you give is yours: only what the server made
    in it is removed, the log stays). ``warm_up=False`` skips the warm-up inferences.
    ``device`` is ``cpu`` (default), ``gpu`` or ``auto`` (see :mod:`._device`); ``gpu``
    on a machine that cannot run it raises :class:`._device.DeviceUnavailable` at start.
    ``cache_size_bytes`` (at least :data:`MIN_CACHE_SIZE_BYTES`) gives Triton a local
    response cache of that size, shared by the models whose config enables it.
    """

    def __init__(
        self,
        repository: str | os.PathLike[str] = "model_repository",
        *,
        ports: ServerPorts = DEFAULT_PORTS,
        host: str = "127.0.0.1",
        workdir: str | os.PathLike[str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        log_verbose: int = 0,
        extra_args: tuple[str, ...] = (),
        cpu_instances: int | None = DEFAULT_CPU_INSTANCES,
        queue_delay_us: int | None = DEFAULT_CPU_QUEUE_DELAY_US,
        warm_up: bool = True,
        device: str = "cpu",
        cache_size_bytes: int | None = None,
    ) -> None:
        if cache_size_bytes is not None and cache_size_bytes < MIN_CACHE_SIZE_BYTES:
            raise ValueError(
                f"cache_size_bytes={cache_size_bytes!r}: Triton's local cache needs at least "
                f"{MIN_CACHE_SIZE_BYTES} bytes"
            )
        self.cache_size_bytes = cache_size_bytes
        self.cache_warning: str | None = None
        """Set at start when the cache settings of server and models disagree."""
        self.repository = Path(repository)
        self.ports = ports
        self.host = host
        self.log_verbose = log_verbose
        self.extra_args = extra_args
        self.cpu_instances = cpu_instances
        self.queue_delay_us = queue_delay_us
        self._warm_up = warm_up
        self.device = device
        self.device_plan: DevicePlan | None = None
        """What ``device`` resolved to at start (``auto`` -> cpu or gpu, with the reason)."""
        self._given_workdir = Path(workdir) if workdir is not None else None
        self._given_log_path = Path(log_path) if log_path is not None else None
        self.workdir: Path | None = self._given_workdir
        """The work dir, once started (a fresh ``tritonvision-serve-*`` temp dir by default)."""
        self.log_path: Path | None = self._given_log_path
        """Triton's log, once started."""
        self._supervised: _watchdog.Supervised | None = None
        self._shm_prefix = ""
        self._created: list[Path] = []

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
        """``tritonserver``'s pid, which is also its process group id (the stubs' group)."""
        return self._supervised.pid if self._supervised is not None else None

    @property
    def running(self) -> bool:
        return self._supervised is not None and self._supervised.exit_code() is None

    def log_text(self) -> str:
        if self.log_path is None:
            return ""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def start(self, ready_timeout_s: float = 180.0) -> LocalTriton:
        """Start the server and wait until it is ready; raise :class:`ServeError` on failure.

        Refuses at once when a port is taken or the environment cannot run the python
        backend (:func:`._preflight.check_stub_environment`); with ``warm_up`` each model
        must answer one inference with the declared output shapes before this returns.
        """
        if self._supervised is not None:
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
        cache_args = self._cache_args(dist.binary)
        check_stub_environment()
        # `cpu` needs no look at the machine (nvidia-smi can take a second).
        plan = resolve_device(
            self.device, probe_device() if self.device != "cpu" else DeviceProbe()
        )
        self.device_plan = plan
        logger.info("device %s (%s)", plan.device, plan.reason)
        remove_dead_leftovers()  # logs what it removes
        if self._given_workdir is None:
            workdir, record = create_workdir()
            self._created = [workdir]
        else:
            workdir = self._given_workdir
            workdir.mkdir(parents=True, exist_ok=True)
            record = claim_workdir(workdir)
            made: tuple[str, ...] = ("runtime_repository", "tmp", OWNER_FILE)
            if plan.tensorrt:
                made += (_TENSORRT_CACHE,)
            self._created = [workdir / name for name in made]
        self.workdir = workdir
        self._shm_prefix = record.shm_prefix
        self.log_path = self._given_log_path or workdir / "tritonserver.log"
        try:
            runtime = derive_runtime_repository(
                self.repository,
                workdir / "runtime_repository",
                cpu_instances=self.cpu_instances,
                queue_delay_us=self.queue_delay_us,
                device=plan.device,
                tensorrt_cache=workdir / _TENSORRT_CACHE if plan.tensorrt else None,
            )
        except BaseException:
            _watchdog.remove_paths(self._created)
            raise
        if plan.tensorrt:
            (workdir / _TENSORRT_CACHE).mkdir(exist_ok=True)
        logger.info("runtime repository %s: models %s", runtime.path, ", ".join(runtime.models))
        self.cache_warning = self._check_cache(runtime.cached)
        if self.cache_warning:
            logger.warning("%s", self.cache_warning)
        cmd = [
            str(dist.binary),
            f"--model-repository={runtime.path}",
            f"--backend-directory={dist.backend_dir}",
            f"--backend-config=python,shm-region-prefix-name={record.shm_prefix}",
            f"--http-address={self.host}",
            f"--http-port={self.ports.http}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.ports.grpc}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.ports.metrics}",
            "--allow-gpu-metrics=false",
            "--allow-cpu-metrics=true",
            f"--log-verbose={self.log_verbose}",
            f"--exit-timeout-secs={_EXIT_TIMEOUT_S}",
            *cache_args,
            *self.extra_args,
        ]
        env = dist.environment()
        # What the server's processes put in the temp dir (ONNX Runtime writes a file there)
        # lives and goes with the work dir.
        tmp = workdir / "tmp"
        tmp.mkdir(exist_ok=True)
        env["TMPDIR"] = str(tmp)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(self.log_path, "wb") as log:
                self._supervised = _watchdog.Supervised.start(
                    cmd,
                    log=log,
                    env=env,
                    shm_prefix=record.shm_prefix,
                    remove=self._created,
                    grace_s=_STOP_GRACE_S,
                )
        except _watchdog.SupervisorError as exc:
            reason = self.failure_reason()
            _watchdog.remove_paths(self._created)
            raise ServeError(f"tritonserver could not be started: {exc}\n{reason}") from None
        except BaseException:
            _watchdog.remove_paths(self._created)
            raise
        try:
            self._wait_ready(ready_timeout_s)
            if self._warm_up:
                headers = restricted_api_headers(self.extra_args)
                warmed = warm_up(self.http_url, runtime.models, headers=headers)
                logger.info("warm-up inference answered by %s", ", ".join(warmed) or "no model")
        except BaseException:
            self.stop()
            raise
        return self

    def _cache_args(self, binary: Path) -> list[str]:
        if self.cache_size_bytes is None:
            return []
        # The wheel ships its caches next to bin/ (tritonserver looks in /opt by default).
        caches = binary.parent.parent / "caches"
        if not (caches / "local" / "libtritoncache_local.so").exists():
            raise ServeError(f"Triton's local response cache is missing from the wheel: {caches}")
        return [
            f"--cache-directory={caches}",
            f"--cache-config=local,size={self.cache_size_bytes}",
        ]

    def _check_cache(self, cached: tuple[str, ...]) -> str | None:
        """A warning when the models ask for a cache the server lacks, or the reverse."""
        configured = self.cache_size_bytes is not None or any(
            arg.split("=", 1)[0] in _CACHE_FLAGS for arg in self.extra_args
        )
        if cached and not configured:
            return (
                f"models {', '.join(cached)} enable Triton's response cache, but the server "
                "has no cache: Triton serves them uncached (it does not warn). Give it one "
                "with --cache-size BYTES (LocalTriton(cache_size_bytes=...))"
            )
        if configured and not cached:
            return (
                "the server has a response cache, but no model in "
                f"{self.repository} enables it: nothing is cached. Re-export with "
                "`tritonvision export --response-cache`"
            )
        return None

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        url = f"{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            code = self._supervised.exit_code() if self._supervised else None
            if code is not None:
                reason = self.failure_reason()
                raise ServeError(f"tritonserver exited with code {code} while starting:\n{reason}")
            with (
                contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError),
                urllib.request.urlopen(url, timeout=2) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.25)
        raise ServeError(
            f"tritonserver was not ready after {timeout_s:.0f}s:\n{self.failure_reason()}"
        )

    def failure_reason(self) -> str:
        """Triton's error lines and the models that are not ready: why it failed."""
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

    def stop(self, timeout_s: float = _STOP_GRACE_S) -> None:
        """Stop the server and its python-backend stubs, remove the work dir. Safe twice.

        The watchdog sends SIGTERM, gives Triton its grace, then SIGKILLs the process
        group; we wait ``timeout_s`` beyond that grace before doing its job ourselves.
        """
        supervised, self._supervised = self._supervised, None
        if supervised is None:
            return
        try:
            supervised.stop(timeout_s=_STOP_GRACE_S + timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("the serve watchdog did not stop in time; killed the server")
        # Already done by the watchdog, unless it hung or was killed itself.
        _watchdog.unlink_shm_regions(self._shm_prefix)
        _watchdog.remove_paths(self._created)

    def __enter__(self) -> LocalTriton:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
