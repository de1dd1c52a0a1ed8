"""What a scenario gets: the run's mode and timings, encoders, servers, photos and output.

Each scenario module defines ``SCENARIO = Scenario(number, title, run)``; ``run(ctx)``
measures and emits :class:`Row` s through the :class:`Context` as it goes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ._machine import Machine
from ._report import Row, ScenarioResult, render_row
from ._repos import (
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

__all__ = ["VARIANTS", "Context", "Scenario"]

# Serving variants compared in scenario 3's sweep (same model.onnx, other settings).
SWEEP_VARIANTS = (
    Variant("_i1", instances=1),
    Variant("_q2000", max_queue_delay_us=None),  # the exported (GPU) 2 ms delay
    Variant("_q10000", max_queue_delay_us=10_000),
    Variant("_i1q10000", instances=1, max_queue_delay_us=10_000),
    Variant("_i3", instances=3, ort_threads=1),
)
VARIANTS = (BASE, NO_BATCHING, FP32, *SWEEP_VARIANTS)


@dataclass(frozen=True)
class Scenario:
    """One benchmark scenario: its number and title, and the function that measures it."""

    number: int
    title: str
    run: Callable[[Context], None]


@dataclass
class Context:
    """What a scenario needs: mode, timings, encoders, servers, sample photos, output."""

    quick: bool
    machine: Machine
    workdir: Path
    cache_dir: Path
    allow_download: bool = False
    out: Callable[[str], None] = print
    results: list[ScenarioResult] = field(default_factory=list)
    measure_override_s: float | None = None
    server_version: str = ""
    _exports: dict[str, ExportedEncoder] = field(default_factory=dict)
    _served: dict[str, ServedRepository] = field(default_factory=dict)
    _photos: list[Path] | None = None

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
        """Seconds per side and round for an encoder: ViT-B/32 serves far fewer images per
        second than the tiny one, so it needs longer windows for a stable rate and a p99."""
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
