"""``tritonvision bench``: run the benchmarks in the source tree's ``bench/`` folder.

``bench/`` is a folder of scripts, not part of the installed package, so this finds it
next to the package (an editable or source checkout) or under the working directory,
puts it on ``sys.path`` and hands over to ``bench/run.py``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_bench_arguments", "add_bench_parser", "find_bench_dir"]


def find_bench_dir() -> Path | None:
    """The ``bench/`` folder of the checkout this package runs from, or of the CWD."""
    package_root = Path(__file__).resolve().parent.parent
    for candidate in (package_root / "bench", Path.cwd() / "bench"):
        if (candidate / "run.py").is_file():
            return candidate
    return None


def _load_runner() -> Any:
    bench_dir = find_bench_dir()
    if bench_dir is None:
        raise SystemExit(
            "tritonvision bench: no bench/ folder found; run it from a source checkout "
            "of tritonvision (e.g. `make bench` in the repository)"
        )
    if str(bench_dir) not in sys.path:
        sys.path.insert(0, str(bench_dir))
    return importlib.import_module("run")


def add_bench_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="measure tritonvision against its baselines (ratios, side by side)",
        description=(
            "Run the benchmark scenarios of bench/ and print one row per comparison: "
            "both sides, their ratio, p50/p99 latency, machine, model and settings. "
            "--quick runs every scenario briefly on a tiny encoder."
        ),
    )
    add_bench_arguments(parser)
    parser.set_defaults(func=_run)


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``tritonvision bench`` (and of ``python bench/run.py``)."""
    parser.add_argument("--quick", action="store_true", help="every scenario briefly, tiny encoder")
    parser.add_argument(
        "--output", type=Path, help="write the results as Markdown (e.g. BENCHMARKS.md)"
    )
    parser.add_argument("--json", type=Path, dest="json_path", help="also write JSON results")
    parser.add_argument("--scenarios", help="comma-separated scenario numbers, e.g. 1,3")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="where exported encoders are cached (default ~/.cache/tritonvision)",
    )
    parser.add_argument(
        "--measure-s",
        type=float,
        help="seconds per side per round (default 4, quick 0.5); for development",
    )
    parser.add_argument(
        "--setup",
        action="store_true",
        help="only set up perf_analyzer (downloads the tritonclient 2.41.0 wheel once)",
    )


def _run(args: argparse.Namespace) -> int:
    runner = _load_runner()
    return int(runner.run_from_args(args))
