"""benchmarks/lcm_goals.py: issue 13's whole-image goals read from one lcm bench run (synthetic rows)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _goals():
    spec = importlib.util.spec_from_file_location("_bench_lcm_goals", ROOT / "benchmarks" / "lcm_goals.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _row(model, backend, precision, steps, batch, seconds, split=None, error=None, vae="teacher"):
    return {"model": model, "component": "generate", "backend": backend, "precision": precision, "steps": steps,
            "vae": vae,
            "batch": batch, "median_s": seconds, "peak_rss_mb": 1000.0, "error": error,
            "component_s": split}


def test_goals_from_a_run(tmp_path):
    g = _goals()
    rows = [_row("teacher", "pytorch", "fp32", 25, 2, 250.0, {"text_encoder": 1, "unet": 240, "vae_decoder": 8, "other": 1}),
            _row("bk-tiny", "onnxruntime", "int8", 25, 2, 40.0, {"text_encoder": 0.2, "unet": 36, "vae_decoder": 3, "other": 0.8}),
            _row("bk-tiny+lcm", "onnxruntime", "int8", 4, 1, 8.0, {"text_encoder": 0.2, "unet": 4.5, "vae_decoder": 3, "other": 0.3}),
            _row("bk-tiny+lcm", "onnxruntime", "int8", 2, 1, None, error="export failed: x")]
    (tmp_path / "results.json").write_text(json.dumps({"name": "lcm", "rows": rows, "machine": {"cpu": "here"}}))
    assert g.main([str(tmp_path)]) == 0
    out = json.loads((tmp_path / "goals.json").read_text())
    assert out["goals"]["lcm4_seconds"]["met"] and out["goals"]["lcm4_speedup"]["value"] == 250.0 / 8.0
    md = (tmp_path / "goals.md").read_text()
    assert "| bk-tiny+lcm | onnxruntime | int8 | teacher | 4 | no | 8.00 | 31.2x | 1000 | 0.20 (2%) | 4.50 (56%) |" in md
    assert "error: export failed" in md
    # 9 s (27.8x) meets both goals; 11 s (22.7x) neither, and the script says so and fails.
    rows[0]["median_s"], rows[2]["median_s"] = 250.0, 9.0
    (tmp_path / "results.json").write_text(json.dumps({"name": "lcm", "rows": rows}))
    assert g.main([str(tmp_path)]) == 0
    rows[2]["median_s"] = 11.0
    (tmp_path / "results.json").write_text(json.dumps({"name": "lcm", "rows": rows}))
    assert g.main([str(tmp_path)]) == 1
    assert "NOT met" in (tmp_path / "goals.md").read_text()


def test_goals_per_vae_decoder_on_the_fastest_row(tmp_path):
    """The goals are read on the fastest LCM 4-step row with each decoder; the tiny decoder's rows get their own."""
    g = _goals()
    rows = [_row("teacher", "pytorch", "fp32", 25, 2, 250.0),
            _row("bk-tiny+lcm", "onnxruntime", "int8", 4, 1, 12.0),
            _row("bk-tiny+lcm", "openvino", "int8", 4, 1, 11.0),
            _row("bk-tiny+lcm", "openvino", "int8", 4, 1, 3.0, vae="tiny")]
    (tmp_path / "results.json").write_text(json.dumps({"name": "lcm", "rows": rows}))
    assert g.main([str(tmp_path)]) == 1  # the SD decoder's 11 s misses < 10 s
    goals = json.loads((tmp_path / "goals.json").read_text())["goals"]
    assert goals["lcm4_seconds"]["value"] == 11.0 and not goals["lcm4_seconds"]["met"]
    assert goals["lcm4_tiny_vae_seconds"]["met"] and goals["lcm4_tiny_vae_speedup"]["value"] == 250.0 / 3.0
    assert "| bk-tiny+lcm | openvino | int8 | tiny | 4 | no | 3.00 | 83.3x |" in (tmp_path / "goals.md").read_text()
