"""The machine a benchmark ran on: what was read about it, and what the run measured of it.

:func:`machine_info` reads the CPU model, core counts, memory and package versions.
:class:`LoadProbe` samples ``/proc/loadavg`` and ``/proc/stat`` before and after the run, so
the report can say how busy the machine was with work other than ours (other processes,
a hypervisor's steal) instead of guessing that it was shared.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

__all__ = ["LoadProbe", "Machine", "MachineLoad", "machine_info"]

_PACKAGES = (
    ("tritonvision", "tritonvision"),
    ("nvidia-pytriton", "nvidia-pytriton (tritonserver)"),
    ("onnxruntime", "onnxruntime"),
    ("aiohttp", "aiohttp"),
    ("pillow", "Pillow"),
    ("numpy", "numpy"),
    ("transformers", "transformers"),
)


@dataclass(frozen=True, kw_only=True)
class Machine:
    """What was read about the machine before the run."""

    cpu_model: str
    cores: int
    usable_cores: int
    cpu_quota: float | None  # cgroup CPU limit in cores; None when unlimited or unreadable
    memory_gib: float
    python: str
    packages: dict[str, str]

    def describe(self) -> str:
        cores = f"{self.cores} cores"
        if self.usable_cores != self.cores:
            cores += f" ({self.usable_cores} usable)"
        if self.cpu_quota is not None:
            cores += f", cgroup quota {self.cpu_quota:g} CPUs"
        return f"{self.cpu_model}, {cores}, {self.memory_gib:.0f} GiB RAM"

    def software(self) -> str:
        pkgs = ", ".join(f"{k} {v}" for k, v in self.packages.items())
        return f"Python {self.python}; {pkgs}"


@dataclass(frozen=True, kw_only=True)
class MachineLoad:
    """How busy the machine was around and during the run, as measured.

    ``idle_busy_before_percent`` / ``idle_busy_after_percent``: the CPUs' busy time over a
    short window just before the run starts and just after its servers have stopped, while
    this run does nothing, so it is other processes' load. ``busy_percent`` and
    ``steal_percent`` cover the whole run, ours included. ``None``: ``/proc`` unreadable.
    """

    load_avg_before: tuple[float, float, float] | None
    load_avg_after: tuple[float, float, float] | None
    cpus_in_stat: int
    wall_s: float
    idle_busy_before_percent: float | None
    busy_percent: float | None
    idle_busy_after_percent: float | None
    steal_percent: float | None

    def describe(self) -> str:
        parts = []
        if self.load_avg_before is not None:
            one, five, fifteen = self.load_avg_before
            parts.append(f"load average before the run {one:.2f} / {five:.2f} / {fifteen:.2f}")
        idle = (self.idle_busy_before_percent, self.idle_busy_after_percent)
        if None not in idle:
            parts.append(
                f"other processes kept the {self.cpus_in_stat} CPUs {idle[0]:.0f}% busy just "
                f"before the run and {idle[1]:.0f}% just after it (sampled while the run was idle)"
            )
        if self.busy_percent is not None:
            parts.append(f"{self.busy_percent:.0f}% busy during the run, ours included")
        if self.steal_percent is not None:
            parts.append(f"CPU steal {self.steal_percent:.1f}%")
        return "; ".join(parts) if parts else "not measured (no /proc)"


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


def _cpu_quota() -> float | None:
    """cgroup v2 ``cpu.max`` as cores (``"200000 100000"`` -> 2.0); None when unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> Machine:
    cores = os.cpu_count() or 1
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = cores
    packages = {}
    for dist, label in _PACKAGES:
        version = _version(dist)
        if version:
            packages[label] = version
    return Machine(
        cpu_model=_cpu_model(),
        cores=cores,
        usable_cores=usable,
        cpu_quota=_cpu_quota(),
        memory_gib=_memory_gib(),
        python=platform.python_version(),
        packages=packages,
    )


# ----------------------------------------------------------------------------- load


@dataclass(frozen=True)
class _StatSample:
    busy_ticks: int
    steal_ticks: int
    total_ticks: int
    cpus: int


def _load_avg() -> tuple[float, float, float] | None:
    try:
        one, five, fifteen = Path("/proc/loadavg").read_text().split()[:3]
        return float(one), float(five), float(fifteen)
    except (OSError, ValueError):
        return None


def _stat_sample() -> _StatSample | None:
    """The aggregate ``cpu`` line of ``/proc/stat``: busy, steal and total ticks."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    head = next((line for line in lines if line.startswith("cpu ")), None)
    if head is None:
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice]; guest time is
    # already inside user/nice, so it is not added again.
    values = [int(v) for v in head.split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = values + [0] * (8 - len(values))
    busy = user + nice + system + irq + softirq
    cpus = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    return _StatSample(busy, steal, busy + idle + iowait + steal, cpus)


def _busy_percent(start: _StatSample | None, end: _StatSample | None) -> float | None:
    if start is None or end is None or end.total_ticks <= start.total_ticks:
        return None
    return 100.0 * (end.busy_ticks - start.busy_ticks) / (end.total_ticks - start.total_ticks)


def _steal_percent(start: _StatSample | None, end: _StatSample | None) -> float | None:
    if start is None or end is None or end.total_ticks <= start.total_ticks:
        return None
    return 100.0 * (end.steal_ticks - start.steal_ticks) / (end.total_ticks - start.total_ticks)


def _idle_busy_percent(window_s: float) -> float | None:
    """The CPUs' busy percentage over ``window_s`` while this process sleeps."""
    start = _stat_sample()
    time.sleep(window_s)
    return _busy_percent(start, _stat_sample())


class LoadProbe:
    """Started before the run, finished after it, once every server has been stopped.

    Each end samples the machine for ``idle_window_s`` while the run does nothing, so what
    it sees busy is other processes: a measured answer to "was the machine shared?".
    """

    def __init__(self, idle_window_s: float = 1.0) -> None:
        self._window_s = idle_window_s
        self._load_before = _load_avg()
        self._idle_before = _idle_busy_percent(idle_window_s)
        self._t0 = time.perf_counter()
        self._stat0 = _stat_sample()

    def finish(self) -> MachineLoad:
        wall = time.perf_counter() - self._t0
        stat1 = _stat_sample()
        return MachineLoad(
            load_avg_before=self._load_before,
            load_avg_after=_load_avg(),
            cpus_in_stat=stat1.cpus if stat1 else 0,
            wall_s=wall,
            idle_busy_before_percent=self._idle_before,
            busy_percent=_busy_percent(self._stat0, stat1),
            idle_busy_after_percent=_idle_busy_percent(self._window_s),
            steal_percent=_steal_percent(self._stat0, stat1),
        )
