"""Shared benchmark helpers: the machine, load generators, percentiles, rows and rendering.

Every comparison is measured side by side in the same run, alternating the two sides
round by round so that drift on a shared machine hits both; results are reported as
ratios (absolute numbers drift from run to run, ratios hold).
"""

from __future__ import annotations

import asyncio
import os
import platform
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Machine",
    "Measurement",
    "Row",
    "ScenarioResult",
    "Side",
    "alternate",
    "cpu_seconds_of_group",
    "fmt_ms",
    "fmt_rate",
    "machine_info",
    "markdown_report",
    "render_row",
    "run_tasks",
    "run_threads",
    "side_from",
]


# ----------------------------------------------------------------------------- machine


@dataclass(frozen=True)
class Machine:
    cpu_model: str
    cores: int
    usable_cores: int
    memory_gib: float
    python: str
    packages: dict[str, str]

    def describe(self) -> str:
        cores = f"{self.cores} cores"
        if self.usable_cores != self.cores:
            cores += f" ({self.usable_cores} usable)"
        return f"{self.cpu_model}, {cores}, {self.memory_gib:.0f} GiB RAM"

    def software(self) -> str:
        pkgs = ", ".join(f"{k} {v}" for k, v in self.packages.items())
        return f"Python {self.python}; {pkgs}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / (1024 * 1024)
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> Machine:
    cores = os.cpu_count() or 1
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = cores
    packages = {}
    for dist, label in (
        ("tritonvision", "tritonvision"),
        ("nvidia-pytriton", "nvidia-pytriton (tritonserver)"),
        ("onnxruntime", "onnxruntime"),
        ("aiohttp", "aiohttp"),
        ("pillow", "Pillow"),
        ("numpy", "numpy"),
        ("transformers", "transformers"),
    ):
        version = _version(dist)
        if version:
            packages[label] = version
    return Machine(
        cpu_model=_cpu_model(),
        cores=cores,
        usable_cores=usable,
        memory_gib=_memory_gib(),
        python=platform.python_version(),
        packages=packages,
    )


def cpu_seconds_of_group(pgid: int) -> float:
    """CPU seconds (user + system) used so far by every process in process group ``pgid``.

    ``LocalTriton`` starts tritonserver in its own group, so this covers the server and
    all its python-backend stubs. Reaped children (stubs of unloaded models) count through
    their parent's ``cutime``/``cstime``, so the total never goes backwards.
    """
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command name: pgrp is the 3rd, then utime, stime,
        # cutime, cstime are the 12th to 15th.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid:
            total += sum(int(f) for f in fields[11:15])
    return total / tick


# ------------------------------------------------------------------------ measurements


@dataclass
class Measurement:
    """One closed-loop run: ``calls`` calls of ``items_per_call`` items in ``elapsed_s``."""

    calls: int
    elapsed_s: float
    latencies_s: list[float]
    items_per_call: int = 1
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def items(self) -> int:
        return self.calls * self.items_per_call

    @property
    def throughput(self) -> float:
        return self.items / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def percentile_ms(self, q: float) -> float | None:
        if not self.latencies_s:
            return None
        return float(np.percentile(np.asarray(self.latencies_s), q) * 1000.0)

    @staticmethod
    def merge(parts: Sequence[Measurement]) -> Measurement:
        if not parts:
            raise ValueError("nothing to merge")
        extra: dict[str, float] = {}
        for key in parts[0].extra:
            extra[key] = float(np.mean([p.extra[key] for p in parts if key in p.extra]))
        return Measurement(
            calls=sum(p.calls for p in parts),
            elapsed_s=sum(p.elapsed_s for p in parts),
            latencies_s=[x for p in parts for x in p.latencies_s],
            items_per_call=parts[0].items_per_call,
            extra=extra,
        )


