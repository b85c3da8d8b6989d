"""Tiny VAEs (TAESD architecture): sizing, --vae sources and their checks, latent conventions, bundles."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bksdm_edge.loading import load_model
from bksdm_edge.runtime.image import VAE_DECODER_KINDS, latents_for_decoder, vae_decoder_kind
from bksdm_edge.tiny_vae import (
    VAE_KINDS,
    VaeSourceError,
    build_tiny_vae,
    encode_latents,
    load_vae,
    save_tiny_vae,
    tiny_vae_config,
)

# madebyollin/taesd's decoder (REFERENCE.md, diffusers' AutoencoderTiny defaults): 1,222,531 parameters.
TAESD_DECODER_PARAMS = 1_222_531


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_sized_to_the_teacher_factor_and_taesd_for_sd():
    from diffusers import AutoencoderTiny

    sd = load_model("builtin:sd-v1.4", vae="tiny", components=("vae",), weights=False).vae
    assert type(sd).__name__ == "AutoencoderTiny"
    assert _params(sd.decoder) == TAESD_DECODER_PARAMS  # exactly TAESD for SD's factor-8 VAE
    assert _params(sd.decoder) == _params(AutoencoderTiny().decoder)  # diffusers' defaults are TAESD's
    assert sd.config.num_decoder_blocks == [3, 3, 3, 1] and sd.config.scaling_factor == 1.0
    digits = tiny_vae_config(load_model("builtin:mini-sd-digits", components=("vae",)).vae.config)
    assert digits["decoder_block_out_channels"] == [16, 16] and digits["num_decoder_blocks"] == [3, 1]
    assert digits["num_encoder_blocks"] == [1, 3] and digits["latent_channels"] == 4
    assert tiny_vae_config({"block_out_channels": [8] * 3, "latent_channels": 8}, channels=32)[
        "decoder_block_out_channels"] == [32, 32, 32]


@pytest.mark.parametrize("src", ["builtin:tiny-sd", "builtin:mini-sd-digits"])
def test_tiny_decoder_upsamples_like_the_teacher(src):
    teacher = load_model(src, components=("vae",)).vae
    tiny = load_model(src, vae="tiny", components=("vae",)).vae
    z = torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        assert tiny.decode(z).sample.shape == teacher.decode(z).sample.shape
        x = torch.rand(1, 3, 16, 16) * 2 - 1
        assert encode_latents(tiny, x).shape == encode_latents(teacher, x).shape
        torch.testing.assert_close(encode_latents(teacher, x), teacher.encode(x).latent_dist.mean)
        torch.testing.assert_close(encode_latents(tiny, x), tiny.encode(x).latents)


def test_pipeline_decodes_unet_latents_directly(tmp_path):
    """diffusers' SD pipeline divides by vae.config.scaling_factor (1.0): TAESD sees the U-Net's latents."""
    model = load_model("builtin:tiny-sd", vae="tiny")
    pipe = model.to_pipeline()
    pipe.set_progress_bar_config(disable=True)
    kw = dict(prompt="a red car", height=64, width=64, num_inference_steps=2, guidance_scale=1.0)
    latents = pipe(**kw, generator=torch.Generator().manual_seed(0), output_type="latent").images
    image = pipe(**kw, generator=torch.Generator().manual_seed(0), output_type="pt").images
    with torch.no_grad():
        direct = (model.vae.decode(latents).sample / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(image, direct)


def test_folder_round_trip_and_checks(tmp_path):
    teacher_cfg = load_model("builtin:tiny-sd", components=("vae",)).vae.config
    vae = build_tiny_vae(teacher_cfg, seed=3)
    save_tiny_vae(vae, tmp_path / "run" / "vae", teacher="builtin:tiny-sd", teacher_vae_config=teacher_cfg)
    # A run folder means its vae/; the meta comes along.
    loaded = load_model("builtin:tiny-sd", vae=str(tmp_path / "run"))
    assert loaded.vae_source == str(tmp_path / "run") and loaded.info["vae"]["meta"]["teacher"] == "builtin:tiny-sd"
    assert all(torch.equal(a, b) for a, b in zip(loaded.vae.state_dict().values(), vae.state_dict().values()))
    # Same factor and channels but a teacher with another latent scaling: refused with the reason.
    with pytest.raises(VaeSourceError, match="scaling_factor 0.18215"):
        load_vae(tmp_path / "run", {**dict(teacher_cfg), "scaling_factor": 1.0})
    # A factor-8 tiny VAE does not fit the factor-2 digits teacher.
    with pytest.raises(VaeSourceError, match="upsamples 8x, the model's VAE 2x"):
        load_model("builtin:mini-sd-digits", vae=str(tmp_path / "run"), components=("vae",))
    # Not a tiny VAE / not a folder we know / an unfinished run.
    load_model("builtin:tiny-sd", components=("vae",)).vae.save_pretrained(tmp_path / "kl")
    with pytest.raises(VaeSourceError, match="AutoencoderKL, not an AutoencoderTiny"):
        load_vae(tmp_path / "kl", teacher_cfg)
    (tmp_path / "empty").mkdir()
    with pytest.raises(VaeSourceError, match="no config.json"):
        load_vae(tmp_path / "empty", teacher_cfg)
    (tmp_path / "unfinished" / "checkpoints").mkdir(parents=True)
    with pytest.raises(VaeSourceError, match="--resume latest"):
        load_vae(tmp_path / "unfinished", teacher_cfg)


def test_hub_id_not_cached_offline_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(VaeSourceError, match="madebyollin/taesd.*HF_HUB_OFFLINE"):
        load_model("builtin:tiny-sd", vae="madebyollin/taesd", components=("vae",))


def test_runtime_knows_every_kind_and_refuses_others():
    assert VAE_DECODER_KINDS == tuple(VAE_KINDS)
    assert vae_decoder_kind({}) == "autoencoder-kl"  # bundles written before the field existed
    assert vae_decoder_kind({"vae": {"kind": "autoencoder-tiny"}}) == "autoencoder-tiny"
    with pytest.raises(ValueError, match="autoencoder-vq.*not supported"):
        vae_decoder_kind({"vae": {"kind": "autoencoder-vq"}})
    z = np.ones((1, 4, 2, 2), np.float32)
    assert np.array_equal(latents_for_decoder(z, 1.0), z)  # a tiny decoder takes the U-Net's latents as they are


def test_onnx_bundle_with_tiny_decoder_matches_diffusers(tmp_path):
    from bksdm_edge.export.pipeline import export_bundle, validate_bundle
    from bksdm_edge.export.request import ExportRequest
    from bksdm_edge.generate import BundlePipeline
    from bksdm_edge.metrics import psnr

    model = load_model("builtin:tiny-sd", vae="tiny")
    bundle = export_bundle(ExportRequest(out=tmp_path / "b", model="builtin:tiny-sd", vae="tiny", progress=False,
                                         components=("text_encoder", "unet", "vae_decoder", "vae_encoder")),
                           model=model)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["vae"]["kind"] == "autoencoder-tiny" and manifest["vae"]["class"] == "AutoencoderTiny"
    assert manifest["latent_scaling_factor"] == 1.0 and manifest["vae_decoder_input_scaled"] is False
    assert manifest["source"]["vae"] == "tiny" and manifest["vae"]["decoder_params"] == _params(model.vae.decoder)
    validate_bundle(bundle, progress=False)  # reloads the tiny VAE from the manifest's source
    pipe = BundlePipeline(bundle)
    assert pipe.vae_kind == "autoencoder-tiny"
    latents = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)
    image, _ = pipe("a red car", steps=3, latents=latents)
    ref = model.to_pipeline()
    ref.set_progress_bar_config(disable=True)
    want = ref("a red car", height=64, width=64, num_inference_steps=3, latents=torch.from_numpy(latents),
               output_type="np").images[0]
    assert psnr(want, image.astype(np.float32) / 255, peak=1.0) >= 40.0


def test_eval_and_profile_take_a_vae(tmp_path, capsys):
    from bksdm_edge.cli import main

    caps = tmp_path / "caps.txt"
    caps.write_text("a handwritten digit four\na handwritten digit seven\n")
    assert main(["eval", "--model", "builtin:mini-sd-digits", "--vae", "tiny", "--captions", str(caps),
                 "--out", str(tmp_path / "ev"), "--feature-extractor", "digits", "--metrics", "clip",
                 "--resolution", "0", "--resize", "0", "--steps", "2", "--batch", "2"]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["vae"] == "tiny" and metrics["n_images"] == 2
    assert len(list((tmp_path / "ev" / "im32").glob("*.png"))) == 2  # native 32 px of the digits teacher
    out = tmp_path / "p.json"
    assert main(["profile", "--teacher", "builtin:sd-v1.4", "--components", "vae_decoder", "--vae", "tiny",
                 "--json", str(out)]) == 0
    rows = {m["name"]: m for m in json.loads(out.read_text())["models"]}
    assert rows["vae:tiny"]["params"] == TAESD_DECODER_PARAMS
    # The README's numbers: 49.5M params / 1,240 GMACs against 1.2M / 70.7 GMACs at 512 px.
    assert round(rows["teacher"]["params"] / 1e6, 1) == 49.5 and round(rows["teacher"]["macs_paper"] / 1e9) == 1241
    assert round(rows["vae:tiny"]["macs_paper"] / 1e9, 1) == 70.7
    assert "| vae:tiny | vae_decoder |" in capsys.readouterr().out
    assert main(["profile", "--teacher", "builtin:sd-v1.4", "--vae", "tiny"]) == 2  # no VAE component asked for
