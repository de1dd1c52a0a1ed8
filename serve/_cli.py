"""``tritonvision serve``: run the local Triton until Ctrl-C / SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType


def add_serve_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run a real Triton Inference Server on this machine (no Docker)",
        description="Serve a model repository with the tritonserver from the nvidia-pytriton "
        "wheel. ONNX models run through ONNX Runtime inside the python backend on CPU.",
    )
    parser.add_argument("--repository", default="model_repository", help="model repository")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to wait")
    parser.add_argument(
        "--cpu-instances",
        type=int,
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
    parser.add_argument("--log-verbose", type=int, default=0)
    parser.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    # Imported here: `tritonvision --help` should not pay for tritonclient/protobuf.
    from ._binary import TritonBinaryNotFound
    from ._runtime_repo import RepositoryError
    from ._server import LocalTriton, ServeError, ServerPorts

    server = LocalTriton(
        args.repository,
        ports=ServerPorts(http=args.http_port, grpc=args.grpc_port, metrics=args.metrics_port),
        host=args.host,
        log_verbose=args.log_verbose,
        cpu_instances=args.cpu_instances,
        queue_delay_us=None if args.queue_delay_us < 0 else args.queue_delay_us,
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
        return 1
    print(f"Triton ready (log: {server.log_path})")
    print(f"  HTTP     {server.http_url}")
    print(f"  gRPC     {server.grpc_url}")
    print(f"  metrics  {server.metrics_url}")
    sys.stdout.flush()
    try:
        while not stop.wait(0.5):
            if not server.running:
                print(
                    "tritonserver exited unexpectedly; see " + str(server.log_path), file=sys.stderr
                )
                return 1
    finally:
        server.stop()
    print("Triton stopped")
    return 0
