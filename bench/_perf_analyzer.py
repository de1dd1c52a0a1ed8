"""NVIDIA's ``perf_analyzer``: set it up once (cached) and run it.

``pip install perf-analyzer`` is a placeholder, but the ``tritonclient==2.41.0``
manylinux wheel on PyPI carries the real binary (``tritonclient-2.41.0.data/data/bin/
perf_analyzer``). The set-up step (``tritonvision bench --setup``, or a full run) downloads
that wheel with pip, unzips the binary into ``<cache>/perf_analyzer/2.41.0/`` (the cache is
``--cache-dir``, by default ``~/.cache/tritonvision``)
and makes the two libraries it links against findable:

- ``libb64.so.0d``: Debian's ``libb64-0d`` if installed, else the copy that ships in the
  ``nvidia-pytriton`` wheel (``nvidia_pytriton.libs/libb64-*.so.0d``);
- ``libcudart.so.12``: the copy in ``nvidia_pytriton.libs`` (only loaded, never used on
  a CPU-only machine).

Quick mode and the tests never download: without the cache the scenario reports
"skipped" with the reason.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tritonvision.contract import PIXELS_INPUT

__all__ = ["PerfAnalyzer", "PerfResult", "find_perf_analyzer"]

VERSION = "2.41.0"
WHEEL_MEMBER = f"tritonclient-{VERSION}.data/data/bin/perf_analyzer"
_SYSTEM_LIB_DIRS = (Path("/usr/lib/x86_64-linux-gnu"), Path("/usr/lib64"), Path("/usr/lib"))


@dataclass(frozen=True)
class PerfResult:
    throughput: float
    p50_ms: float
    p99_ms: float


@dataclass(frozen=True)
class PerfAnalyzer:
    binary: Path
    lib_dir: Path

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        parts = [str(self.lib_dir)]
        if env.get("LD_LIBRARY_PATH"):
            parts.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(parts)
        return env

    def run(
        self,
        *,
        model: str,
        url: str,
        protocol: str,
        concurrency: int,
        shape: tuple[int, ...],
        input_name: str = PIXELS_INPUT,
        measurement_ms: int,
        max_trials: int,
        stability_percent: int,
        timeout_s: float,
    ) -> PerfResult:
        """One concurrency level, batch size 1, random input of ``shape``; HTTP or gRPC."""
        with tempfile.TemporaryDirectory(prefix="tv-perf-") as tmp:
            report = Path(tmp) / "report.csv"
            cmd = [
                str(self.binary),
                "-m",
                model,
                "-u",
                url,
                "-i",
                protocol,
                "-b",
                "1",
                f"--concurrency-range={concurrency}:{concurrency}",
                f"--shape={input_name}:{','.join(str(d) for d in shape)}",
                "--input-data=random",
                f"--measurement-interval={measurement_ms}",
                f"--max-trials={max_trials}",
                f"--stability-percentage={stability_percent}",
                "-f",
                str(report),
            ]
            proc = subprocess.run(
                cmd,
                env=self.environment(),
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
            if proc.returncode != 0 or not report.exists():
                tail = (proc.stdout + proc.stderr).strip().splitlines()[-8:]
                raise RuntimeError(f"perf_analyzer exited {proc.returncode}: " + " | ".join(tail))
            with report.open() as fh:
                rows = list(csv.DictReader(fh))
        if not rows:
            raise RuntimeError("perf_analyzer wrote no measurement")
        row = rows[0]
        return PerfResult(
            throughput=float(row["Inferences/Second"]),
            p50_ms=float(row["p50 latency"]) / 1000.0,
            p99_ms=float(row["p99 latency"]) / 1000.0,
        )


def _home(cache_dir: Path) -> Path:
    return cache_dir.expanduser() / "perf_analyzer" / VERSION


def _pytriton_libs() -> Path | None:
    from tritonvision.serve import TritonBinaryNotFound, find_triton

    try:
        return find_triton().libs_dir
    except TritonBinaryNotFound:
        return None


def _link_libs(lib_dir: Path) -> str:
    """Make libb64.so.0d and libcudart.so.12 findable in ``lib_dir``; '' or the reason not."""
    lib_dir.mkdir(parents=True, exist_ok=True)
    bundled = _pytriton_libs()
    wanted = {"libb64.so.0d": "libb64-*.so.0d", "libcudart.so.12": "libcudart-*.so.12*"}
    for name, pattern in wanted.items():
        link = lib_dir / name
        if link.exists():
            continue
        if link.is_symlink():  # dangling: the venv moved
            link.unlink()
        system = next((d / name for d in _SYSTEM_LIB_DIRS if (d / name).exists()), None)
        candidates = sorted(bundled.glob(pattern)) if bundled else []
        target = system or (candidates[0] if candidates else None)
        if target is None:
            hint = (
                "apt-get install -y libb64-0d" if "b64" in name else "pip install nvidia-pytriton"
            )
            return f"{name} not found ({hint})"
        os.symlink(target, link)
    return ""


def _check(pa: PerfAnalyzer) -> str:
    try:
        proc = subprocess.run(
            [str(pa.binary), "--version"],
            env=pa.environment(),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except OSError as exc:
        return f"perf_analyzer does not run: {exc}"
    out = proc.stdout + proc.stderr
    if "error while loading shared libraries" in out:
        return "perf_analyzer does not run: " + out.strip().splitlines()[-1]
    return ""


def find_perf_analyzer(*, allow_download: bool, cache_dir: Path) -> tuple[PerfAnalyzer | None, str]:
    """``(perf_analyzer, "")`` when usable, else ``(None, reason)``.

    With ``allow_download`` a missing cache is filled from PyPI (``pip download``).
    """
    home = _home(cache_dir)
    pa = PerfAnalyzer(binary=home / "bin" / "perf_analyzer", lib_dir=home / "lib")
    if not pa.binary.exists():
        if not allow_download:
            return None, (
                f"perf_analyzer is not set up in {home} (quick mode never downloads); "
                "run `tritonvision bench --setup` once"
            )
        reason = _download(home)
        if reason:
            return None, reason
    reason = _link_libs(pa.lib_dir) or _check(pa)
    if reason:
        return None, reason
    return pa, ""


def _download(home: Path) -> str:
    with tempfile.TemporaryDirectory(prefix="tv-pa-wheel-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            f"tritonclient=={VERSION}",
            "--only-binary=:all:",
            "--platform=manylinux1_x86_64",
            "-d",
            tmp,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        wheels = list(Path(tmp).glob("tritonclient-*.whl"))
        if proc.returncode != 0 or not wheels:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
            return "cannot download the tritonclient wheel: " + " | ".join(tail)
        try:
            with zipfile.ZipFile(wheels[0]) as wheel:
                info = wheel.getinfo(WHEEL_MEMBER)
                (home / "bin").mkdir(parents=True, exist_ok=True)
                partial = home / "bin" / ".perf_analyzer.partial"
                with wheel.open(info) as src, partial.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
        except (KeyError, zipfile.BadZipFile) as exc:
            return f"the tritonclient {VERSION} wheel has no perf_analyzer: {exc}"
        partial.chmod(0o755)
        os.replace(partial, home / "bin" / "perf_analyzer")
    return ""
