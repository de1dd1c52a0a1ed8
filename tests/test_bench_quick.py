"""Smoke test of the benchmarks: ``tritonvision bench --quick`` runs every scenario.

No speed assertions (speed claims live in ``bench/`` and BENCHMARKS.md): this only checks
that each scenario runs against the real tritonserver and produces rows with both sides
and a ratio, or says why a row was skipped, and that the Markdown report is written.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = {1, 2, 3, 4, 5, 6}


@pytest.mark.timeout(290)
def test_bench_quick_runs_every_scenario_and_reports_both_sides_and_a_ratio(tmp_path):
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
        timeout=280,
        check=False,
    )
    log = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, log

    data = json.loads(results.read_text())
    assert data["quick"] is True
    by_number = {s["number"]: s for s in data["scenarios"]}
    assert set(by_number) == SCENARIOS, log
    for number, scenario in by_number.items():
        assert not scenario["error"], f"scenario {number}: {scenario['error']}\n{log}"
        assert scenario["rows"], f"scenario {number} produced no rows\n{log}"
        for row in scenario["rows"]:
            where = f"scenario {number}, {row['case']!r}"
            if row["skipped"]:
                assert isinstance(row["skipped"], str), where  # the reason
                continue
            for side in ("ours", "baseline"):
                assert row[side] is not None, f"{where}: no {side} side"
                assert row[side]["label"], where
                assert row[side]["value"] > 0, f"{where}: {side} measured nothing"
            assert row["ratio"] is not None and row["ratio"] > 0, where
            assert row["model"] and row["settings"], where

    text = report.read_text()
    assert "tritonvision bench --quick" in text
    assert data["machine"]["cpu_model"] in text
    for number, scenario in by_number.items():
        assert f"## {number}. {scenario['title']}" in text