def run_threads(
    call: Callable[[int], object],
    *,
    concurrency: int,
    duration_s: float,
    warmup_calls: int = 1,
    items_per_call: int = 1,
    max_calls: int | None = None,
) -> Measurement:
    """``concurrency`` caller threads each calling ``call(worker_index)`` in a closed loop.

    Each thread first makes ``warmup_calls`` unrecorded calls; then all start together and
    call until ``duration_s`` has passed (or ``max_calls`` calls were started in total).
    The first exception raised by any call is re-raised here.
    """
    start_gate = threading.Barrier(concurrency + 1)
    go_gate = threading.Barrier(concurrency + 1)
    deadline = [0.0]
    lock = threading.Lock()
    started = [0]
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    ends = [0.0] * concurrency
    errors: list[BaseException] = []

    def take_ticket() -> bool:
        if max_calls is None:
            return True
        with lock:
            if started[0] >= max_calls:
                return False
            started[0] += 1
            return True

    def worker(index: int) -> None:
        try:
            for _ in range(warmup_calls):
                call(index)
        except BaseException as exc:
            errors.append(exc)
        try:
            start_gate.wait()
            go_gate.wait()
        except threading.BrokenBarrierError:
            return
        mine = latencies[index]
        try:
            while not errors and time.perf_counter() < deadline[0] and take_ticket():
                t = time.perf_counter()
                call(index)
                mine.append(time.perf_counter() - t)
        except BaseException as exc:
            errors.append(exc)
        ends[index] = time.perf_counter()

    threads = [
        threading.Thread(target=worker, args=(i,), name=f"bench-caller-{i}", daemon=True)
        for i in range(concurrency)
    ]
    for t in threads:
        t.start()
    start_gate.wait()
    if errors:
        go_gate.abort()
        for t in threads:
            t.join()
        raise errors[0]
    t0 = time.perf_counter()
    deadline[0] = t0 + duration_s
    go_gate.wait()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    flat = [x for part in latencies for x in part]
    return Measurement(
        calls=len(flat),
        elapsed_s=max(ends) - t0,
        latencies_s=flat,
        items_per_call=items_per_call,
    )


async def run_tasks(
    call: Callable[[int], Awaitable[object]],
    *,
    concurrency: int,
    duration_s: float,
    warmup_calls: int = 1,
    items_per_call: int = 1,
) -> Measurement:
    """The asyncio twin of :func:`run_threads`: ``concurrency`` tasks on the running loop."""
    await asyncio.gather(*(call(i) for i in range(concurrency) for _ in range(warmup_calls)))
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    t0 = time.perf_counter()
    deadline = t0 + duration_s

    async def worker(index: int) -> float:
        mine = latencies[index]
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            await call(index)
            mine.append(time.perf_counter() - t)
        return time.perf_counter()

    ends = await asyncio.gather(*(worker(i) for i in range(concurrency)))
    flat = [x for part in latencies for x in part]
    return Measurement(
        calls=len(flat),
        elapsed_s=max(ends) - t0,
        latencies_s=flat,
        items_per_call=items_per_call,
    )


def alternate(runners: dict[str, Callable[[], Measurement]], rounds: int) -> dict[str, Measurement]:
    """Run each side once per round, in alternating order, and merge each side's rounds."""
    parts: dict[str, list[Measurement]] = {name: [] for name in runners}
    names = list(runners)
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            parts[name].append(runners[name]())
    return {name: Measurement.merge(p) for name, p in parts.items()}


# -------------------------------------------------------------------------------- rows


@dataclass
class Side:
    """One side of a comparison: a rate (higher is better) and, where it applies, latency."""

    label: str
    value: float
    unit: str = "img/s"
    p50_ms: float | None = None
    p99_ms: float | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "value": self.value,
            "unit": self.unit,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "detail": self.detail,
        }


def side_from(label: str, m: Measurement, *, unit: str = "img/s", detail: str = "") -> Side:
    return Side(
        label=label,
        value=m.throughput,
        unit=unit,
        p50_ms=m.percentile_ms(50),
        p99_ms=m.percentile_ms(99),
        detail=detail,
    )


@dataclass
class Row:
    """One result line: ours vs the baseline, their ratio and the target it is held to."""

    scenario: int
    case: str
    ours: Side | None
    baseline: Side | None
    model: str
    settings: str
    target: float | None = None
    note: str = ""
    skipped: str = ""

    @property
    def ratio(self) -> float | None:
        if self.ours is None or self.baseline is None or self.baseline.value <= 0:
            return None
        return self.ours.value / self.baseline.value

    @property
    def met(self) -> bool | None:
        ratio = self.ratio
        if self.target is None or ratio is None:
            return None
        return ratio >= self.target

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "case": self.case,
            "ours": self.ours.to_dict() if self.ours else None,
            "baseline": self.baseline.to_dict() if self.baseline else None,
            "ratio": self.ratio,
            "target": self.target,
            "met": self.met,
            "model": self.model,
            "settings": self.settings,
            "note": self.note,
            "skipped": self.skipped,
        }


@dataclass
class ScenarioResult:
    number: int
    title: str
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "title": self.title,
            "rows": [r.to_dict() for r in self.rows],
            "notes": self.notes,
            "elapsed_s": self.elapsed_s,
            "error": self.error,
        }


# --------------------------------------------------------------------------- rendering


