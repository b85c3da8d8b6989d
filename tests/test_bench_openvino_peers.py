"""Benchmark rows for OpenVINO (precision hint and kernels recorded), peers (stable-diffusion.cpp) marked as such,
and the fastest-path ranking behind ``bksdm-edge export --format auto``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bksdm_edge.bench.runner import run_benchmark
from bksdm_edge.bench.scenario import Scenario, expand

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def plugin_path(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return "bench_fake"


def test_peer_rows_use_the_engine_reported_time_and_are_marked(tmp_path, plugin_path):
    from bench_fake import PEER_CALL_S, PEER_WALL_S

    raw = {"name": "peer", "source": "builtin:tiny-sd", "plugins": [plugin_path],
           "defaults": {"resolution": 64, "threads": 1, "repeats": 2, "warmup": 0, "timeout_s": 300},
           "matrix": [{"model": "teacher", "component": "unet", "backend": "fake-peer"}]}
    doc = run_benchmark(expand(raw), tmp_path / "run", cache=tmp_path / "cache", log=lambda m: None)
    (row,) = doc["rows"]
    assert row["error"] is None and row["peer"] is True
    assert row["median_s"] == pytest.approx(PEER_CALL_S) and row["times_s"] == [PEER_CALL_S] * 2
    assert len(row["run_wall_s"]) == 3 and min(row["run_wall_s"]) >= PEER_WALL_S  # first run + 2 timed
    assert "| fake-peer (peer) |" in (tmp_path / "run" / "report.md").read_text()


def test_openvino_rows_record_precision_hint_and_kernels(tmp_path):
    pytest.importorskip("openvino")
    from bksdm_edge.export.openvino import cpu_has_bf16

    raw = {"name": "ov", "source": "builtin:tiny-sd",
           "defaults": {"resolution": 64, "threads": 1, "repeats": 1, "warmup": 0, "timeout_s": 600},
           "matrix": [{"model": "bk-tiny", "component": "unet", "backend": "openvino", "precision": "fp32"},
                      {"model": "bk-tiny", "component": "unet", "backend": "openvino", "precision": "fp32",
                       "variant": "bf16", "options": {"runner": {"inference_precision": "bf16"}}}]}
    doc = run_benchmark(expand(raw), tmp_path / "run", cache=tmp_path / "cache", log=lambda m: None)
    f32, bf16 = doc["rows"]
    for r in (f32, bf16):
        assert r["error"] is None and r["peer"] is False and r["median_s"] > 0, r["error"]
        assert r["backend_info"]["threads"] == 1
        assert any(k.startswith(("Convolution:", "FullyConnected:")) for k in r["backend_info"]["kernels"])
    assert f32["backend_info"]["inference_precision"] == "f32"
    assert bf16["backend_info"]["inference_precision"] == ("bf16" if cpu_has_bf16() else "f32")
    # The bf16 row reuses the fp32 IR: runner options do not change the artifact.
    assert f32["size_mb"] == bf16["size_mb"]


def test_sdcpp_refuses_what_it_cannot_run():
    from bksdm_edge.bench.backends import BackendUnavailable, get_backend
    from bksdm_edge.bench.peers import sdcpp_version

    backend = get_backend("sdcpp")
    if not sdcpp_version():
        with pytest.raises(BackendUnavailable, match="not installed"):
            backend.check(Scenario(model="teacher", component="unet", backend="sdcpp", precision="q8_0"))
        return
    for kwargs, why in (({"model": "bk-small"}, "no path for bk-small"), ({"component": "vae_decoder"}, "per U-Net"),
                        ({"batch": 2}, "batch 1"), ({"precision": "int8"}, "no precision 'int8'")):
        s = Scenario(**{"model": "bk-tiny", "component": "unet", "backend": "sdcpp", "precision": "q8_0", **kwargs})
        with pytest.raises(BackendUnavailable, match=why):
            backend.check(s)
    backend.check(Scenario(model="bk-tiny", component="unet", backend="sdcpp", precision="q8_0"))


def test_text_encoder_keys_get_the_prefix_stable_diffusion_cpp_maps(tmp_path, tiny_model):
    from safetensors.numpy import load_file

    from bksdm_edge.bench.peers import fix_text_encoder_keys

    tiny_model.text_encoder.save_pretrained(tmp_path / "text_encoder", safe_serialization=True)
    before = list(load_file(str(tmp_path / "text_encoder" / "model.safetensors")))
    renamed = fix_text_encoder_keys(tmp_path)
    after = list(load_file(str(tmp_path / "text_encoder" / "model.safetensors")))
    assert all(k.startswith("text_model.") for k in after) and len(after) == len(before)
    assert renamed == sum(not k.startswith("text_model.") for k in before)
    assert fix_text_encoder_keys(tmp_path) == 0  # idempotent


def _run(tmp_path, name, cpu_flags, rows, matrix=()):
    d = tmp_path / name
    d.mkdir()
    doc = {"machine": {"cpu": name, "cpu_flags": cpu_flags}, "config": {"matrix": list(matrix)}, "rows": rows}
    (d / "results.json").write_text(json.dumps(doc))
    return d


def _row(backend, precision, median, model="bk-tiny", **kw):
    return {"model": model, "component": "unet", "backend": backend, "precision": precision, "median_s": median,
            "error": None, "device": "cpu", "variant": "", **kw}


def test_fastest_path_ranking_by_cpu_isa(tmp_path):
    from bksdm_edge.bench.recommend import candidates, load_runs

    amx = ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16"]
    epyc = ["avx2", "avx512f", "avx512_vnni", "avx512_bf16"]
    _run(tmp_path, "xeon", amx, [
        _row("openvino", "int8", 0.38, variant="bf16", backend_info={"inference_precision": "bf16"}),
        _row("openvino", "int8", 0.50, variant="attention-int8", backend_info={"inference_precision": "bf16"}),
        _row("litert", "int8", 0.80), _row("pytorch", "bf16", 0.30), _row("sdcpp", "q8_0", 0.1, peer=True)],
        matrix=[{"variant": "bf16", "options": {"runner": {"inference_precision": "bf16"}}},
                {"variant": "attention-int8", "options": {"export": {"attention": "int8"}}}])
    _run(tmp_path, "epyc", epyc, [_row("onnxruntime", "int8", 1.21), _row("litert", "int8", 1.18),
                                  _row("onnxruntime", "fp32", 2.0, error="boom"), _row("openvino", "fp32", 0.9,
                                                                                      component="vae_decoder")])
    runs = load_runs([tmp_path])
    # PyTorch, peers, errors, other components and export-recipe probes never count.
    xeon = candidates(runs, frozenset(amx))
    assert [(c.format, c.precision, c.inference_precision) for c in xeon] == [("openvino", "int8", "bf16"),
                                                                             ("tflite", "int8", None)]
    assert xeon[0].exact_isa and xeon[0].cpu == "xeon"
    assert [(c.format, c.median_s) for c in candidates(runs, frozenset(epyc))] == [("tflite", 1.18), ("onnx", 1.21)]
    # An unmeasured CPU gets the closest measured one's ranking, flagged as not exact.
    zen5 = candidates(runs, frozenset(epyc + ["avx_vnni"]))
    assert zen5[0].cpu == "epyc" and not zen5[0].exact_isa
    assert candidates(load_runs([tmp_path / "nothing"]), frozenset(epyc)) == []


def test_export_auto_picks_the_fastest_and_says_why(tmp_path, capsys):
    """`export --format auto` ranks from the given results and exports the first available target."""
    pytest.importorskip("openvino")
    from bksdm_edge.cli import main

    flags = sorted(__import__("bksdm_edge.bench.recommend", fromlist=["this_cpu_key"]).this_cpu_key())
    results = _run(tmp_path, "here", flags, [_row("openvino", "fp32", 0.5), _row("onnxruntime", "fp32", 0.9)])
    out = tmp_path / "bundle"
    assert main(["export", "--format", "auto", "--results", str(results), "--model", "builtin:tiny-sd",
                 "--components", "text_encoder", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "benchmark runs on a CPU with this ISA" in text and "exporting openvino fp32" in text
    assert json.loads((out / "manifest.json").read_text())["format"] == "openvino"
