"""Run tritonvision's benchmarks: ``python bench/run.py [--quick] [--output BENCHMARKS.md]``.

``tritonvision bench`` (``make bench``, ``make bench-quick``) calls :func:`main` too.
Each scenario is one module ``scenario_N_*.py`` with ``NUMBER``, ``TITLE`` and
``run(ctx)``; it emits rows through the :class:`Context` as it measures them.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import io
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

from _common import (  # noqa: E402 - after the path set-up, for `python bench/run.py`
    Machine,
    Row,
    ScenarioResult,
    machine_info,
    markdown_report,
    render_row,
)
from _repos import (  # noqa: E402
    BASE,
    ENCODERS,
    FP32,
    NO_BATCHING,
    ExportedEncoder,
    ServedRepository,
    Variant,
    build_run_repository,
    exported,
)

SCENARIOS: dict[int, str] = {
    1: "scenario_1_runtime",
    2: "scenario_2_perf_analyzer",
    3: "scenario_3_batching",
    4: "scenario_4_transports",
    5: "scenario_5_preprocess",
    6: "scenario_6_stack",
}

# Serving variants compared in scenario 3's sweep (same model.onnx, other settings).
SWEEP_VARIANTS = (
    Variant("_i1", instances=1),
    Variant("_q2000", max_queue_delay_us=None),  # the exported (GPU) 2 ms delay
    Variant("_q10000", max_queue_delay_us=10_000),
    Variant("_i1q10000", instances=1, max_queue_delay_us=10_000),
    Variant("_i3", instances=3, ort_threads=1),
)
VARIANTS = (BASE, NO_BATCHING, FP32, *SWEEP_VARIANTS)


@dataclass
class Context:
    """What a scenario needs: mode, timings, encoders, servers, sample photos, output."""

    quick: bool
    machine: Machine
    workdir: Path
    cache_dir: Path | None = None
    allow_download: bool = False
    out: Callable[[str], None] = print
    results: list[ScenarioResult] = field(default_factory=list)
    _exports: dict[str, ExportedEncoder] = field(default_factory=dict)
    _served: dict[str, ServedRepository] = field(default_factory=dict)
    _photos: list[Path] | None = None
    measure_override_s: float | None = None
    server_version: str = ""

    # ---- timings: quick mode exercises every path briefly; full mode measures.

    @property
    def measure_s(self) -> float:
        if self.measure_override_s:
            return self.measure_override_s
        return 0.5 if self.quick else 4.0

    @property
    def rounds(self) -> int:
        return 1 if self.quick else 2

    def measure_for(self, key: str) -> float:
        """Seconds per side and round for an encoder: ViT-B/32 serves ~10-40 img/s on 2
        cores, so it needs longer windows than the tiny one for a stable rate and a p99."""
        return self.measure_s * (2.5 if key == "b32" else 1.0)

    @property
    def cores(self) -> int:
        return self.machine.usable_cores

    def encoders(self) -> list[str]:
        """Encoders scenarios measure: the tiny one always, ViT-B/32 unless quick."""
        return ["tiny"] if self.quick else ["b32", "tiny"]

    # ---- output

    @property
    def current(self) -> ScenarioResult:
        return self.results[-1]

    def emit(self, row: Row) -> None:
        self.current.rows.append(row)
        self.out(render_row(row))

    def note(self, text: str) -> None:
        self.current.notes.append(text)
        self.out(f"  * {text}")

    def log(self, text: str) -> None:
        self.out(f"  ... {text}")

    # ---- resources

    def exported(self, key: str) -> ExportedEncoder:
        if key not in self._exports:
            spec = ENCODERS[key]
            self.log(f"exporting/caching {spec.label}")
            self._exports[key] = exported(spec, self.cache_dir)
            if self._exports[key].export_s:
                self.log(f"exported in {self._exports[key].export_s:.0f} s (now cached)")
        return self._exports[key]

    def served(self, key: str) -> ServedRepository:
        """The encoder's run repository, served (started on first use, kept for the run)."""
        if key not in self._served:
            encoder = self.exported(key)
            threads = 1 if key == "tiny" else self.cores
            repo = build_run_repository(
                encoder, self.workdir / f"repo-{key}", VARIANTS, default_threads=threads
            )
            served = ServedRepository(repo, self.workdir / f"serve-{key}").start()
            self.log(f"tritonserver {served.version} for {key} ready in {served.start_s:.1f} s")
            self.server_version = served.version
            self._served[key] = served
        return self._served[key]

    def stop_servers(self) -> None:
        for served in self._served.values():
            served.stop()
        self._served.clear()

    def photos(self) -> list[Path]:
        """The sample photos that installed packages ship, re-encoded as JPEG quality 90."""
        if self._photos is None:
            from PIL import Image

            from tritonvision._samples import sample_photo_paths

            folder = self.workdir / "photos"
            folder.mkdir(parents=True, exist_ok=True)
            self._photos = []
            for path in sample_photo_paths():
                with Image.open(path) as img:
                    target = folder / f"{path.stem}.jpg"
                    img.convert("RGB").save(target, "JPEG", quality=90)
                self._photos.append(target)
            if not self._photos:
                raise RuntimeError("no sample photos (install matplotlib or scikit-image)")
        return self._photos


