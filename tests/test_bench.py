"""Benchmark harness: a tiny matrix end to end, failures recorded, warm-up excluded, memory isolated per scenario."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from bksdm_edge.bench.report import CSV_COLUMNS
from bksdm_edge.bench.runner import run_benchmark
from bksdm_edge.bench.scenario import ConfigError, expand

TESTS = Path(__file__).resolve().parent
REQUIRED = ("model", "component", "backend", "precision", "batch", "resolution", "threads", "median_s", "p90_s",
            "min_s", "cold_s", "load_s", "peak_rss_mb", "size_mb", "speedup_vs_teacher", "mem_ratio_vs_teacher",
            "macs_ratio_vs_teacher", "error")


@pytest.fixture
def plugin_path(monkeypatch):
    # Worker processes import the fake back-ends by module name.
    monkeypatch.setenv("PYTHONPATH", str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return "bench_fake"


def _rows(tmp_path, raw, name="run"):
    doc = run_benchmark(expand(raw), tmp_path / name, cache=tmp_path / "cache", log=lambda m: None)
    return doc, {(r["model"], r["component"], r["backend"], r["precision"]): r for r in doc["rows"]}


def test_tiny_matrix_end_to_end(tmp_path, plugin_path):
    raw = {
        "name": "tiny", "source": "builtin:tiny-sd", "plugins": [plugin_path],
        "defaults": {"resolution": 64, "batch": 1, "threads": 1, "repeats": 2, "warmup": 1, "timeout_s": 300},
        "matrix": [
            {"model": ["teacher", "bk-tiny"], "component": "unet", "backend": "onnxruntime"},
            {"model": "teacher", "component": "unet", "backend": "pytorch"},
            {"model": "teacher", "component": "unet", "backend": "fake-fail"},      # fails at load
            {"model": "teacher", "component": "unet", "backend": "onnxruntime", "precision": "fp3"},  # no such precision
        ],
    }
    doc, rows = _rows(tmp_path, raw)
    out = tmp_path / "run"
    for f in ("results.json", "results.csv", "report.md", "latency_unet.png", "memory_unet.png"):
        assert (out / f).exists(), f
    with open(out / "results.csv") as f:
        reader = csv.DictReader(f)
        assert set(REQUIRED) <= set(reader.fieldnames) and tuple(reader.fieldnames) == CSV_COLUMNS
        assert len(list(reader)) == 5
    stored = json.loads((out / "results.json").read_text())
    assert stored["machine"]["cpu"] and "onnxruntime" in stored["machine"]["versions"]
    assert stored["machine"]["load_average"] is not None and stored["load_average_end"] is not None

    t, s = rows[("teacher", "unet", "onnxruntime", "fp32")], rows[("bk-tiny", "unet", "onnxruntime", "fp32")]
    eager = rows[("teacher", "unet", "pytorch", "fp32")]
    assert s["speedup_vs_teacher_pytorch_fp32"] == pytest.approx(eager["median_s"] / s["median_s"])
    for r in (t, s, eager):
        assert r["error"] is None, r["error"]
        assert r["min_s"] <= r["median_s"] <= r["p90_s"] and len(r["times_s"]) == 2 and len(r["warmup_s"]) == 1
        assert r["cold_s"] >= r["load_s"] > 0 and r["peak_rss_mb"] > 0 and r["size_mb"] > 0
    assert t["speedup_vs_teacher"] == pytest.approx(1.0) and t["macs_ratio_vs_teacher"] == pytest.approx(1.0)
    assert s["speedup_vs_teacher"] == pytest.approx(t["median_s"] / s["median_s"])
    assert s["size_ratio_vs_teacher"] < 1 and 0 < s["macs_ratio_vs_teacher"] < 1
    assert s["mem_ratio_vs_teacher"] == pytest.approx(s["peak_rss_mb"] / t["peak_rss_mb"])
    assert "always fails" in rows[("teacher", "unet", "fake-fail", "fp32")]["error"]
    assert "fp3" in rows[("teacher", "unet", "onnxruntime", "fp3")]["error"]
    report = (out / "report.md").read_text()
    assert "always fails" in report and "| bk-tiny | unet | onnxruntime | fp32 |" in report


def test_timing_excludes_warmup(tmp_path, plugin_path):
    from bench_fake import FAST_S, SLOW_S

    raw = {"source": "builtin:tiny-sd", "plugins": [plugin_path],
           "defaults": {"resolution": 64, "threads": 1, "repeats": 3, "warmup": 1},
           "matrix": [{"model": "teacher", "component": "text_encoder", "backend": "fake-slowstart"}]}
    _, rows = _rows(tmp_path, raw)
    r = rows[("teacher", "text_encoder", "fake-slowstart", "fp32")]
    assert r["error"] is None
    # Calls 1 (cold) and 2 (warm-up) sleep SLOW_S; the timed calls do not.
    assert r["first_run_s"] >= SLOW_S and r["warmup_s"][0] >= SLOW_S
    assert max(r["times_s"]) < SLOW_S / 2 and r["median_s"] >= FAST_S


def test_memory_is_isolated_per_scenario(tmp_path, plugin_path):
    raw = {"source": "builtin:tiny-sd", "plugins": [plugin_path],
           "defaults": {"resolution": 64, "threads": 1, "repeats": 1, "warmup": 0},
           "matrix": [{"model": "teacher", "component": "text_encoder", "backend": "fake-alloc",
                       "options": {"alloc_mb": 600}},
                      {"model": "bk-tiny", "component": "text_encoder", "backend": "fake-alloc",
                       "options": {"alloc_mb": 0}}]}
    _, rows = _rows(tmp_path, raw)
    big, small = rows[("teacher", "text_encoder", "fake-alloc", "fp32")], rows[("bk-tiny", "text_encoder", "fake-alloc", "fp32")]
    assert big["error"] is None and small["error"] is None
    assert big["peak_rss_mb"] > 600
    assert small["peak_rss_mb"] < big["peak_rss_mb"] - 450  # the big buffer of the first scenario is not counted


def test_matrix_expansion_and_errors():
    cfg = expand({"source": "builtin:tiny-sd", "defaults": {"threads": 2},
                  "matrix": [{"model": ["teacher", "bk-tiny"], "component": "unet",
                              "backend": ["pytorch", "onnxruntime"], "precision": ["fp32", "int8"]}],
                  "exclude": [{"backend": "pytorch", "precision": "int8"}]},
                 overrides={"repeats": 7})
    assert len(cfg.scenarios) == 6
    assert all(s.repeats == 7 and s.threads == 2 and s.source == "builtin:tiny-sd" for s in cfg.scenarios)
    with pytest.raises(ConfigError, match="unknown scenario fields"):
        expand({"matrix": [{"model": "teacher", "component": "unet", "backend": "pytorch", "colour": 1}]})
    with pytest.raises(ConfigError, match="unknown component"):
        expand({"matrix": [{"model": "teacher", "component": "unet3", "backend": "pytorch"}]})


def test_ready_configs_expand():
    from bksdm_edge.bench.runner import resolve_config
    from bksdm_edge.bench.scenario import load_config

    for name in ("quick", "cpu-full", "cpu-engines", "gpu", "tiny-vae"):
        cfg = load_config(resolve_config(name))
        assert cfg.scenarios and any(s.is_teacher for s in cfg.scenarios)


def test_resume_and_finalize_keep_rows_and_record_missing(tmp_path, plugin_path):
    base = {"source": "builtin:tiny-sd", "plugins": [plugin_path],
            "defaults": {"resolution": 64, "threads": 1, "repeats": 1, "warmup": 0},
            "matrix": [{"model": "teacher", "component": "text_encoder", "backend": "fake-slowstart"}]}
    out = tmp_path / "run"
    run_benchmark(expand(base), out, cache=tmp_path / "cache", log=lambda m: None)
    first = json.loads((out / "results.json").read_text())["rows"][0]
    more = {**base, "matrix": base["matrix"] + [{"model": "bk-tiny", "component": "text_encoder",
                                                   "backend": "fake-slowstart"}]}
    doc = run_benchmark(expand(more), out, cache=tmp_path / "cache", log=lambda m: None, finalize=True)
    kept, missing = doc["rows"]
    assert kept["times_s"] == first["times_s"] and kept["error"] is None
    assert missing["model"] == "bk-tiny" and missing["error"].startswith("not measured")
    assert (out / "latency_text_encoder.png").exists()


def test_generate_and_exported_bundle_as_model(tmp_path, tiny_model):
    """Full text-to-image (N steps) on PyTorch and ONNX Runtime, and a user's exported bundle measured as it is."""
    from bksdm_edge.export.pipeline import ExportRequest, export_bundle

    bundle = export_bundle(ExportRequest(out=tmp_path / "bundle", model="builtin:tiny-sd", format="onnx",
                                         precision="fp32", height=64, width=64, progress=False), model=tiny_model)
    raw = {
        "name": "gen", "source": "builtin:tiny-sd",
        "defaults": {"resolution": 64, "threads": 1, "repeats": 2, "warmup": 1, "timeout_s": 600, "steps": 3},
        "matrix": [
            {"model": ["teacher", "bk-tiny"], "component": "generate", "backend": ["pytorch", "onnxruntime"],
             "batch": 2},
            {"model": str(bundle), "component": ["unet", "generate"], "backend": "onnxruntime", "batch": 1},
            {"model": str(bundle), "component": "unet", "backend": "onnxruntime", "precision": "int8", "batch": 1},
            {"model": str(bundle), "component": "unet", "backend": "pytorch", "batch": 1},
        ],
    }
    doc, _ = _rows(tmp_path, raw)
    rows = {(Path(r["model"]).name, r["component"], r["backend"], r["precision"], r["batch"]): r for r in doc["rows"]}
    for key in [("teacher", "generate", b, "fp32", 2) for b in ("pytorch", "onnxruntime")] + \
               [("bk-tiny", "generate", b, "fp32", 2) for b in ("pytorch", "onnxruntime")] + \
               [("bundle", c, "onnxruntime", "fp32", 1) for c in ("unet", "generate")]:
        r = rows[key]
        assert r["error"] is None, (key, r["error"])
        assert r["median_s"] > 0 and r["peak_rss_mb"] > 0 and r["size_mb"] > 0
    gen = rows[("teacher", "generate", "onnxruntime", "fp32", 2)]
    assert gen["steps"] == 3 and gen["macs_g"] > 0
    student = rows[("bk-tiny", "generate", "onnxruntime", "fp32", 2)]
    assert student["speedup_vs_teacher"] == pytest.approx(gen["median_s"] / student["median_s"])
    assert 0 < student["macs_ratio_vs_teacher"] < 1
    # One image of 3 steps costs more than one U-Net call of the same bundle.
    assert rows[("bundle", "generate", "onnxruntime", "fp32", 1)]["median_s"] > \
        rows[("bundle", "unet", "onnxruntime", "fp32", 1)]["median_s"]
    assert "set precision: fp32" in rows[("bundle", "unet", "onnxruntime", "int8", 1)]["error"]
    assert "runs on its format's backend" in rows[("bundle", "unet", "pytorch", "fp32", 1)]["error"]
    assert "| 3 |" in (tmp_path / "run" / "report.md").read_text()
    # Where a whole image's time goes: text encoder, U-Net calls, VAE decoder (diffusers and the bundle pipeline).
    for key in (("teacher", "generate", "pytorch", "fp32", 2), ("bk-tiny", "generate", "onnxruntime", "fp32", 2)):
        r = rows[key]
        shares = [r[f"{c}_share"] for c in ("text_encoder", "unet", "vae_decoder")]
        assert all(0 < x < 1 for x in shares) and sum(shares) <= 1 + 1e-9, (key, shares)
        assert set(r["component_s"]) == {"text_encoder", "unet", "vae_decoder", "other"}
        assert sum(r["component_s"].values()) == pytest.approx(r["median_s"], rel=0.2)
    assert "text enc / U-Net / VAE dec" in (tmp_path / "run" / "report.md").read_text()


