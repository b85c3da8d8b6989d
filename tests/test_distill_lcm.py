"""Latent consistency distillation (``distill --objective lcm``) on the toy teachers.

The loss falls, checkpoint + resume reproduce an uninterrupted run exactly, the result runs in diffusers'
``LatentConsistencyModelPipeline``, the pieces equal diffusers' formulas, and bad options fail before training.
"""

from __future__ import annotations

import json
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bksdm_edge.distill import (
    CheckpointConfig,
    DataConfig,
    DistillConfig,
    LcmConfig,
    OptimConfig,
    distill,
    get_objective,
    read_log,
)
from bksdm_edge.distill.lcm import (
    add_guidance_embedding,
    boundary_scalings,
    guidance_scale_embedding,
    lcm_scheduler_config,
    solver_timesteps,
)
from bksdm_edge.distill.synthetic import make_synthetic_folder
from bksdm_edge.loading import load_model


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_synthetic_folder(tmp_path_factory.mktemp("shapes"), rows=8, size=64, seed=0)


def lcm_config(data, out, **kw) -> DistillConfig:
    return DistillConfig(
        teacher=kw.pop("teacher", "builtin:tiny-sd"), variant=kw.pop("variant", "bk-tiny"), out=str(out),
        objective="lcm", max_steps=kw.pop("max_steps", 2), batch_size=kw.pop("batch_size", 2), progress=False,
        report_to="none", data=DataConfig(source=str(data), resolution=64, num_workers=0),
        checkpoint=kw.pop("checkpoint", CheckpointConfig(every=0)),
        lcm=kw.pop("lcm", LcmConfig(w_min=3.0, w_max=5.0, num_ddim_timesteps=10)), **kw,
    )


def test_pieces_equal_diffusers_formulas():
    from diffusers import LatentConsistencyModelPipeline, LCMScheduler

    w = torch.tensor([0.0, 1.5, 7.0, 14.25])
    for dim in (256, 7):
        want = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w, embedding_dim=dim)
        torch.testing.assert_close(guidance_scale_embedding(w, dim), want, rtol=0, atol=0)

    sched = LCMScheduler(original_inference_steps=50, timestep_scaling=10.0)
    t = torch.tensor([0, 19, 499, 999])
    c_skip, c_out = boundary_scalings(t, 10.0)
    for i, ti in enumerate(t.tolist()):
        ref = sched.get_scalings_for_boundary_condition_discrete(torch.tensor(ti))
        assert c_skip[i].item() == pytest.approx(float(ref[0]), rel=1e-6)
        assert c_out[i].item() == pytest.approx(float(ref[1]), rel=1e-6)

    # The solver's timesteps are the LCMScheduler's origin schedule, so inference lands on trained timesteps.
    sched.set_timesteps(4)
    solver = set(solver_timesteps(1000, 50).tolist())
    assert set(sched.timesteps.tolist()) <= solver and max(solver) == 999 and len(solver) == 50

    teacher = load_model("builtin:tiny-sd", components=("scheduler",)).scheduler
    config = lcm_scheduler_config(teacher.config, 25, 10.0)
    assert config["_class_name"] == "LCMScheduler" and config["original_inference_steps"] == 25
    assert config["beta_schedule"] == teacher.config.beta_schedule and "skip_prk_steps" not in config


