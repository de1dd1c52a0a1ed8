"""tritonvision benchmarks: each comparison measured side by side, as ratios, the machine named.

``tritonvision bench`` runs them (options in :mod:`tritonvision.cli.bench`); the runner is
:func:`tritonvision.bench.run.run_benchmarks`. Modules:

- ``run``: the scenario registry and the runner, which writes Markdown and JSON;
- ``_context``: what a scenario gets (:class:`Context`) and what one is (:class:`Scenario`);
- ``_machine``: what was read about the machine and what the run measured of its load;
- ``_load``: closed-loop load generators, alternating sides, CPU accounting;
- ``_report``: rows, ratios, the terminal and Markdown renderings (a leaf module);
- ``_repos``: cached exports, per-run repositories with serving variants, served models;
- ``_perf_analyzer``: NVIDIA's perf_analyzer, set up once and run;
- ``_percall_bug``: the per-call runtime defect that scenario 1 measures against;
- ``_client_internals``: the one place that imports the client's private modules;
- ``_slow_model``: a deliberately slow python-backend model with a tiny queue (scenario 8);
- ``_device``: the GPU device run (``bench/device.sh``, ``tritonvision bench --device``);
- ``scenario_N_*``: one scenario each.

Importing this package imports nothing heavy; ``run`` imports the scenarios.
"""

from __future__ import annotations

from ._perf_analyzer import find_perf_analyzer

__all__ = ["find_perf_analyzer"]
