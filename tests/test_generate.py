"""Generation from a bundle: no PyTorch at run time, same image as diffusers given the same latents."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _export_helpers import tiny_bundle
from bksdm_edge.export.bundle import BundleError
from bksdm_edge.metrics import psnr
from bksdm_edge.generate import BundlePipeline

ROOT = Path(__file__).parents[1]
PROMPT = "a photo of a red car"


def _diffusers_image(model, latents, scheduler=None, steps=6, guidance=7.5, prompt=PROMPT):
    pipe = model.to_pipeline()
    if scheduler is not None:
        import diffusers

        pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt, height=64, width=64, num_inference_steps=steps, guidance_scale=guidance,
               latents=torch.from_numpy(latents), output_type="np")
    return out.images[0]


def test_generate_runs_without_torch_and_saves_latents(tmp_path):
    bundle = tiny_bundle("fp32")
    code = (
        "import sys\n"
        "from bksdm_edge.generate import generate\n"
        f"generate({str(bundle)!r}, {PROMPT!r}, {str(tmp_path / 'img.png')!r}, steps=3, seed=7, "
        f"latents_out={str(tmp_path / 'z.npy')!r})\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-3000:]
    assert np.asarray(Image.open(tmp_path / "img.png")).shape == (64, 64, 3)
    assert np.load(tmp_path / "z.npy").shape == (1, 4, 8, 8)


def test_generate_command_reproduces_from_saved_latents(tmp_path):
    from bksdm_edge.cli import main

    bundle = str(tiny_bundle("fp32"))
    args = ["generate", "--bundle", bundle, "--prompt", PROMPT, "--steps", "3", "--scheduler", "dpm++"]
    assert main([*args, "--seed", "5", "--out", str(tmp_path / "a.png"), "--latents-out", str(tmp_path / "z.npy")]) == 0
    assert main([*args, "--seed", "6", "--out", str(tmp_path / "b.png"), "--latents-in", str(tmp_path / "z.npy")]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "b.png")))


@pytest.mark.parametrize("scheduler,diffusers_class", [(None, None), ("ddim", "DDIMScheduler"),
                                                        ("euler", "EulerDiscreteScheduler")])
def test_fp32_bundle_matches_diffusers(scheduler, diffusers_class, tiny_model):
    pipe = BundlePipeline(tiny_bundle("fp32"))
    latents = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)
    image, _ = pipe(PROMPT, steps=6, latents=latents, scheduler=scheduler)
    ref = _diffusers_image(tiny_model, latents, diffusers_class)
    value = psnr(ref, image.astype(np.float32) / 255, peak=1.0)
    assert value >= 40.0, f"PSNR {value:.1f} dB vs diffusers"


def test_last_timings_split_the_run_by_component():
    pipe = BundlePipeline(tiny_bundle("fp32"))
    pipe(PROMPT, steps=2)
    t = pipe.last_timings
    assert set(t) == {"text_encoder", "unet", "vae_decoder", "other", "total"}
    parts = [t[k] for k in ("text_encoder", "unet", "vae_decoder")]
    assert all(v > 0 for v in parts) and t["other"] >= 0
    assert sum(parts) + t["other"] == pytest.approx(t["total"])


def test_batch2_bundle_matches_diffusers(tiny_model):
    pipe = BundlePipeline(tiny_bundle("fp32", batch=2))
    assert pipe.components["unet"].batch == 2
    latents = np.random.default_rng(1).standard_normal((1, 4, 8, 8)).astype(np.float32)
    image, _ = pipe(PROMPT, steps=4, latents=latents)
    assert psnr(_diffusers_image(tiny_model, latents, steps=4), image.astype(np.float32) / 255, peak=1.0) >= 40.0


def test_batch_axis_bundle_matches_diffusers_with_one_unet_call_per_step(tiny_model):
    """The ONNX default (a U-Net batch axis): both CFG rows in one call, one row without guidance."""
    pipe = BundlePipeline(tiny_bundle("fp32", batch="dynamic"))
    unet = pipe.components["unet"]
    assert unet.batch is None
    rows, run = [], unet.run_raw
    unet.run_raw = lambda feeds: rows.append(feeds["sample"].shape[0]) or run(feeds)
    latents = np.random.default_rng(1).standard_normal((1, 4, 8, 8)).astype(np.float32)
    image, _ = pipe(PROMPT, steps=4, latents=latents)
    assert set(rows) == {2} and len(rows) >= 4  # (PNDM calls the U-Net once more than steps)
    assert psnr(_diffusers_image(tiny_model, latents, steps=4), image.astype(np.float32) / 255, peak=1.0) >= 40.0
    rows.clear()
    pipe(PROMPT, steps=2, guidance=1.0, latents=latents)
    assert set(rows) == {1}


def test_tampered_bundle_is_refused_before_loading(tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle("fp32"), bundle)
    (bundle / "scheduler" / "scheduler_config.json").write_text("{}")
    with pytest.raises(BundleError, match="scheduler/scheduler_config.json"):
        BundlePipeline(bundle)
    from bksdm_edge.cli import main

    assert main(["generate", "--bundle", str(bundle), "--prompt", "x", "--out", str(tmp_path / "x.png")]) == 2
    assert not (tmp_path / "x.png").exists()
