"""The tiny decoder exports in every registered format x precision and passes the shared validation.

Toy size: builtin:tiny-sd with ``--vae tiny`` (the TAESD architecture sized for it, seeded weights), 64 px, the
vae_decoder component through ``export_bundle`` exactly as a user's export. ONNX and
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
    from bksdm_edge.export.pipeline import export_bundle
    from bksdm_edge.export.registry import default_precision
    from bksdm_edge.export.request import Calibration, ExportRequest, Validation

    options = {"weight_threshold": 256} if fmt == "coreml" else {}  # toy weights: compress them too
    # The tiny encoder too at each format's default precision (Core ML: as moments Swift samples from).
    components = ("vae_decoder", "vae_encoder") if precision == default_precision(fmt) else ("vae_decoder",)
    bundle = export_bundle(ExportRequest(
        out=tmp_path / "b", model="builtin:tiny-sd", vae="tiny", format=fmt, precision=precision,
        components=components, validation=Validation(steps=2), calibration=Calibration(prompts=one_prompt, steps=2),
        progress=False, options=options), model=model)
    if fmt == "coreml":
        packages = ("VAEDecoder", "VAEEncoder")[: len(components)]
        assert all((bundle / "Resources" / f"{n}.mlpackage").is_dir() for n in packages)
    manifest = json.loads((bundle / "manifest.json").read_text())
    report = json.loads((bundle / "validation.json").read_text())
    assert manifest["vae"]["kind"] == "autoencoder-tiny" and manifest["latent_scaling_factor"] == 1.0
    assert manifest["source"]["vae"] == "tiny"
    assert report["passed"] and set(report["components"]) == set(components)
    for name in components:
        comp = report["components"][name]
        assert comp["passed"], name
        if fmt != "coreml":  # Core ML runs on macOS only: the static checks stand in for the numeric ones here
            assert comp["numeric_checks"] == "run"
            assert any(s["name"].startswith("trajectory") for s in comp["sets"])
