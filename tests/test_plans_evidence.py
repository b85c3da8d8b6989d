"""benchmarks/mini_sd/plans.py's jobs at toy size: a plan-file cell, the budgets, the table and the Pareto plot."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest

from bksdm_edge.plans import BUILTIN_PLANS, Block

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def _load(name: str):
    here = ROOT / "benchmarks" / "mini_sd"
    if str(here) not in sys.path:
        sys.path.insert(0, str(here))  # plans_jobs imports its sibling ablation_jobs
    spec = importlib.util.spec_from_file_location(name, here / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def jobs():
    return _load("plans_jobs")


def test_budgets_are_the_presets_ratios_rounded_up(jobs):
    budgets = jobs.preset_budgets((0.45,))
    assert list(budgets) == ["=bk-base", "=bk-small", "=bk-tiny", "0.45"]
    # the digits teacher's paper-convention MACs ratios: 0.6611, 0.6390, 0.6036 (profiled), rounded up
    assert budgets["=bk-base"] == 0.6612 and budgets["=bk-small"] == 0.6391 and budgets["=bk-tiny"] == 0.6037


def test_plan_file_cell_and_tables(jobs, tmp_path):
    ablation = sys.modules["ablation_jobs"]
    cfg = jobs.EvidenceConfig(train=ablation.AblationConfig(steps=1, batch_size=4, seeds=(0,), eval_seeds=1,
                                                            eval_steps=2))
    small = BUILTIN_PLANS["bk-small"]
    custom = dataclasses.replace(small, name="custom", down=small.down[:3] + (Block((0, 1)),),
                                 up=(Block((0, 1, 2)),) + small.up[1:])
    plan_file = custom.save(tmp_path / "custom.yaml")
    ablation.ensure_data(tmp_path, cfg.train)
    rec = ablation.run_cell(str(plan_file), "c", 0, cfg.train, tmp_path, label="searched_macs0.5")
    assert rec["variant"] == "searched_macs0.5" and (tmp_path / "records" / "searched_macs0.5_c_s0.json").exists()
    plans = {"bk-small": {"kind": "preset", "spec": "bk-small", "plan": small},
             "searched@macs0.5": {"kind": "searched", "spec": str(plan_file), "plan": custom, "budget": 0.5,
                                  "same_as": None},
             "searched@macs=bk-small": {"kind": "searched", "spec": "x", "plan": small, "budget": 0.64,
                                        "same_as": "bk-small"}}
    records = [rec, {**rec, "variant": "bk-small", "prompt_accuracy": 0.5, "frechet_distance": 100.0}]
    sensitivity = {"options": [{"group": "stages+mid", "key": "removed0+mid-none", "nmse": 0.01},
                               {"group": "depth.0", "key": "down[0]+up[0,2]", "nmse": 0.1}],
                   "teacher": {}, "machine": {"start": {"cpu": "test cpu"}, "end": {}}}
    latency = {"teacher": 0.010, "bk-small": 0.008, "searched_macs0.5": 0.007}
    doc = jobs.summarise(plans, {"prompt_accuracy": 1.0, "frechet_distance": 50.0}, records, latency, sensitivity,
                         cfg, {"command": "test"})
    rows = {r["plan"]: r for r in doc["rows"]}
    assert rows["searched@macs0.5"]["latency_ratio"] == pytest.approx(0.7)
    assert rows["searched@macs=bk-small"]["latency_ratio"] == pytest.approx(0.8)  # the preset's cells and timing
    assert rows["bk-small"]["prompt_accuracy"]["mean"] == 0.5
    md = jobs.markdown(doc, "the conclusion")
    assert "| searched@macs=bk-small (= bk-small) |" in md and "the conclusion" in md and "test cpu" in md
    assert jobs.plot(doc, tmp_path / "p.png").stat().st_size > 10_000
