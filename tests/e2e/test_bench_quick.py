"""Smoke test of the benchmarks: ``tritonvision bench --quick`` runs every scenario.

No speed assertions (speed claims live in BENCHMARKS.md): this checks that every scenario
runs against the real tritonserver and measures every row it should, both sides and a
ratio, and that the Markdown report names the machine and the load the run measured.

A row may be skipped for one reason only: a scenario 2 row against perf_analyzer (its
case names it) when perf_analyzer is not set up in the cache (quick mode never downloads
it; ``tritonvision bench --setup`` does). The test asks the same question itself and
requires the skip to carry exactly that answer; scenario 2's other rows (coalescing on vs
off) are measured either way, and with perf_analyzer set up every row must be measured.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tritonvision.bench import find_perf_analyzer
from tritonvision.contract import DEFAULT_CACHE_DIR

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# Rows each scenario emits in quick mode: a scenario that silently drops a comparison fails.
QUICK_ROWS = {1: 7, 2: 5, 3: 5, 4: 4, 5: 6, 6: 2, 7: 1, 8: 2, 9: 2, 10: 2}
PERF_ANALYZER_SCENARIO = 2
PERF_ANALYZER_CASE = "perf_analyzer"  # in the case of every row that needs it


def _allowed_skips() -> dict[int, str]:
    """Scenario -> the one skip reason its perf_analyzer rows may give on this machine."""
    pa, reason = find_perf_analyzer(allow_download=False, cache_dir=DEFAULT_CACHE_DIR)
    if pa is not None:
        return {}
    assert reason, "find_perf_analyzer gave no reason for being unavailable"
    return {PERF_ANALYZER_SCENARIO: reason}


def _check_measured(row: dict[str, Any], where: str) -> None:
    for side in ("ours", "baseline"):
        data = row[side]
        assert data is not None, f"{where}: no {side} side"
        assert data["label"] and data["unit"], where
        assert math.isfinite(data["value"]) and data["value"] > 0, f"{where}: {side} {data}"
    ratio = row["ratio"]
    assert ratio is not None and math.isfinite(ratio) and ratio > 0, f"{where}: ratio {ratio}"
    assert ratio == pytest.approx(row["ours"]["value"] / row["baseline"]["value"]), where
    assert row["model"] and row["settings"], where


@pytest.mark.timeout(500)
def test_bench_quick_measures_every_row_of_every_scenario_with_both_sides_and_a_ratio(
    tmp_path: Path,
) -> None:
    allowed_skips = _allowed_skips()
    report = tmp_path / "BENCHMARKS.md"
    results = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tritonvision",
            "bench",
            "--quick",
            "--output",
            str(report),
            "--json",
            str(results),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=480,
        check=False,
    )
    log = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, log

    data = json.loads(results.read_text())
    assert data["quick"] is True
    by_number = {s["number"]: s for s in data["scenarios"]}
    assert set(by_number) == set(QUICK_ROWS), log
    for number, scenario in sorted(by_number.items()):
        assert not scenario["error"], f"scenario {number}: {scenario['error']}\n{log}"
        rows = scenario["rows"]
        assert len(rows) == QUICK_ROWS[number], (
            f"scenario {number}: {len(rows)} rows, expected {QUICK_ROWS[number]}: "
            f"{[r['case'] for r in rows]}\n{log}"
        )
        for row in rows:
            where = f"scenario {number}, {row['case']!r}"
            must_skip = number in allowed_skips and PERF_ANALYZER_CASE in row["case"]
            if row["skipped"]:
                assert must_skip, f"{where} skipped: {row['skipped']}\n{log}"
                assert row["skipped"] == allowed_skips[number], where
                assert row["ours"] is None and row["baseline"] is None, where
                continue
            assert not must_skip, f"{where} measured, yet was expected to skip"
            _check_measured(row, where)

    load = data["load"]
    assert load["wall_s"] > 0
    text = report.read_text()
    assert "tritonvision bench --quick" in text
    assert data["machine"]["cpu_model"] in text
    assert f"{data['machine']['cores']} cores" in text
    assert "**Load** (measured by this run):" in text
    if load["idle_busy_before_percent"] is not None:
        assert "other processes kept the" in text
    if load["busy_percent"] is not None:
        assert f"{load['busy_percent']:.0f}% busy during the run" in text
    for number, scenario in by_number.items():
        assert f"## {number}. {scenario['title']}" in text
