"""benchmarks/mini_sd/ablation.py's jobs at toy size: one cell, its ONNX export scored against PyTorch, the tables."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def jobs():
    here = ROOT / "benchmarks" / "mini_sd"
    spec = importlib.util.spec_from_file_location("ablation_jobs", here / "ablation_jobs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_cell_export_and_tables(jobs, tmp_path):
    cfg = jobs.AblationConfig(steps=1, batch_size=4, seeds=(0,), eval_seeds=1, eval_steps=2)
    jobs.ensure_data(tmp_path, cfg)
    teacher = jobs.run_job(("teacher",), cfg, tmp_path)
    cell = jobs.run_job(("cell", "bk-tiny", "c", 0), cfg, tmp_path)
    export = jobs.run_job(("export", "bk-tiny", "onnx", "fp32"), cfg, tmp_path)
    assert 0 <= teacher["prompt_accuracy"] <= 1 and cell["n_images"] == 10 and cell["train_s"] > 0
    # The bundle starts from the PyTorch pipeline's latents: fp32 images match image for image.
    assert export["psnr_images"] == 10
    assert export["psnr_db_pooled"] == "inf" or export["psnr_db_pooled"] > 40
    assert export["prompt_accuracy"] == export["pytorch_same_latents"]["prompt_accuracy"]
    # Records are reused: a second call does not run the job again.
    again = jobs.run_job(("cell", "bk-tiny", "c", 0), cfg, tmp_path)
    assert (again["train_s"], again["unet"]) == (cell["train_s"], cell["unet"])
    abl, abl_md, ex, ex_md = jobs.summarise(jobs.load_records(tmp_path), cfg, {"command": "test"})
    assert [(r["variant"], r["setup"]) for r in abl["rows"]] == [("bk-tiny", "c")]
    assert "| bk-tiny | (c) teacher init, + output KD + feature KD | 0 |" in abl_md
    assert "| bk-tiny | onnx fp32 |" in ex_md and ex["rows"][0]["format"] == "onnx"
