"""Export stage log (export/stages.py) and the shared pre-flight memory check (export/memory.py)."""

import sys

import numpy as np
import pytest

from bksdm_edge.export.memory import GIB, MemoryEstimate, MemoryRefused, PeakModel, available_memory, check_fits
from bksdm_edge.export.stages import StageLog, peak_rss_bytes, stage


def test_stage_outside_a_log_is_a_no_op():
    with stage("calibrate", "unet", total=3) as progress:
        progress.update()


def test_stages_record_time_nesting_and_their_own_peak(capsys):
    with StageLog(show=True) as log:
        with stage("convert", "unet"):
            big = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
            big[:] = 2
            with stage("calibrate", total=2, detail="2 samples") as progress:
                progress.update(2)
            del big
        with stage("validate", "unet"):
            pass
    records = {r.stage: r for r in log.records}
    assert [r.stage for r in log.records] == ["calibrate", "convert", "validate"]  # inner stages close first
    assert records["calibrate"].depth == 1 and records["convert"].depth == 0
    assert records["convert"].component == "unet" and records["calibrate"].detail == "2 samples"
    assert all(r.seconds >= 0 and r.cpu_seconds >= 0 for r in log.records)
    if sys.platform.startswith("linux"):
        # The convert stage saw the 64 MiB array; the validate stage, after it was freed, did not.
        assert records["convert"].peak_rss_bytes - records["validate"].peak_rss_bytes > 48 * 2**20
    assert log.peak_rss_bytes >= records["convert"].peak_rss_bytes
    doc = log.to_json()
    assert doc["stages"][0]["depth"] == 1 and "depth" not in doc["stages"][1]  # top-level stages omit it
    assert doc["total_cpu_seconds"] >= 0 and doc["peak_rss_bytes"] == log.peak_rss_bytes
    err = capsys.readouterr().err
    assert "unet: convert ..." in err and "unet: validate" in err  # which stage is running, on stderr


def test_quiet_log_prints_nothing(capsys):
    with StageLog(show=False):
        with stage("record inputs"):
            pass
    assert capsys.readouterr().err == ""


def test_peak_rss_is_positive():
    assert peak_rss_bytes() > 0


def test_memory_refusal_names_the_number_its_parts_and_the_fix():
    estimate = MemoryEstimate("ONNX int8 export of unet", (("model", 4 * GIB), ("calibration", 13 * GIB)))
    assert estimate.total == 17 * GIB
    with pytest.raises(MemoryRefused, match=r"needs about 17\.0 GiB .*model 4\.0 \+ calibration 13\.0 GiB.* "
                                            r"only 16\.0 GiB is available; nothing was started\. To fit: use fp16"):
        check_fits(estimate, limit=16 * GIB, fixes=["use fp16"], override="pass --max-memory")
    assert check_fits(estimate, limit=18 * GIB) == 17 * GIB
    assert MemoryRefused.exit_code == 2  # bad input / refused job, not a failed validation


def test_peak_model_is_linear_in_weights_and_activations():
    model = PeakModel(GIB, 2.0, 3.0)
    assert model.bytes_for(GIB, GIB) == 6 * GIB
    assert available_memory() > 0
