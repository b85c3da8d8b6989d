"""Parsers of on-device benchmark tools (real outputs in tests/data/bench, see SOURCES.md) and result import."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from bksdm_edge.bench.android import ToolOutputError, parse_benchmark_model, parse_perf_test
from bksdm_edge.bench.importing import ImportFormatError, load_rows
from bksdm_edge.bench.runner import add_ratios

DATA = Path(__file__).resolve().parent / "data" / "bench"


def test_benchmark_model_output():
    r = parse_benchmark_model((DATA / "tflite_benchmark_model_tf42507.txt").read_text())
    assert r["load_s"] == pytest.approx(855e-6)
    assert r["first_run_s"] == pytest.approx(0.049060)
    assert r["warmup_avg_s"] == pytest.approx(0.0348251)
    assert r["median_s"] == pytest.approx(0.0332094) and r["mean_s"] == r["median_s"]
    assert r["repeats"] == 50 and r["min_s"] == pytest.approx(0.032641) and r["max_s"] == pytest.approx(0.034005)
    assert r["peak_rss_mb"] == pytest.approx(12.8672)


@pytest.mark.parametrize("name,load,mean,repeats,peak", [
    ("ort_perf_test_acl850.txt", 0.127918, 0.144871, 10, 158171136 / 2**20),
    ("ort_perf_test_pr2798.txt", 1.84149, 0.734606, 1, None),
])
def test_perf_test_output(name, load, mean, repeats, peak):
    r = parse_perf_test((DATA / name).read_text())
    assert r["load_s"] == pytest.approx(load) and r["mean_s"] == pytest.approx(mean)
    assert r["median_s"] == r["mean_s"] and r["repeats"] == repeats
    assert r.get("peak_rss_mb") == (pytest.approx(peak) if peak else None)


def test_perf_test_percentiles():
    r = parse_perf_test((DATA / "ort_perf_test_ort17313.txt").read_text())
    assert r["mean_s"] == pytest.approx(0.0588053) and r["repeats"] == 1000
    assert r["median_s"] == pytest.approx(0.0587108) and r["p90_s"] == pytest.approx(0.0599845)
    assert r["min_s"] == pytest.approx(0.0559777)


def test_parsers_reject_other_text():
    with pytest.raises(ToolOutputError):
        parse_benchmark_model((DATA / "ort_perf_test_acl850.txt").read_text())
    with pytest.raises(ToolOutputError):
        parse_perf_test((DATA / "tflite_benchmark_model_tf42507.txt").read_text())


def test_android_flow_with_fake_adb(tmp_path):
    """The adb flow end to end with a stand-in adb that prints benchmark_model's real output."""
    from bksdm_edge.bench.android import measure_on_android
    from bksdm_edge.bench.scenario import Scenario

    art = tmp_path / "art"
    art.mkdir()
    (art / "model.tflite").write_bytes(b"tfl3")
    (art / "artifact.json").write_text(json.dumps({"files": ["model.tflite"], "main": "model.tflite"}))
    calls = tmp_path / "calls.txt"
    adb = tmp_path / "adb"
    adb.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n"
                   f"case \"$*\" in *benchmark_model\\ --graph*) cat {DATA / 'tflite_benchmark_model_tf42507.txt'};; esac\n")
    adb.chmod(adb.stat().st_mode | stat.S_IEXEC)
    s = Scenario(model="bk-tiny", component="unet", backend="litert", precision="fp16", device="android:SER1",
                 threads=4, repeats=50)
    row = measure_on_android(s, art, {"adb": str(adb), "benchmark_model": "/opt/benchmark_model"})
    assert row["median_s"] == pytest.approx(0.0332094) and row["peak_rss_mb"] == pytest.approx(12.8672)
    log = calls.read_text()
    assert "-s SER1 push" in log and "--num_threads=4" in log and "--num_runs=50" in log


def test_import_json_and_csv(tmp_path):
    j = tmp_path / "iphone.json"
    j.write_text(json.dumps({"defaults": {"component": "unet", "backend": "coreml", "precision": "fp16",
                                          "device": "iphone-14"},
                             "rows": [{"model": "teacher", "median_s": 0.6, "peak_rss_mb": 1600},
                                      {"model": "bk-tiny", "median_s": 0.3, "peak_rss_mb": 800}]}))
    c = tmp_path / "mac.csv"
    c.write_text("model,component,backend,precision,device,median_s\nbk-tiny,unet,coreml,fp16,mac,\n")
    rows = load_rows(j)
    add_ratios(rows)
    assert rows[1]["speedup_vs_teacher"] == pytest.approx(2.0) and rows[1]["mem_ratio_vs_teacher"] == pytest.approx(0.5)
    assert rows[0]["resolution"] == 512 and rows[0]["batch"] == 1
    with pytest.raises(ImportFormatError, match="median_s"):
        load_rows(c)