def test_guidance_embedding_starts_as_the_given_unet():
    unet = load_model("builtin:tiny-sd", components=("unet",)).unet
    lcm = add_guidance_embedding(unet, 16)
    assert lcm.config.time_cond_proj_dim == 16 and unet.config.time_cond_proj_dim is None
    assert add_guidance_embedding(lcm, 16) is lcm
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 32, generator=g)
    t = torch.tensor([10, 900])
    with torch.no_grad():
        want = unet(x, t, ctx).sample
        for w in (0.0, 3.0, 11.0):
            got = lcm(x, t, ctx, timestep_cond=guidance_scale_embedding(torch.full((2,), w), 16)).sample
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_consistency_loss_falls_on_a_fixed_batch():
    """Ten steps on one batch lower the loss measured with a fixed draw of solver steps, w and noise."""
    from accelerate import Accelerator

    from bksdm_edge.distill.cache import encode_text
    from bksdm_edge.distill.train import prepare_objective

    objective = get_objective(lcm_config("unused", "unused", lcm=LcmConfig(w_min=3, w_max=5, num_ddim_timesteps=10)))
    ctx, student, _ = prepare_objective(objective, Accelerator(cpu=True))
    latents = torch.randn(8, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ids = ctx.model.tokenizer(["a red circle"] * 4 + ["a blue square"] * 4, padding="max_length", max_length=77,
                              return_tensors="pt").input_ids
    text = encode_text(ctx.model.text_encoder, ids)

    def measured() -> float:
        with torch.no_grad():
            return float(objective.losses(ctx, student, latents, text, torch.Generator().manual_seed(123))["loss"])

    before = measured()
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    for step in range(10):
        objective.losses(ctx, student, latents, text, torch.Generator().manual_seed(step))["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
        objective.after_optimizer_step(student)
    after = measured()
    assert math.isfinite(before) and after < 0.7 * before, (before, after)
    # The target network moved towards the student (EMA), but not onto it.
    s = student.time_embedding.cond_proj.weight
    t = objective.target.time_embedding.cond_proj.weight
    assert s.abs().sum() > 0 and t.abs().sum() > 0 and not torch.equal(s, t)


def test_cli_run_loads_in_latent_consistency_pipeline(shapes, tmp_path):
    from diffusers import LatentConsistencyModelPipeline, LCMScheduler, UNet2DConditionModel

    from bksdm_edge.cli import main

    out = tmp_path / "run"
    rc = main([
        "distill", "--objective", "lcm", "--teacher", "builtin:tiny-sd", "--variant", "bk-tiny", "--data", str(shapes),
        "--out", str(out), "--max-steps", "2", "--batch-size", "2", "--resolution", "64", "--num-workers", "0",
        "--w-min", "2", "--w-max", "8", "--num-ddim-timesteps", "20", "--loss", "l2", "--checkpoint-every", "0",
        "--validation-prompts", "a red circle", "--validate-every", "2", "--no-progress", "--report-to", "none",
    ])
    assert rc == 0
    log = read_log(out)
    assert [r["step"] for r in log] == [1, 2]
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 and 2 <= r["w_mean"] <= 8 for r in log)
    run = json.loads((out / "run_config.json").read_text())
    assert run["objective"] == "lcm" and run["outputs"]["unet_target"] == "unet_target"
    assert run["lcm"]["guidance_embedding"] == {"dim": 256, "embeds": "guidance_scale - 1", "scale": 1000.0}
    assert (out / "validation" / "step-000002" / "00.png").exists()

    for sub in ("unet", "unet_target"):
        unet = UNet2DConditionModel.from_pretrained(out / sub)
        assert unet.config.time_cond_proj_dim == 256 and unet.config.mid_block_type is None  # bk-tiny
        meta = json.loads((out / sub / "bksdm_edge.json").read_text())
        assert meta["variant"] == "bk-tiny" and meta["lcm"]["num_ddim_timesteps"] == 20
        assert LCMScheduler.from_pretrained(out / sub).config.original_inference_steps == 20
        # load_model pairs the U-Net with its LCMScheduler; to_pipeline is then diffusers' LCM pipeline.
        model = load_model("builtin:tiny-sd", unet=out / sub)
        assert model.is_lcm and model.scheduler.config.original_inference_steps == 20
        pipe = model.to_pipeline()
        assert isinstance(pipe, LatentConsistencyModelPipeline) and isinstance(pipe.scheduler, LCMScheduler)
        pipe.set_progress_bar_config(disable=True)
        image = pipe("a red circle", num_inference_steps=2, guidance_scale=4.0, height=64, width=64,
                     output_type="np", generator=torch.Generator().manual_seed(0)).images[0]
        assert image.shape == (64, 64, 3) and np.isfinite(image).all()
    # A guidance-embedding U-Net without a scheduler file gets LCMScheduler on the source's noise schedule.
    (out / "unet" / "scheduler_config.json").unlink()
    model = load_model("builtin:tiny-sd", unet=out / "unet")
    assert isinstance(model.scheduler, LCMScheduler) and model.scheduler.config.original_inference_steps == 50
    assert not load_model("builtin:tiny-sd", components=("unet", "scheduler")).is_lcm


def test_checkpoint_resume_reproduces_an_uninterrupted_run(shapes, tmp_path):
    """The target network, optimizer and RNG come back from the checkpoint: every logged loss and weight agrees."""
    every = CheckpointConfig(every=2, keep=0)
    reference = distill(lcm_config(shapes, tmp_path / "ref", max_steps=4, checkpoint=every))
    distill(lcm_config(shapes, tmp_path / "cut", max_steps=2, checkpoint=every))
    resumed = distill(lcm_config(shapes, tmp_path / "cut", max_steps=4,
                                 checkpoint=CheckpointConfig(every=2, keep=0, resume="latest")))
    assert resumed.resumed_from.endswith("checkpoint-2")
    log, ref_log = read_log(resumed.run_dir), read_log(reference.run_dir)
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    for name in ("loss", "w_mean", "grad_norm", "lr"):
        assert [r[name] for r in log] == [r[name] for r in ref_log], name
    for sub in ("unet", "unet_target"):
        got = load_file(resumed.run_dir / sub / "diffusion_pytorch_model.safetensors")
        want = load_file(reference.run_dir / sub / "diffusion_pytorch_model.safetensors")
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), sub