def test_lcm_model_suffix_builds_the_few_step_architecture():
    """``bk-tiny+lcm``: the variant with a guidance embedding and LCMScheduler; its MACs are the variant's."""
    import torch

    from bksdm_edge.bench.backends import PIPELINE_PARTS, load_scenario_model
    from bksdm_edge.bench.runner import paper_macs
    from bksdm_edge.bench.scenario import Scenario

    s = Scenario(model="bk-tiny+lcm", component="generate", backend="pytorch", source="builtin:tiny-sd",
                 resolution=64, steps=2)
    model = load_scenario_model(s, PIPELINE_PARTS)
    assert model.is_lcm and type(model.scheduler).__name__ == "LCMScheduler"
    assert model.unet.config.mid_block_type is None and model.unet.config.time_cond_proj_dim == 256
    # A never-distilled stand-in clips its x_0 estimate, so its latents stay in a trained model's range (int8
    # calibration); unclipped, the 1/sqrt(alpha_bar) of t ~ 999 grows them step by step.
    assert model.scheduler.config.clip_sample and model.scheduler.config.clip_sample_range == 4.0
    pipe = model.to_pipeline()
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        latents = pipe("a photo", num_inference_steps=4, height=64, width=64, output_type="latent",
                       generator=torch.Generator().manual_seed(0)).images
    assert float(latents.abs().max()) <= 4.0 + 1e-3
    macs = paper_macs([s, Scenario(model="bk-tiny", component="unet", backend="pytorch", source="builtin:tiny-sd",
                                   resolution=64)], log=lambda m: None)
    for c, same_as in (("unet", "bk-tiny"), ("text_encoder", "teacher"), ("vae_decoder", "teacher")):
        assert macs[("builtin:tiny-sd", "bk-tiny+lcm", c, 64, "teacher")] == \
            macs[("builtin:tiny-sd", same_as, c, 64, "teacher")] > 0