def _revision(root: Path) -> str:
    try:
        proc = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except OSError:
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""


def parse_scenarios(text: str | None) -> list[int]:
    if not text:
        return sorted(SCENARIOS)
    chosen = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or int(part) not in SCENARIOS:
            raise ValueError(f"unknown scenario {part!r}; choose from {sorted(SCENARIOS)}")
        chosen.append(int(part))
    return sorted(set(chosen))


def run_benchmarks(
    *,
    quick: bool,
    scenarios: Sequence[int],
    output: Path | None = None,
    json_path: Path | None = None,
    cache_dir: Path | None = None,
    measure_s: float | None = None,
    command: str = "tritonvision bench",
    out: Callable[[str], None] = print,
) -> list[ScenarioResult]:
    """Run the chosen scenarios; write the Markdown report and/or JSON if asked."""
    machine = machine_info()
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="tritonvision-bench-"))
    ctx = Context(
        quick=quick,
        machine=machine,
        workdir=workdir,
        cache_dir=cache_dir,
        allow_download=not quick,
        out=out,
        measure_override_s=measure_s,
    )
    mode = "quick" if quick else "full"
    out(f"tritonvision bench ({mode}) on {machine.describe()}")
    out(f"  {machine.software()}")
    try:
        for number in scenarios:
            module = importlib.import_module(SCENARIOS[number])
            result = ScenarioResult(number=number, title=module.TITLE, rows=[])
            ctx.results.append(result)
            out(f"\n== {number}. {module.TITLE} -- machine: {machine.describe()}")
            t0 = time.perf_counter()
            try:
                module.run(ctx)
            except Exception as exc:
                result.error = f"{type(exc).__name__}: {exc}"
                out(f"  !! scenario {number} failed: {result.error}")
                buf = io.StringIO()
                traceback.print_exc(file=buf)
                out(buf.getvalue())
            result.elapsed_s = time.perf_counter() - t0
    finally:
        ctx.stop_servers()
        shutil.rmtree(workdir, ignore_errors=True)
    total_s = time.perf_counter() - started
    out(f"\ndone in {total_s:.0f} s")
    if output is not None:
        root = _HERE.parent
        text = markdown_report(
            ctx.results,
            machine=machine,
            command=command,
            when=datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            revision=_revision(root),
            quick=quick,
            total_s=total_s,
            preamble=[
                "**Models**: the built-in default encoder (CLIP ViT-B/32 shape, seeded "
                "untrained weights: speed is what matters here) and a tiny CLIP "
                "(224 px input, 2 layers of width 32) whose compute is negligible, so it "
                "exposes client, transport and server overheads.",
                f"**Server**: the embedded `tritonserver` {ctx.server_version} of the "
                "nvidia-pytriton wheel; "
                "the ONNX encoder runs through ONNX Runtime in Triton's python backend "
                "(`tritonvision serve`'s CPU runtime repository).",
            ],
        )
        output.write_text(text)
        out(f"wrote {output}")
    if json_path is not None:
        json_path.write_text(
            json.dumps(
                {
                    "quick": quick,
                    "machine": machine.__dict__,
                    "command": command,
                    "total_s": total_s,
                    "scenarios": [r.to_dict() for r in ctx.results],
                },
                indent=2,
            )
        )
    return ctx.results


def command_line(args: argparse.Namespace) -> str:
    """The ``tritonvision bench`` command that reproduces ``args``."""
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


def run_from_args(args: argparse.Namespace) -> int:
    if args.setup:
        from _perf_analyzer import find_perf_analyzer

        pa, reason = find_perf_analyzer(allow_download=True)
        print(f"perf_analyzer ready: {pa.binary}" if pa else f"perf_analyzer unavailable: {reason}")
        return 0 if pa else 1
    try:
        scenarios = parse_scenarios(args.scenarios)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results = run_benchmarks(
        quick=args.quick,
        scenarios=scenarios,
        output=args.output,
        json_path=args.json_path,
        cache_dir=args.cache_dir,
        measure_s=args.measure_s,
        command=command_line(args),
        out=lambda line: print(line, flush=True),
    )
    return 1 if any(r.error for r in results) else 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from tritonvision._bench_cli import add_bench_arguments

    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__)
    add_bench_arguments(parser)
    args = parser.parse_args(argv)
    with contextlib.suppress(BrokenPipeError):
        return run_from_args(args)
    return 1


if __name__ == "__main__":
    sys.exit(main())