def fmt_rate(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def fmt_ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _latency(side: Side) -> str:
    if side.p50_ms is None:
        return ""
    return f"p50 {fmt_ms(side.p50_ms)} / p99 {fmt_ms(side.p99_ms)} ms"


def _side_text(side: Side) -> str:
    text = f"{side.label} {fmt_rate(side.value)} {side.unit}"
    extras = [x for x in (_latency(side), side.detail) if x]
    return text + (f" ({'; '.join(extras)})" if extras else "")


def _target_text(row: Row) -> str:
    if row.target is None:
        return ""
    verdict = {True: "met", False: "MISSED", None: "n/a"}[row.met]
    return f"target >= {row.target:g}: {verdict}"


def render_row(row: Row) -> str:
    """A row for the terminal: both sides, the ratio, latency, model and settings."""
    head = f"[{row.scenario}] {row.case}"
    if row.skipped:
        return f"{head}: skipped: {row.skipped}\n      model: {row.model} | {row.settings}"
    parts = [
        head,
        f"  ours:     {_side_text(row.ours)}" if row.ours else "  ours:     -",
        f"  baseline: {_side_text(row.baseline)}" if row.baseline else "  baseline: -",
    ]
    ratio = row.ratio
    ratio_text = f"  ratio:    {ratio:.2f}x" if ratio is not None else "  ratio:    -"
    target = _target_text(row)
    parts.append(ratio_text + (f"   ({target})" if target else ""))
    parts.append(f"  model: {row.model} | settings: {row.settings}")
    if row.note:
        parts.append(f"  note: {row.note}")
    return "\n".join(parts)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_side(side: Side | None) -> str:
    if side is None:
        return "-"
    text = f"{side.label}: **{fmt_rate(side.value)}** {side.unit}"
    if side.detail:
        text += f" ({side.detail})"
    return text


def _md_latency(side: Side | None) -> str:
    if side is None or side.p50_ms is None:
        return "-"
    return f"{fmt_ms(side.p50_ms)} / {fmt_ms(side.p99_ms)}"


def markdown_report(
    results: Sequence[ScenarioResult],
    *,
    machine: Machine,
    command: str,
    when: str,
    revision: str,
    quick: bool,
    total_s: float,
    preamble: Sequence[str] = (),
) -> str:
    lines = [
        "# tritonvision benchmarks",
        "",
        f"Produced by `{command}` on {when}"
        + (f" at revision `{revision}`" if revision else "")
        + f", in {total_s / 60:.1f} min"
        + (" (**quick mode**: tiny encoder, short runs; not representative)" if quick else "")
        + ".",
        "",
        f"- **Machine**: {machine.describe()}",
        f"- **Software**: {machine.software()}",
        *[f"- {p}" for p in preamble],
        "",
        "Both sides of every row ran on this machine in the same run, alternating round by "
        "round; the **ratio** is ours / baseline of the rate (higher is better). Absolute "
        "rates drift on a shared 2-core machine; ratios are what we claim. Latency is per "
        "call, p50 / p99 in milliseconds, where it applies.",
        "",
    ]
    for result in results:
        lines.append(f"## {result.number}. {result.title}")
        lines.append("")
        lines.append(f"Machine: {machine.describe()}. Scenario time: {result.elapsed_s:.0f} s.")
        lines.append("")
        if result.error:
            lines.append(f"**Failed**: {_cell(result.error)}")
            lines.append("")
        if result.rows:
            lines.append(
                "| case | ours | baseline | ratio | target | ours p50 / p99 ms "
                "| baseline p50 / p99 ms | model | settings |"
            )
            lines.append("|---|---|---|---|---|---|---|---|---|")
            for row in result.rows:
                if row.skipped:
                    lines.append(
                        f"| {_cell(row.case)} | skipped: {_cell(row.skipped)} | | | | | "
                        f"| {_cell(row.model)} | {_cell(row.settings)} |"
                    )
                    continue
                ratio = f"**{row.ratio:.2f}x**" if row.ratio is not None else "-"
                target = _target_text(row)
                lines.append(
                    "| "
                    + " | ".join(
                        _cell(x)
                        for x in (
                            row.case,
                            _md_side(row.ours),
                            _md_side(row.baseline),
                            ratio,
                            target,
                            _md_latency(row.ours),
                            _md_latency(row.baseline),
                            row.model,
                            row.settings,
                        )
                    )
                    + " |"
                )
            lines.append("")
            row_notes = [f"- *{r.case}*: {r.note}" for r in result.rows if r.note]
            if row_notes:
                lines.extend(row_notes)
                lines.append("")
        if result.notes:
            lines.extend(f"{n}" for n in result.notes)
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"