def test_vae_field_times_a_tiny_decoder_against_the_teachers(tmp_path):
    """``vae: tiny`` rows: their own artifact, compared with the SD decoder's row of the same backend and run."""
    raw = {
        "name": "vae", "source": "builtin:tiny-sd",
        "defaults": {"model": "teacher", "component": "vae_decoder", "resolution": 64, "threads": 1, "repeats": 2,
                     "warmup": 1, "timeout_s": 300},
        "matrix": [{"vae": ["teacher", "tiny"], "backend": ["pytorch", "onnxruntime"]}],
    }
    doc = run_benchmark(expand(raw), tmp_path / "run", cache=tmp_path / "cache", log=lambda m: None)
    rows = {(r["vae"], r["backend"]): r for r in doc["rows"]}
    assert len(rows) == 4 and all(r["error"] is None for r in rows.values()), [r["error"] for r in rows.values()]
    for backend in ("pytorch", "onnxruntime"):
        sd, tiny = rows[("teacher", backend)], rows[("tiny", backend)]
        assert sd["speedup_vs_teacher"] == pytest.approx(1.0)
        assert tiny["speedup_vs_teacher"] == pytest.approx(sd["median_s"] / tiny["median_s"])
        assert tiny["macs_g"] != sd["macs_g"] and tiny["macs_ratio_vs_teacher"] == pytest.approx(
            tiny["macs_g"] / sd["macs_g"])
    assert rows[("tiny", "onnxruntime")]["size_mb"] != rows[("teacher", "onnxruntime")]["size_mb"]
    assert "| teacher | vae_decoder | onnxruntime | fp32 |  | tiny |" in (tmp_path / "run" / "report.md").read_text()
    with pytest.raises(ConfigError, match="vae: tiny applies to"):
        expand({"matrix": [{"model": "teacher", "component": "unet", "backend": "pytorch", "vae": "tiny"}]})


def test_plot_of_a_full_cpu_run_is_horizontal_and_marks_peers(tmp_path):
    """A run with more than 8 back-end groups (cpu-full has 15) is drawn with one group per line, peers labelled."""
    from matplotlib import image

    from bksdm_edge.bench.report import _plot_group, plot

    rows = [{"component": "unet", "backend": f"engine{i}", "precision": "int8", "variant": "", "device": "cpu",
             "model": model, "median_s": 0.5 + i, "peak_rss_mb": 900.0 + i, "resolution": 512, "batch": 1,
             "peer": i == 14, "error": ""}
            for i in range(15) for model in ("teacher", "bk-base", "bk-small", "bk-tiny")]
    assert _plot_group(rows[-1]) == "engine14-int8 (peer)"
    paths = plot(rows, tmp_path)
    assert [p.name for p in paths] == ["latency_unet.png", "memory_unet.png"]
    height, width = image.imread(paths[0]).shape[:2]
    assert height > width  # one line per group, not a 4-inch-high strip
