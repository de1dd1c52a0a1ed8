"""``tritonvision bench``: measure tritonvision against its baselines, side by side.

The options are defined here once; the work is :func:`tritonvision.bench.run.run_benchmarks`
(imported when the command runs: it pulls in numpy, aiohttp and the scenarios).
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
from pathlib import Path

from tritonvision.contract import DEFAULT_CACHE_DIR

from ._common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, SubParsers, positive_float

__all__ = ["command_line", "register"]


def register(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="measure tritonvision against its baselines (ratios, side by side)",
        description=(
            "Run the benchmark scenarios and print one row per comparison: both sides, "
            "their ratio, p50/p99 latency, machine, model and settings. --quick runs every "
            "scenario briefly on a tiny encoder and never downloads anything."
        ),
    )
    parser.add_argument("--quick", action="store_true", help="every scenario briefly, tiny encoder")
    parser.add_argument(
        "--output", type=Path, help="write the results as Markdown (e.g. BENCHMARKS.md)"
    )
    parser.add_argument("--json", type=Path, dest="json_path", help="also write JSON results")
    parser.add_argument("--scenarios", help="comma-separated scenario numbers, e.g. 1,3")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=DEFAULT_CACHE_DIR,
        help="where exported encoders and perf_analyzer are cached (default %(default)s)",
    )
    parser.add_argument(
        "--measure-s",
        type=positive_float,
        help="seconds per side per round (default 4, quick 0.5); for development",
    )
    parser.add_argument(
        "--setup",
        action="store_true",
        help="only set up perf_analyzer (downloads the tritonclient 2.41.0 wheel once)",
    )
    parser.add_argument(
        "--device",
        type=Path,
        metavar="OUT",
        dest="device_out",
        help="the GPU device run (bench/device.sh calls this): export fp32 + fp16, serve with "
        "--device gpu, perf_analyzer over concurrency 1..256, client end to end; writes "
        "OUT/device.json and OUT/device.md",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="with --device: the same pipeline on CPU with small counts and the tiny encoder "
        "(no downloads)",
    )
    parser.set_defaults(func=_run)


def command_line(args: argparse.Namespace) -> str:
    """The ``tritonvision bench`` command that reproduces ``args`` (for the report)."""
    parts = ["tritonvision", "bench"]
    if args.quick:
        parts.append("--quick")
    if args.scenarios:
        parts += ["--scenarios", args.scenarios]
    if args.output:
        parts += ["--output", str(args.output)]
    if args.json_path:
        parts += ["--json", str(args.json_path)]
    if args.measure_s:
        parts += ["--measure-s", f"{args.measure_s:g}"]
    return " ".join(shlex.quote(p) for p in parts)


def _print(line: str) -> None:
    print(line, flush=True)


def _run_device(out: Path, *, dry_run: bool, cache_dir: Path) -> int:
    from tritonvision.bench._device import run_device_benchmark
    from tritonvision.serve import RepositoryError, ServeError, TritonBinaryNotFound

    command = f"tritonvision bench --device {shlex.quote(str(out))}"
    try:
        run_device_benchmark(
            out,
            dry_run=dry_run,
            cache_dir=cache_dir,
            command=command + (" --dry-run" if dry_run else ""),
            log=_print,
        )
    except (ServeError, TritonBinaryNotFound, RepositoryError) as exc:
        print(f"tritonvision bench --device: {exc}", file=sys.stderr)
        if (out / "device.json").exists():
            print(f"(what was measured before is in {out / 'device.json'})", file=sys.stderr)
        return EXIT_FAILED
    print(f"wrote {out / 'device.json'} and {out / 'device.md'}")
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    from tritonvision.bench.run import parse_scenarios, run_benchmarks, setup_perf_analyzer

    cache_dir: Path = args.cache_dir.expanduser()
    if args.dry_run and args.device_out is None:
        print("tritonvision bench: --dry-run goes with --device OUT", file=sys.stderr)
        return EXIT_USAGE
    if args.device_out is not None:
        return _run_device(args.device_out, dry_run=args.dry_run, cache_dir=cache_dir)
    if args.setup:
        binary, reason = setup_perf_analyzer(cache_dir)
        print(
            f"perf_analyzer ready: {binary}" if binary else f"perf_analyzer unavailable: {reason}"
        )
        return EXIT_OK if binary else EXIT_FAILED
    try:
        scenarios = parse_scenarios(args.scenarios)
    except ValueError as exc:
        print(f"tritonvision bench: {exc}", file=sys.stderr)
        return EXIT_USAGE
    # A closed pipe (`tritonvision bench | head`) is not a failure of the benchmarks.
    with contextlib.suppress(BrokenPipeError):
        results = run_benchmarks(
            quick=args.quick,
            scenarios=scenarios,
            cache_dir=cache_dir,
            output=args.output,
            json_path=args.json_path,
            measure_s=args.measure_s,
            command=command_line(args),
            out=_print,
        )
        return EXIT_FAILED if any(r.error for r in results) else EXIT_OK
    return EXIT_FAILED
