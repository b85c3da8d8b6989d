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


def test_export_refuses_before_any_work_when_a_conversion_would_not_fit(tiny_model, tmp_path):
    """The pre-flight runs on every component before recording: too little memory is one message with the
    estimate and the fixes, and nothing is written."""
    from bksdm_edge.export.pipeline import ExportRequest, export_bundle

    out = tmp_path / "bundle"
    request = ExportRequest(out=out, model="builtin:tiny-sd", precision="int8", batch=2, progress=False,
                            memory_limit=1024)
    with pytest.raises(MemoryRefused) as err:
        export_bundle(request, model=tiny_model)
    message = str(err.value)
    assert "ONNX int8 conversion of the" in message and "x fp32 weights" in message and "needs about" in message
    assert "--batch 1" in message and "--memory-limit" in message and "nothing was started" in message
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("fmt, precision", [("onnx", "int8"), ("onnx", "fp32"), ("tflite", "w8a8")])
def test_every_onnx_and_tflite_component_has_an_estimate_that_grows_with_batch(tiny_model, tmp_path, fmt, precision):
    from bksdm_edge.export.components import ShapeConfig
    from bksdm_edge.export.memory import activation_bytes, component_weight_bytes
    from bksdm_edge.export.registry import get_target

    target = get_target(fmt, precision)
    for component in ("text_encoder", "unet", "vae_decoder", "vae_encoder"):
        one, two = (target.memory_estimate(component, tiny_model, ShapeConfig(height=64, width=64, batch=b),
                                           target.options(component)) for b in (1, 2))
        assert one.total > component_weight_bytes(tiny_model, component) > 0
        assert two.total >= one.total
    # The U-Net's largest attention scores: batch x heads x (latent tokens)^2 floats at its first attention stage.
    a1 = activation_bytes(tiny_model, "unet", 512, 512, 1)
    assert activation_bytes(tiny_model, "unet", 512, 512, 2) == 2 * a1 and a1 > 0
