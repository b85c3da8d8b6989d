"""Benchmark harness: scenarios as data, one process per scenario, ratios to the teacher, reports.

Entry points: ``run_benchmark`` (library), ``benchmarks/run.py`` and ``bksdm-edge bench`` (thin CLIs).
"""

from .runner import run_benchmark
from .scenario import BenchConfig, Scenario, expand, load_config

__all__ = ["BenchConfig", "Scenario", "expand", "load_config", "run_benchmark"]
