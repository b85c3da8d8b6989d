"""benchmarks/mini_sd/few_step.py's jobs at toy size: KD student -> LCM student -> fp32 bundle, the table."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def jobs():
    here = ROOT / "benchmarks" / "mini_sd"
    sys.path.insert(0, str(here))  # few_step_jobs imports its sibling ablation_jobs
    try:
        spec = importlib.util.spec_from_file_location("few_step_jobs", here / "few_step_jobs.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(here))
    return module


def test_few_step_jobs_and_table(jobs, tmp_path):
    cfg = jobs.FewStepConfig(kd_steps=1, kd_batch=4, lcm_steps=2, lcm_batch=4, num_ddim_timesteps=10,
                             step_counts=(1, 2), teacher_steps=3, eval_seeds=1, bundle_precision="fp32")
    rows = jobs.run(cfg, tmp_path, log=lambda *_: None)
    names = [r["name"] for r in rows]
    assert names == ["teacher_pndm3", "teacher_pndm1", "teacher_pndm2", "kd_pndm3", "kd_pndm1", "kd_pndm2",
                     "lcm_torch1", "lcm_torch2", "lcm_bundle1", "lcm_bundle2"]
    assert all(r["n_images"] == 10 and 0 <= r["prompt_accuracy"] <= 1 for r in rows)
    assert [r["unet_calls"] for r in rows if r["name"].startswith("lcm")] == [1, 2, 1, 2]
    # The fp32 bundle runs the PyTorch computation: same latents, same re-noising noise (NoiseStream(seed)).
    for r in rows[-2:]:
        p = r["psnr_vs_pytorch"]
        assert p["psnr_images"] == 10 and (p["psnr_db_pooled"] == float("inf") or p["psnr_db_pooled"] > 40), p
    # Records are reused: a second run trains nothing and returns the same rows.
    keys = ("name", "prompt_accuracy", "frechet_distance", "generation_s")
    again = jobs.run(cfg, tmp_path, log=lambda *_: None)
    assert [[r[k] for k in keys] for r in again] == [[r[k] for k in keys] for r in rows]
    doc, md = jobs.summarise(rows, cfg, {"command": "test", "machine": "here"}, tmp_path)
    assert set(doc["goals"]) == {"lcm_torch2", "lcm_bundle2"} and doc["wall_s"] > 0
    assert "| bk-tiny KD + LCM | LCM, onnx fp32 bundle | 2 | 2 |" in md
