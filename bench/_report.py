"""Benchmark results and how they are shown: rows, ratios, the terminal and Markdown/JSON.

A :class:`Row` holds one comparison: our side and the baseline's, each a rate (higher is
better) with latency where it applies, and their ratio. Rows group into a
:class:`ScenarioResult`; :func:`render_row` prints one for the terminal and
:func:`markdown_report` writes them all. A leaf module: it imports nothing of ours.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Row",
    "ScenarioResult",
    "Side",
    "fmt_ms",
    "fmt_rate",
    "markdown_report",
    "render_row",
]


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
    machine: str,
    load: str,
    software: str,
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
        f"- **Machine**: {machine}",
        f"- **Load** (measured by this run): {load}",
        f"- **Software**: {software}",
        *[f"- {p}" for p in preamble],
        "",
        "Both sides of every row ran on this machine in the same run, alternating round by "
        "round; the **ratio** is ours / baseline of the rate (higher is better). Absolute "
        "rates move with whatever else the machine is doing (see **Load**); ratios are what "
        "we claim. Latency is per call, p50 / p99 in milliseconds, where it applies.",
        "",
    ]
    for result in results:
        lines.append(f"## {result.number}. {result.title}")
        lines.append("")
        lines.append(f"Machine: {machine}. Scenario time: {result.elapsed_s:.0f} s.")
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
