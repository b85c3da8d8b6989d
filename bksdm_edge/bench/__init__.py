"""Benchmark harness: scenarios as data, one process per scenario, ratios to the teacher, reports.

What lives where (arrows point down the list, never back up):

- ``scenario``: ``Scenario`` (one measurement: model x component x backend x precision x shape x threads x
  device) and YAML configs that expand into scenario matrices;
- ``rows``: the result-row schema, one table of columns (name, type, default) used by every row maker;
- ``machine``: what a measurement ran on (CPU, its kernel-deciding ISA flags, cores, RAM, GPU, OS, load,
  versions) and its Markdown;
- ``child``: measured child processes (peak RSS, timeout, log tail) and the JSON task protocol; every
  benchmark script uses it too;
- ``backends``: the registry of back-ends (PyTorch eager and one per export format) that prepare and load
  artifacts; ``worker``: the child that prepares or measures one scenario; ``android``: adb + on-device tools;
- ``importing``: rows measured elsewhere; ``report``: results.json/csv, report.md and plots;
- ``runner``: runs a config (``run_benchmark``) and ``bench`` (what ``benchmarks/run.py`` and
  ``bksdm-edge bench`` call).
"""

from .runner import run_benchmark
from .scenario import BenchConfig, Scenario, expand, load_config

__all__ = ["BenchConfig", "Scenario", "expand", "load_config", "run_benchmark"]
