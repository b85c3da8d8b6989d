"""The benchmark scripts run end to end at toy size (builtin:tiny-sd) through the library's child runner."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_train_bench_cached_run_in_two_children(tmp_path):
    """Cache build and training each in their own child; the row keeps the committed results' column names."""
    from bksdm_edge.distill.synthetic import make_synthetic_folder

    tb = _script("train_bench")
    data = make_synthetic_folder(tmp_path / "data", rows=4, size=64)
    run = tb.TrainRun.make("smoke", "builtin:tiny-sd", "bk-small", 64, 2, cached=True, steps=1, warmup=1, threads=1)
    assert tb.TrainRun.from_json(json.loads(json.dumps(run.to_json()))) == run
    row = tb.measure(run, data, tmp_path)
    assert row["ok"], row.get("error")
    committed = json.loads((ROOT / "benchmarks/results/train/train_bench_cpu.json").read_text())["rows"][0]
    assert set(committed) - {"error", "oom", "peak_cuda_mb", "gpu"} <= set(row)
    assert row["mixed_precision"] == "no" and row["batch_size"] == 2 and row["images_per_s"] > 0
    assert 200 < row["peak_rss_mb"] < 4000 and 200 < row["cache_peak_rss_mb"] < 4000 and row["cache_rows"] == 4
    assert "| smoke | yes | cpu | 2 | 64 |" in tb.to_markdown({"cpu": "test"}, [row], "cmd")


@pytest.mark.slow
def test_conversion_scripts_at_toy_size(tmp_path):
    """coreml_conversion.py (fp16 then palettize6 from its package) and tflite_conversion.py (fp32 and a w8a8
    refusal-free run) on builtin:tiny-sd, without the heavy-job lock: a few minutes on 2 cores."""
    env = {"HF_HUB_OFFLINE": "1"}
    cm = subprocess.run([sys.executable, str(ROOT / "benchmarks/coreml_conversion.py"), "--source", "builtin:tiny-sd",
                         "--lock", "", "--out", str(tmp_path / "cm"), "--work", str(tmp_path / "cm-work")],
                        capture_output=True, text=True, timeout=1800, env={**_env(), **env})
    assert cm.returncode == 0, cm.stderr[-2000:]
    rows = json.loads((tmp_path / "cm/results.json").read_text())["rows"]
    assert [r["precision"] for r in rows] == ["fp16", "palettize6"]
    assert all(r["static_check"] == "passed" and r["peak_rss_mb"] > 100 for r in rows)
    assert "ISA:" in (tmp_path / "cm/results.md").read_text()
    tf = subprocess.run([sys.executable, str(ROOT / "benchmarks/tflite_conversion.py"), "--scenarios",
                         "tiny-sd/bk-tiny:fp32,tiny-sd/teacher:int8:no-lw", "--lock", "", "--out", str(tmp_path / "tf"),
                         "--work", str(tmp_path / "tf-work")],
                        capture_output=True, text=True, timeout=1800, env={**_env(), **env})
    assert tf.returncode == 0, tf.stderr[-2000:]
    rows = {r["scenario"]: r for r in json.loads((tmp_path / "tf/results.json").read_text())["rows"]}
    fp32, int8 = rows["tiny-sd/bk-tiny:fp32"], rows["tiny-sd/teacher:int8:no-lw"]
    assert fp32["status"] == "ok" and fp32["validation"]["seed5"]["psnr_db"] > 60
    assert int8["status"] == "ok" and int8["lightweight"] is False and int8["peak_rss_process_gib"] > 0.1


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def test_openvino_profile_script_on_a_toy_ir(tmp_path, capsys):
    """benchmarks/openvino_profile.py: the split by layer type and U-Net block; a missing IR is one line, exit 2."""
    pytest.importorskip("openvino")
    import numpy as np
    import openvino as ov
    from _export_helpers import seeded_feeds, tiny_ov_bundle

    unet = tiny_ov_bundle("fp32") / "unet"
    np.savez(tmp_path / "feeds.npz", **seeded_feeds(ov.Core().read_model(str(unet / "openvino_model.xml")).inputs))
    script = _script("openvino_profile")
    main = lambda argv: script.run_entry_point(argv, script.parse, script.run)  # noqa: E731 - the script's __main__
    assert main([str(unet), "--inputs", str(tmp_path / "feeds.npz"), "--threads", "1", "--warmup", "0",
                 "--json", str(tmp_path / "nodes.json")]) == 0
    out = capsys.readouterr().out
    assert "per U-Net block:" in out and "down_blocks.0" in out and "Convolution" in out
    assert json.loads((tmp_path / "nodes.json").read_text())["nodes"]
    assert main([str(unet)]) == 2
    err = capsys.readouterr().err
    assert "no recorded inputs; pass --inputs" in err and len(err.strip().splitlines()) == 1
