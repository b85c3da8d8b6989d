"""distill-vae on the toy teacher: losses, exact resume, the run as a --vae source for export and generate."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from bksdm_edge.distill import CheckpointConfig, DataConfig, DistillConfig, DistillError, VaeConfig, distill, read_log
from bksdm_edge.distill.synthetic import make_synthetic_folder
from bksdm_edge.distill.vae_loss import VAE_LOSS_NAMES, PatchDiscriminator, TinyVaeStudent, edge_loss, fft_loss, sobel
from bksdm_edge.tiny_vae import VaeSourceError, build_tiny_vae


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_synthetic_folder(tmp_path_factory.mktemp("shapes"), rows=12, size=64, seed=0)


def vae_config(data, out, **kw) -> DistillConfig:
    return DistillConfig(
        teacher="builtin:tiny-sd", variant=kw.pop("variant", None), out=str(out), objective="vae",
        max_steps=kw.pop("max_steps", 4),
        batch_size=4, ema=True, ema_decay=0.9, progress=False, report_to="none",
        data=DataConfig(source=str(data), resolution=64, num_workers=0),
        checkpoint=kw.pop("checkpoint", CheckpointConfig(every=2, keep=2)),
        vae=kw.pop("vae", VaeConfig(trajectories=3, trajectory_steps=2, trajectory_fraction=0.5, lambda_fft=1.0,
                                    lambda_adv=0.1, encoder=True)),
        **kw,
    )


def test_edge_terms_see_edges_not_flat_colour():
    flat = torch.zeros(1, 3, 16, 16)
    step = flat.clone()
    step[..., 8:] = 1.0
    assert sobel(flat).abs().max() == 0 and sobel(step).abs().max() > 0
    assert sobel(step).shape == (1, 6, 16, 16)
    assert edge_loss(flat + 0.3, flat) == 0  # a colour shift has no edges
    assert edge_loss(step, flat) > 0
    assert fft_loss(step, step) == 0 and fft_loss(step, torch.roll(step, 4, dims=-1)) < 1e-6  # circular shifts keep |FFT|
    assert fft_loss(step, flat) > 0


def test_adversarial_term_trains_each_side_the_right_way():
    """One backward: the discriminator gets gradients only from its own loss, the decoder only from L_adv."""
    torch.manual_seed(0)
    vae = build_tiny_vae({"block_out_channels": [8, 8], "latent_channels": 4})
    weights = {"lambda_l1": 0.0, "lambda_l2": 0.0, "lambda_edge": 0.0, "lambda_fft": 0.0, "lambda_adv": 1.0,
               "lambda_enc": 0.0}
    student = TinyVaeStudent(vae, weights, train_encoder=False, discriminator=PatchDiscriminator(8, 2))
    z, target = torch.randn(2, 4, 8, 8), torch.rand(2, 3, 16, 16) * 2 - 1
    terms = student(z, target)
    assert set(terms) == set(VAE_LOSS_NAMES)
    terms["loss_adv"].backward(retain_graph=True)
    assert all(p.grad is None for p in student.discriminator.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in vae.decoder.parameters())
    assert all(p.grad is None for p in vae.encoder.parameters())  # frozen without train_encoder
    vae.zero_grad(set_to_none=True)
    terms["loss_disc"].backward()
    assert all(p.grad is None for p in vae.decoder.parameters())
    assert all(p.grad is not None for p in student.discriminator.parameters())


def test_bad_options_are_refused_before_loading(tmp_path, shapes):
    for vae, match in [(VaeConfig(trajectory_fraction=1.5), "between 0 and 1"),
                       (VaeConfig(trajectories=0), "needs --trajectories"),
                       (VaeConfig(lambda_edge=-1), "--lambda-edge must be >= 0"),
                       (VaeConfig(encoder=True, lambda_enc=0), "would not train the encoder")]:
        with pytest.raises(DistillError, match=match):
            distill(vae_config(shapes, tmp_path / "x", vae=vae))
    with pytest.raises(DistillError, match="no --variant"):
        distill(vae_config(shapes, tmp_path / "x", variant="bk-tiny"))


def test_resume_reproduces_the_uninterrupted_run_exactly(shapes, tmp_path):
    """Every state the objective adds (discriminator, encoder, EMA of the VAE, trajectory draws) resumes exactly."""
    full = distill(vae_config(shapes, tmp_path / "full", max_steps=4))
    distill(vae_config(shapes, tmp_path / "cut", max_steps=2))
    resumed = distill(vae_config(shapes, tmp_path / "cut", max_steps=4,
                                 checkpoint=CheckpointConfig(every=2, keep=2, resume="latest")))
    assert resumed.resumed_from.endswith("checkpoint-2")
    log, ref = read_log(tmp_path / "cut"), read_log(tmp_path / "full")
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    for name in (*VAE_LOSS_NAMES, "grad_norm"):
        assert [r[name] for r in log] == [r[name] for r in ref], name
    assert all(r["loss_adv"] != 0 and r["loss_enc"] > 0 and r["loss_edge"] > 0 for r in log)
    for sub in ("vae", "vae_ema"):
        got = load_file(tmp_path / "cut" / sub / "diffusion_pytorch_model.safetensors")
        want = load_file(full.run_dir / sub / "diffusion_pytorch_model.safetensors")
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), sub
    assert not any("discriminator" in k for k in want)  # the discriminator is a training aid, not saved
    meta = json.loads((full.run_dir / "vae" / "bksdm_edge.json").read_text())
    assert meta["trained"] == ["decoder", "encoder"] and meta["teacher_vae"]["scaling_factor"] == 0.18215
    traj = json.loads((full.run_dir / "trajectories" / "trajectories.json").read_text())
    assert traj["shape"] == [3, 4, 8, 8] and traj["steps"] == 2
    # The saved trajectories belong to the run: other settings are refused, not silently mixed.
    with pytest.raises(DistillError, match="other settings"):
        distill(vae_config(shapes, tmp_path / "full", max_steps=6, checkpoint=CheckpointConfig(every=2, resume="latest"),
                           vae=VaeConfig(trajectories=3, trajectory_steps=5, trajectory_fraction=0.5, lambda_fft=1.0,
                                         lambda_adv=0.1, encoder=True)))


def test_cli_run_exports_to_onnx_and_tflite_and_generates(shapes, tmp_path):
    """The issue's done-when: train a few steps, resume, export the tiny decoder, generate from the bundle."""
    from bksdm_edge.cli import main
    from bksdm_edge.generate import BundlePipeline

    run = tmp_path / "run"
    args = ["distill-vae", "--teacher", "builtin:tiny-sd", "--data", str(shapes), "--out", str(run),
            "--resolution", "64", "--batch-size", "4", "--num-workers", "0", "--trajectories", "2",
            "--trajectory-steps", "2", "--checkpoint-every", "1", "--report-to", "none", "--no-progress", "--lr", "1e-3"]
    assert main([*args, "--max-steps", "2"]) == 0
    assert main([*args, "--max-steps", "3", "--resume", "latest"]) == 0
    assert [r["step"] for r in read_log(run)] == [1, 2, 3]
    assert json.loads((run / "vae" / "bksdm_edge.json").read_text())["trained"] == ["decoder"]
    # The decoder-only run's encoder is untrained: exporting it is refused with the reason.
    assert main(["export", "--model", "builtin:tiny-sd", "--vae", str(run), "--components", "vae_encoder",
                 "--out", str(tmp_path / "enc"), "--no-progress"]) == 2
    assert not (tmp_path / "enc").exists()

    bundle = tmp_path / "onnx"
    assert main(["export", "--model", "builtin:tiny-sd", "--vae", str(run), "--out", str(bundle), "--no-progress"]) == 0
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["vae"]["kind"] == "autoencoder-tiny" and manifest["source"]["vae"] == str(run)
    assert manifest["latent_scaling_factor"] == 1.0
    assert main(["generate", "--bundle", str(bundle), "--prompt", "a red circle", "--steps", "3",
                 "--out", str(tmp_path / "img.png")]) == 0
    assert np.asarray(Image.open(tmp_path / "img.png")).shape == (64, 64, 3)
    assert BundlePipeline(bundle).vae_kind == "autoencoder-tiny"

    tfl = tmp_path / "tflite"
    assert main(["export", "--model", "builtin:tiny-sd", "--vae", str(run), "--format", "tflite",
                 "--components", "vae_decoder", "--out", str(tfl), "--no-progress"]) == 0
    report = json.loads((tfl / "validation.json").read_text())
    assert report["passed"] and report["components"]["vae_decoder"]["numeric_checks"] == "run"


def test_run_folder_is_refused_by_a_teacher_with_another_latent_space(shapes, tmp_path):
    result = distill(vae_config(shapes, tmp_path / "r", max_steps=1, checkpoint=CheckpointConfig(every=0),
                                vae=VaeConfig(trajectory_fraction=0.0)))
    from bksdm_edge.loading import load_model

    with pytest.raises(VaeSourceError, match="upsamples 8x, the model's VAE 2x"):
        load_model("builtin:mini-sd-digits", vae=str(result.run_dir), components=("vae",))
    assert not (result.run_dir / "trajectories").exists()  # no trajectory rows asked for: none generated