def test_lcm_from_a_student_folder_and_a_v_prediction_teacher(shapes, tmp_path):
    from bksdm_edge.student import build_student, save_student

    teacher = load_model("builtin:tiny-sd-v2", components=("unet",)).unet
    student, report = build_student(teacher, "bk-small")
    save_student(student, tmp_path / "kd", teacher="builtin:tiny-sd-v2", report=report)
    result = distill(lcm_config(shapes, tmp_path / "v", teacher="builtin:tiny-sd-v2", variant=None,
                                student=str(tmp_path / "kd"), max_steps=1))
    assert math.isfinite(result.last_losses["loss"])
    run = json.loads((result.run_dir / "run_config.json").read_text())
    assert run["prediction_type"] == "v_prediction" and run["student"]["variant"] == "bk-small"


@pytest.mark.parametrize("flags, message", [
    (["--w-min", "9", "--w-max", "3"], "need 1 <= w-min <= w-max"),
    (["--num-ddim-timesteps", "0"], "--num-ddim-timesteps 0"),
    (["--target-ema", "1.0"], "--target-ema 1.0"),
    (["--student", "MISFIT"], "cross_attention_dim 64 (teacher 32)"),
])
def test_bad_options_fail_before_training(shapes, tmp_path, capsys, flags, message):
    from bksdm_edge.cli import main
    from bksdm_edge.student import build_student, save_student

    if "MISFIT" in flags:  # a student of another teacher: its text width (64) does not fit tiny-sd's (32)
        other = load_model("builtin:mini-sd", components=("unet",)).unet
        student, report = build_student(other, "bk-tiny")
        save_student(student, tmp_path / "misfit", teacher="builtin:mini-sd", report=report)
        flags = [str(tmp_path / "misfit") if f == "MISFIT" else f for f in flags]
    out = tmp_path / "run"
    rc = main(["distill", "--objective", "lcm", "--teacher", "builtin:tiny-sd", "--data", str(shapes), "--out",
               str(out), "--max-steps", "1", "--batch-size", "2", "--resolution", "64", "--num-workers", "0",
               "--no-progress", "--report-to", "none", *flags])
    err = capsys.readouterr().err
    assert rc != 0 and message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not (out / "logs" / "train_log.jsonl").exists() and not (out / "unet").exists()


def test_kd_still_needs_a_variant(shapes, tmp_path, capsys):
    from bksdm_edge.cli import main

    rc = main(["distill", "--teacher", "builtin:tiny-sd", "--data", str(shapes), "--out", str(tmp_path / "r")])
    assert rc != 0 and "--objective kd needs --variant" in capsys.readouterr().err
