"""bksdm_edge/bench/unet_batch.py (the evidence for the ONNX U-Net's default batch axis) on a toy model: every
CFG-step way is timed, gives the same output, and the report is written, with the variants loaded together and,
where they would not fit in memory (full-size SD-v1.4 fp32 on 24 GB), one at a time."""

from __future__ import annotations

import json

import pytest

from bksdm_edge.bench import unet_batch


CONFIG = unet_batch.StudyConfig(source="builtin:tiny-sd", models=("teacher",), resolution=64, repeats=2, warmup=0)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The three exports of the toy U-Net, made once for both ways of measuring."""
    cache = tmp_path_factory.mktemp("unet_batch") / "cache"
    unet_batch.prepare(CONFIG, cache, log=lambda _: None)
    return cache


@pytest.mark.parametrize("together", [True, False])
def test_study_on_a_toy_unet(exported, tmp_path, monkeypatch, together):
    monkeypatch.setattr(unet_batch, "fits_together", lambda records: together)
    doc = unet_batch.measure(CONFIG, exported, log=lambda _: None)
    assert [r["cfg_step"] for r in doc["rows"]] == list(unet_batch.CFG_STEP)
    for r in doc["rows"]:
        assert len(r["times_s"]) == 2 and r["median_s"] > 0
        assert r["max_abs_diff_vs_static_b2"] < 1e-3
        assert r["rounds"] == ("interleaved" if together else "one variant loaded at a time")
    paths = unet_batch.write_results(doc, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "results.json").read_text())["rows"] == doc["rows"]
    assert ("| one variant loaded at a time |" in (tmp_path / "out" / "report.md").read_text()) is not together
    assert all(p.exists() for p in paths)
