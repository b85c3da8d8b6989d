"""A latent consistency (LCM) U-Net through export, validation and the torch-free runtime.

The U-Net takes a fourth input, ``timestep_cond`` (its guidance-scale embedding), in every format and precision,
validated like every component on seeded inputs and on a trajectory recorded from diffusers'
``LatentConsistencyModelPipeline``; an ONNX bundle follows optimum's latent-consistency layout and its manifest
says how the app builds that input; ``bksdm-edge generate`` on the fp32 bundle reproduces diffusers' image given
the same initial latents and the same re-noising noise.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bksdm_edge.distill.lcm import as_lcm, portable_lcm_noise
from bksdm_edge.export.pipeline import ExportRequest, export_bundle
from bksdm_edge.export.registry import all_targets
from bksdm_edge.export.request import Calibration, Validation
from bksdm_edge.generate import BundlePipeline
from bksdm_edge.metrics import psnr

# The trained digits teacher made an LCM: a random-weight U-Net's LCM trajectory blows up (its x0 estimates at
# t = 999 are ~14x the noise), and int8 calibrated on it cannot resolve ordinary inputs; a trained one stays sane.
SOURCE = "builtin:mini-sd-digits"
SIZE = 32
PROMPT = "a handwritten digit seven"
DIM = 16
# Exports that run in the default suite (one per format; ONNX int8 calibrates on the LCM trajectory); every other
# registered target runs with -m slow, so every format x precision is covered. ONNX fp32 is also the bundle below.
DEFAULT_TARGETS = {("onnx", "int8"), ("tflite", "fp32"), ("coreml", "fp16"), ("openvino", "fp32")}


@pytest.fixture(scope="module")
def lcm_model():
    """The digits teacher made an LCM: a guidance embedding (a seeded projection, so w matters; a trained one's
    weights have std ~0.005) and LCMScheduler."""
    from bksdm_edge.loading import load_model

    model = as_lcm(load_model(SOURCE), DIM)
    torch.manual_seed(1)
    torch.nn.init.normal_(model.unet.time_embedding.cond_proj.weight, std=0.05)
    return model


@pytest.fixture(scope="module")
def lcm_bundle(lcm_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("lcm") / "onnx-fp32"
    return export_bundle(ExportRequest(out=out, model=SOURCE, format="onnx", precision="fp32", progress=False),
                         model=lcm_model)


def test_onnx_bundle_layout_and_manifest(lcm_bundle):
    manifest = json.loads((lcm_bundle / "manifest.json").read_text())
    unet = manifest["components"]["unet"]
    assert [i["name"] for i in unet["inputs"]] == ["sample", "timestep", "encoder_hidden_states", "timestep_cond"]
    # the ONNX default U-Net batch axis (one row per LCM step here; optimum's LCM pipeline sends one too)
    assert unet["inputs"][3]["shape"] == ["batch", DIM] and unet["inputs"][3]["dtype"] == "float32"
    assert manifest["guidance_embedding"] == {"input": "timestep_cond", "dim": DIM, "w": "guidance_scale - 1",
                                              "scale": 1000.0, "max_period": 10000.0, "w_range": None}
    assert manifest["scheduler"]["_class_name"] == "LCMScheduler"
    index = json.loads((lcm_bundle / "model_index.json").read_text())
    assert index["_class_name"] == "ORTLatentConsistencyModelPipeline"
    assert index["scheduler"] == ["diffusers", "LCMScheduler"] and index["unet"] == ["diffusers", "OnnxRuntimeModel"]
    assert json.loads((lcm_bundle / "scheduler" / "scheduler_config.json").read_text())["_class_name"] == "LCMScheduler"
    # Validated on seeded inputs and on the LCM pipeline's own trajectory (one conditional row per call).
    report = json.loads((lcm_bundle / "validation.json").read_text())
    sets = [s["name"] for s in report["components"]["unet"]["sets"]]
    assert report["passed"] and "seeded:0" in sets and any(s.startswith("trajectory") for s in sets)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_bundle_generates_diffusers_lcm_image(lcm_model, lcm_bundle, steps):
    """Same initial latents and the same re-noising noise (the portable stream of the seed): PSNR >= 40 dB."""
    pipe = BundlePipeline(lcm_bundle)
    latents = np.random.default_rng(steps).standard_normal(pipe.latent_shape()).astype(np.float32)
    image, _ = pipe(PROMPT, steps=steps, guidance=8.0, seed=11, latents=latents)
    reference = lcm_model.to_pipeline()
    reference.set_progress_bar_config(disable=True)
    with portable_lcm_noise([11]), torch.no_grad():
        ref = reference(PROMPT, height=SIZE, width=SIZE, num_inference_steps=steps, guidance_scale=8.0,
                        latents=torch.from_numpy(latents), output_type="np").images[0]
    value = psnr(ref, image.astype(np.float32) / 255, peak=1.0)
    assert value >= 40.0, f"PSNR {value:.1f} dB vs diffusers' LatentConsistencyModelPipeline at {steps} steps"
    # The embedded guidance and the seed's re-noising both change the image.
    other_w, _ = pipe(PROMPT, steps=steps, guidance=2.0, seed=11, latents=latents)
    assert not np.array_equal(other_w, image)
    if steps > 1:
        other_seed, _ = pipe(PROMPT, steps=steps, guidance=8.0, seed=12, latents=latents)
        assert not np.array_equal(other_seed, image)
    assert set(pipe.last_timings) >= {"text_encoder", "unet", "vae_decoder"}


def test_unet_step_inputs_include_the_guidance_embedding(lcm_bundle):
    """The inputs ``--inference-precision auto`` times run-time settings on fit an LCM U-Net (timestep_cond too)."""
    pipe = BundlePipeline(lcm_bundle)
    inputs = pipe.unet_step_inputs()
    declared = pipe.manifest["components"]["unet"]["inputs"]  # batch axis first, then static dimensions
    assert [a.shape for a in inputs] == [(1, *i["shape"][1:]) for i in declared] and inputs[3].shape == (1, DIM)
    out = pipe.components["unet"](*inputs)
    assert out.shape == pipe.latent_shape() and np.isfinite(out).all()


def test_generate_command_on_an_lcm_bundle(lcm_bundle, tmp_path, capsys):
    from PIL import Image

    from bksdm_edge.cli import main

    out = tmp_path / "lcm.png"
    assert main(["generate", "--bundle", str(lcm_bundle), "--prompt", PROMPT, "--guidance", "6", "--seed", "3",
                 "--out", str(out)]) == 0  # LCMScheduler from the bundle, its default 4 steps
    assert np.asarray(Image.open(out)).shape == (SIZE, SIZE, 3)
    capsys.readouterr()
    rc = main(["generate", "--bundle", str(lcm_bundle), "--prompt", PROMPT, "--negative-prompt", "blurry",
               "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert rc != 0 and "no negative branch" in err and "Traceback" not in err
    rc = main(["generate", "--bundle", str(lcm_bundle), "--prompt", PROMPT, "--steps", "51", "--out",
               str(tmp_path / "y.png")])
    assert rc != 0 and "1..50" in capsys.readouterr().err


def _export_unet(model, fmt: str, precision: str, out: Path) -> dict:
    """Export only the LCM U-Net with the format's own bundle writer (calibration: 3 prompts x 2 steps);
    returns the manifest."""
    prompts = out.parent / "calibration_prompts.txt"
    prompts.write_text("a handwritten digit one\na handwritten digit four\na handwritten digit eight\n")
    options = {"weight_threshold": 256} if fmt == "coreml" else {}
    bundle = export_bundle(ExportRequest(out=out, model=SOURCE, format=fmt, precision=precision,
                                         components=("unet",), batch=1, validation=Validation(steps=2),
                                         calibration=Calibration(prompts=prompts, steps=2), options=options,
                                         progress=False), model=model)
    return json.loads((bundle / "manifest.json").read_text())


@pytest.mark.parametrize("fmt,precision", [
    pytest.param(f, p, marks=() if (f, p) in DEFAULT_TARGETS else pytest.mark.slow) for f, p in sorted(all_targets())
])
def test_every_target_exports_and_validates_timestep_cond(lcm_model, fmt, precision, tmp_path):
    manifest = _export_unet(lcm_model, fmt, precision, tmp_path / f"{fmt}-{precision}")
    inputs = manifest["components"]["unet"]["inputs"]
    assert len(inputs) == 4 and manifest["guidance_embedding"]["input"] == inputs[3]["name"]
    assert manifest["guidance_embedding"]["dim"] == DIM and manifest["scheduler"]["_class_name"] == "LCMScheduler"
    assert manifest["export"]["validation"]["passed"] is True
    if fmt == "openvino":  # optimum-intel's latent-consistency pipeline, as the ONNX layout names optimum's
        index = json.loads((tmp_path / f"{fmt}-{precision}" / "model_index.json").read_text())
        assert index["_class_name"] == "OVLatentConsistencyModelPipeline"


def test_coreml_unet_chunks_carry_the_guidance_embedding(lcm_model):
    """Apple's UnetChunk1/UnetChunk2 split of an LCM U-Net composes to the U-Net, timestep_cond included."""
    from bksdm_edge.export.components import COMPONENTS, ShapeConfig, UNetWrapper
    from bksdm_edge.export.coreml.chunking import build_unet_chunks

    module = UNetWrapper(lcm_model.unet).eval()
    example = COMPONENTS["unet"].example_inputs(lcm_model, ShapeConfig(SIZE, SIZE, 2))
    assert list(example) == ["sample", "timestep", "encoder_hidden_states", "timestep_cond"]
    c1, c2, _ = build_unet_chunks(lcm_model.unet, example=example)
    with torch.no_grad():
        y = c2(example["encoder_hidden_states"], *c1(*example.values()))
        assert torch.allclose(y, module(*example.values()), atol=1e-5)
        other = dict(example, timestep_cond=torch.zeros_like(example["timestep_cond"]))
        assert not torch.allclose(module(*other.values()), y, atol=1e-5)  # the embedding reaches the output


@pytest.mark.slow
def test_coreml_chunked_lcm_bundle_passes_the_swift_contract_check(lcm_model, tmp_path):
    bundle = export_bundle(ExportRequest(out=tmp_path / "chunked", model=SOURCE, format="coreml", precision="fp16",
                                         components=("unet",), batch=1, validation=Validation(steps=2),
                                         options={"weight_threshold": 256, "chunk_unet": True}, progress=False),
                           model=lcm_model)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert [i["name"] for i in manifest["components"]["unet"]["inputs"]][-1] == "timestep_cond"
    assert manifest["guidance_embedding"]["input"] == "timestep_cond"
