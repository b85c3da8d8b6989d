"""The tiny decoder exports in every registered format x precision and passes the shared validation.

Toy size: builtin:tiny-sd with ``--vae tiny`` (the TAESD architecture sized for it, seeded weights), 64 px, the
vae_decoder component through ``export_bundle`` / ``export_coreml_bundle`` exactly as a user's export. ONNX and
TFLite run the converted decoder in their runtimes against PyTorch (seeded inputs and a real denoising
trajectory); Core ML runs the static checks Linux allows (spec, stored weights and their PSNR). The tiny
encoder's export is in tests/test_tiny_vae.py. TFLite's fp16, int8-weight-only and w8a8 (each a litert-torch
conversion, ~30 CPU-s) run with ``-m slow``; fp32 and int8 run by default.
"""

from __future__ import annotations

import json

import pytest

from bksdm_edge.export.registry import all_targets
from bksdm_edge.loading import load_model

DEFAULT_TFLITE = ("fp32", "int8")


def _targets():
    for fmt, precision in sorted(all_targets()):
        slow = fmt == "tflite" and precision not in DEFAULT_TFLITE
        yield pytest.param(fmt, precision, id=f"{fmt}-{precision}", marks=[pytest.mark.slow] if slow else [])


@pytest.fixture(scope="module")
def model():
    return load_model("builtin:tiny-sd", vae="tiny")


@pytest.fixture(scope="module")
def one_prompt(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "calibration.txt"
    path.write_text("a red car\n")
    return path


@pytest.mark.parametrize("fmt,precision", list(_targets()))
def test_tiny_decoder_exports_and_validates(fmt, precision, model, one_prompt, tmp_path):
    if fmt == "coreml":
        from bksdm_edge.export.coreml_bundle import CoreMLExportConfig, export_coreml_bundle

        bundle = export_coreml_bundle(
            CoreMLExportConfig(model="builtin:tiny-sd", vae="tiny", out=tmp_path / "b", precision=precision,
                               components=("vae_decoder",), weight_threshold=256, validation_steps=2),
            model=model, log=lambda *_: None)
        assert (bundle / "Resources" / "VAEDecoder.mlpackage").is_dir()
    else:
        from bksdm_edge.export.pipeline import export_bundle
        from bksdm_edge.export.request import Calibration, ExportRequest, Validation

        bundle = export_bundle(ExportRequest(
            out=tmp_path / "b", model="builtin:tiny-sd", vae="tiny", format=fmt, precision=precision,
            components=("vae_decoder",), validation=Validation(steps=2),
            calibration=Calibration(prompts=one_prompt, steps=2), progress=False), model=model)
    manifest = json.loads((bundle / "manifest.json").read_text())
    report = json.loads((bundle / "validation.json").read_text())
    assert manifest["vae"]["kind"] == "autoencoder-tiny" and manifest["latent_scaling_factor"] == 1.0
    assert manifest["source"]["vae"] == "tiny"
    decoder = report["components"]["vae_decoder"]
    assert report["passed"] and decoder["passed"]
    if fmt != "coreml":  # Core ML runs on macOS only: the static checks stand in for the numeric ones here
        assert decoder["numeric_checks"] == "run"
        assert any(s["name"].startswith("trajectory") for s in decoder["sets"])
