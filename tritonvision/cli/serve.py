"""``tritonvision serve``: run the local Triton until Ctrl-C / SIGTERM.

The server never outlives this command: if it is killed, even by SIGKILL, a watchdog
stops ``tritonserver`` and its python-backend stubs within seconds and frees the ports
(see :mod:`tritonvision.serve._watchdog`). A clean stop removes the work dir it made in
the temp dir, the Triton log with it unless ``--log-file`` puts the log elsewhere.

``--cache-size BYTES`` gives Triton its local response cache (``--cache-config
local,size=BYTES``): plain bytes, or with a binary suffix, ``64M`` / ``64MiB`` = 64 x 2**20
bytes (``K``, ``M``, ``G``). Only models exported with ``tritonvision export
--response-cache`` use it; serve warns when the repository and the server disagree.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import threading
from types import FrameType

from ._common import EXIT_FAILED, EXIT_OK, SubParsers, positive_float, positive_int

__all__ = ["byte_size", "register", "run"]

_BYTE_SIZE = re.compile(r"(\d+)\s*(?:([KMG])(?:iB)?)?", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def byte_size(text: str) -> int:
    """Bytes from ``1048576``, ``64M``, ``64MiB``, ``1G`` (binary units, case-insensitive)."""
    match = _BYTE_SIZE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size: give bytes, or a number with K, M or G (binary: 64M = 64 MiB)"
        )
    # Imported here: parsing other flags should not pay for the server's imports.
    from tritonvision.serve._server import MIN_CACHE_SIZE_BYTES

    value = int(match.group(1)) * _UNITS[(match.group(2) or "").upper()]
    if value < MIN_CACHE_SIZE_BYTES:
        raise argparse.ArgumentTypeError(
            f"{text!r}: Triton's local cache needs at least {MIN_CACHE_SIZE_BYTES} bytes"
        )
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)")
    return value


def register(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run a real Triton Inference Server on this machine (no Docker)",
        description="Serve a model repository with the tritonserver from the nvidia-pytriton "
        "wheel. ONNX models run through ONNX Runtime inside the python backend, on the CPU "
        "or (--device gpu) with ONNX Runtime's CUDA provider. "
        "Triton stops with this command, however it ends.",
    )
    parser.add_argument("--repository", default="model_repository", help="model repository")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--http-port", type=_port, default=8000)
    parser.add_argument("--grpc-port", type=_port, default=8001)
    parser.add_argument("--metrics-port", type=_port, default=8002)
    parser.add_argument(
        "--ready-timeout", type=positive_float, default=300.0, help="seconds to wait"
    )
    parser.add_argument(
        "--cpu-instances",
        type=positive_int,
        default=2,
        help="python-backend instances per ONNX model; cores are split between them (default 2)",
    )
    parser.add_argument(
        "--queue-delay-us",
        type=int,
        default=0,
        help="dynamic-batching queue delay of the ONNX models on CPU (default 0: batch only "
        "what queued while busy); -1 keeps the repository's value",
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "gpu"),
        default="auto",
        help="auto (default): the GPU when one is visible and onnxruntime-gpu offers CUDA, "
        "else the CPU; gpu fails at start naming what is missing",
    )
    parser.add_argument(
        "--cache-size",
        type=byte_size,
        default=None,
        metavar="BYTES",
        help="give Triton a local response cache of this size (bytes, or 64M, 1G: binary "
        "units) for the models exported with --response-cache: a repeated image is answered "
        "from memory (default: no cache)",
    )
    parser.add_argument("--log-verbose", type=int, default=0)
    parser.add_argument(
        "--log-file",
        metavar="PATH",
        default=None,
        help="write Triton's log here and keep it (default: in the work dir, removed on stop)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Imported here: `tritonvision --help` should not pay for tritonclient/protobuf.
    from tritonvision.serve import (
        LocalTriton,
        RepositoryError,
        ServeError,
        ServerPorts,
        TritonBinaryNotFound,
    )

    server = LocalTriton(
        args.repository,
        ports=ServerPorts(http=args.http_port, grpc=args.grpc_port, metrics=args.metrics_port),
        host=args.host,
        log_path=args.log_file,
        log_verbose=args.log_verbose,
        cpu_instances=args.cpu_instances,
        queue_delay_us=None if args.queue_delay_us < 0 else args.queue_delay_us,
        device=args.device,
        cache_size_bytes=args.cache_size,
    )
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        server.start(ready_timeout_s=args.ready_timeout)
    except (ServeError, TritonBinaryNotFound, RepositoryError) as exc:
        print(f"tritonvision serve: {exc}", file=sys.stderr)
        if args.log_file is None:
            print("(rerun with --log-file PATH to keep Triton's full log)", file=sys.stderr)
        return EXIT_FAILED
    print(f"Triton ready (log: {server.log_path})")
    if server.device_plan is not None:
        print(f"  device   {server.device_plan.device} ({server.device_plan.reason})")
    if args.log_file is None:
        print("  the log is removed on stop; --log-file PATH keeps it")
    print(f"  HTTP     {server.http_url}")
    print(f"  gRPC     {server.grpc_url}")
    print(f"  metrics  {server.metrics_url}")
    if args.cache_size is not None:
        print(f"  cache    local, {args.cache_size:,} bytes")
    if server.cache_warning:
        print(f"warning: {server.cache_warning}", file=sys.stderr)
    sys.stdout.flush()
    try:
        while not stop.wait(0.5):
            if not server.running:
                print(
                    "tritonserver exited unexpectedly:\n" + server.failure_reason(),
                    file=sys.stderr,
                )
                return EXIT_FAILED
    finally:
        server.stop()
    print("Triton stopped")
    return EXIT_OK
