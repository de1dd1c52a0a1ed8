"""Run tritonvision's benchmarks: the scenarios, side by side, the machine named and measured.

``tritonvision bench`` (``make bench``, ``make bench-quick``, ``python -m
tritonvision.bench``) parses its options in :mod:`tritonvision.cli.bench` and calls
:func:`run_benchmarks`. Each scenario is one module ``scenario_N_*`` of this package with
``SCENARIO = Scenario(number, title, run)``; ``run(ctx)`` emits rows through the
:class:`~._context.Context` as it measures them.
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import json
import shutil
import subprocess
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from . import (
    scenario_1_runtime,
    scenario_2_perf_analyzer,
    scenario_3_batching,
    scenario_4_transports,
    scenario_5_preprocess,
    scenario_6_stack,
    scenario_7_ray,
    scenario_8_overload,
    scenario_9_cache,
    scenario_10_texts,
)
from ._context import Context, Scenario
from ._machine import LoadProbe, MachineLoad, machine_info
from ._perf_analyzer import find_perf_analyzer
from ._report import ScenarioResult, markdown_report

__all__ = ["SCENARIOS", "parse_scenarios", "run_benchmarks", "setup_perf_analyzer"]

SCENARIOS: dict[int, Scenario] = {
    s.number: s
    for s in (
        scenario_1_runtime.SCENARIO,
        scenario_2_perf_analyzer.SCENARIO,
        scenario_3_batching.SCENARIO,
        scenario_4_transports.SCENARIO,
        scenario_5_preprocess.SCENARIO,
        scenario_6_stack.SCENARIO,
        scenario_7_ray.SCENARIO,
        scenario_8_overload.SCENARIO,
        scenario_9_cache.SCENARIO,
        scenario_10_texts.SCENARIO,
    )
}

_PREAMBLE = (
    "**Models**: the built-in default encoder (CLIP ViT-B/32 shape, seeded untrained "
    "weights: speed is what matters here) and a tiny CLIP (224 px input, 2 layers of width "
    "32) whose compute is negligible, so it exposes client, transport and server overheads. "
    "Texts (scenario 10): a two-tower CLIP built by the bench with the ViT-B/32 text tower's "
    "shape (width 512, 12 layers, context 77, d=512, seeded untrained) and a byte-level BPE "
    "tokenizer, exported with `export --text`.",
    "**Server**: the embedded `tritonserver` {version} of the nvidia-pytriton wheel; the ONNX "
    "encoder runs through ONNX Runtime in Triton's python backend (`tritonvision serve`'s "
    "CPU runtime repository).",
)


def parse_scenarios(text: str | None) -> list[int]:
    """Scenario numbers from ``"1,3"``; all of them for ``None`` or ``""``."""
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


def setup_perf_analyzer(cache_dir: Path) -> tuple[Path | None, str]:
    """Download and set up perf_analyzer once: ``(binary, "")`` or ``(None, reason)``."""
    pa, reason = find_perf_analyzer(allow_download=True, cache_dir=cache_dir)
    return (pa.binary if pa else None), reason


def _revision(root: Path) -> str:
    try:
        proc = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""


def _run_scenarios(ctx: Context, numbers: Sequence[int]) -> None:
    out = ctx.out
    for number in numbers:
        scenario = SCENARIOS[number]
        result = ScenarioResult(number=number, title=scenario.title, rows=[])
        ctx.results.append(result)
        out(f"\n== {number}. {scenario.title} -- machine: {ctx.machine.describe()}")
        t0 = time.perf_counter()
        try:
            scenario.run(ctx)
        except Exception as exc:
            # One scenario failing must not cost the others: record it, report it, go on.
            result.error = f"{type(exc).__name__}: {exc}"
            out(f"  !! scenario {number} failed: {result.error}")
            buf = io.StringIO()
            traceback.print_exc(file=buf)
            out(buf.getvalue())
        result.elapsed_s = time.perf_counter() - t0


def run_benchmarks(
    *,
    quick: bool,
    scenarios: Sequence[int],
    cache_dir: Path,
    output: Path | None = None,
    json_path: Path | None = None,
    measure_s: float | None = None,
    command: str = "tritonvision bench",
    out: Callable[[str], None] = print,
) -> list[ScenarioResult]:
    """Run the chosen scenarios; write the Markdown report and/or JSON if asked.

    Quick mode never downloads anything (perf_analyzer is used only if already set up).
    """
    machine = machine_info()
    probe = LoadProbe()
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
    out(f"tritonvision bench ({'quick' if quick else 'full'}) on {machine.describe()}")
    out(f"  {machine.software()}")
    try:
        _run_scenarios(ctx, scenarios)
    finally:
        ctx.stop_servers()
        shutil.rmtree(workdir, ignore_errors=True)
    load = probe.finish()
    out(f"\ndone in {load.wall_s:.0f} s; machine load: {load.describe()}")
    if output is not None:
        output.write_text(_markdown(ctx, load, command=command))
        out(f"wrote {output}")
    if json_path is not None:
        doc = {
            "quick": quick,
            "machine": dataclasses.asdict(machine),
            "load": dataclasses.asdict(load),
            "command": command,
            "total_s": load.wall_s,
            "scenarios": [r.to_dict() for r in ctx.results],
        }
        json_path.write_text(json.dumps(doc, indent=2))
    return ctx.results


def _markdown(ctx: Context, load: MachineLoad, *, command: str) -> str:
    return markdown_report(
        ctx.results,
        machine=ctx.machine.describe(),
        load=load.describe(),
        software=ctx.machine.software(),
        command=command,
        when=datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        revision=_revision(Path(__file__).resolve().parent.parent),
        quick=ctx.quick,
        total_s=load.wall_s,
        preamble=[p.format(version=ctx.server_version or "?") for p in _PREAMBLE],
    )
