"""The numpy schedulers against diffusers' torch schedulers (the reference)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from bksdm_edge.runtime.golden import SCHEDULER_CONFIGS, SD_V1_SCHEDULER
from bksdm_edge.runtime.noise import NoiseStream
from bksdm_edge.runtime.schedulers import SCHEDULERS, scheduler_from_config

diffusers = pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")

SD_V1 = SD_V1_SCHEDULER  # the goldens' config (bksdm_edge/runtime/golden.py), not a copy
SD_V2 = {**SD_V1, "prediction_type": "v_prediction"}
CONFIGS = {
    **SCHEDULER_CONFIGS,  # every config the Kotlin goldens use
    "trailing": {**SD_V1, "timestep_spacing": "trailing", "steps_offset": 0},
    "linspace-v": {**SD_V2, "timestep_spacing": "linspace", "beta_schedule": "linear", "clip_sample": True},
}
REFERENCE = {
    "pndm": "PNDMScheduler",
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "lcm": "LCMScheduler",
}
STEPS = (1, 2, 10, 25, 50)
# Relative to the sample's scale: diffusers rounds its scalar coefficients to float32 and we
# keep them in float64, so values that cancel to near zero differ by float32 ulps of the terms.
RTOL = 1e-5


def _assert_close(actual, desired, msg=""):
    atol = RTOL * float(np.abs(desired).max())
    np.testing.assert_allclose(actual, desired, rtol=RTOL, atol=atol, err_msg=msg)


def _pair(name: str, config: dict):
    ours = scheduler_from_config(config, name)
    ref = getattr(diffusers, REFERENCE[name]).from_config(config)
    return ours, ref


@pytest.fixture
def shared_noise(monkeypatch):
    """Make diffusers' LCMScheduler draw its re-noising noise from a NoiseStream, so both sides get the same."""
    import diffusers.schedulers.scheduling_lcm as lcm

    streams = {}

    def draw(shape, generator=None, device=None, dtype=None, layout=None):
        return torch.from_numpy(streams["ref"].normal(tuple(shape))).to(dtype)

    monkeypatch.setattr(lcm, "randn_tensor", draw)
    return streams


def test_registry_names():
    assert sorted(SCHEDULERS) == sorted(REFERENCE)
    assert all(cls.name == name for name, cls in SCHEDULERS.items())
    assert type(scheduler_from_config(SD_V1)).__name__ == "PNDMScheduler"


@pytest.mark.parametrize("config_name", sorted(CONFIGS))
@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_timesteps_and_sigmas_match_diffusers(name, config_name):
    for steps in STEPS:
        ours, ref = _pair(name, CONFIGS[config_name])
        ours.set_timesteps(steps)
        ref.set_timesteps(steps)
        np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy(), err_msg=f"{steps} steps")
        assert ours.timesteps.dtype == ref.timesteps.numpy().dtype
        if hasattr(ref, "sigmas"):
            np.testing.assert_allclose(ours.sigmas, ref.sigmas.numpy(), rtol=1e-6, err_msg=f"{steps} steps")
        np.testing.assert_allclose(ours.init_noise_sigma, float(ref.init_noise_sigma), rtol=1e-6)
        # torch.linspace rounds float32 in a CPU-dependent (vectorised) way: ulp-level only.
        np.testing.assert_allclose(ours.alphas_cumprod, ref.alphas_cumprod.numpy(), rtol=1e-6)


@pytest.mark.parametrize("config_name", sorted(CONFIGS))
@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_denoising_loop_matches_diffusers(name, config_name, shared_noise):
    for steps in STEPS:
        ours, ref = _pair(name, CONFIGS[config_name])
        ours.set_timesteps(steps)
        ref.set_timesteps(steps)
        generator = NoiseStream(steps)
        shared_noise["ref"] = NoiseStream(steps)
        rng = np.random.default_rng(1000 * steps + len(name))
        sample = (rng.standard_normal((1, 4, 8, 8)) * ours.init_noise_sigma).astype(np.float32)
        ref_sample = torch.from_numpy(sample.copy())
        for k, t in enumerate(ref.timesteps):
            x_in = ours.scale_model_input(sample, ours.timesteps[k])
            ref_in = ref.scale_model_input(ref_sample, t)
            _assert_close(x_in, ref_in.numpy())
            # A model output that depends on its input, so errors would feed back as in real use.
            noise = rng.standard_normal(sample.shape).astype(np.float32)
            model_out = (0.5 * x_in + noise).astype(np.float32)
            sample = ours.step(model_out, ours.timesteps[k], sample, generator=generator)
            ref_sample = ref.step(torch.from_numpy(model_out.copy()), t, ref_sample).prev_sample
            assert sample.dtype == np.float32
            _assert_close(sample, ref_sample.numpy(), f"{steps} steps, step {k} (t={int(t)})")


def test_lcm_schedule_of_a_distillation_with_other_solver_steps():
    config = {**SD_V1, "_class_name": "LCMScheduler", "original_inference_steps": 25, "timestep_scaling": 10.0}
    for steps in (1, 2, 4, 8, 25):
        ours, ref = scheduler_from_config(config), diffusers.LCMScheduler.from_config(config)
        ours.set_timesteps(steps)
        ref.set_timesteps(steps)
        np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())
    with pytest.raises(ValueError, match="1..25"):
        scheduler_from_config(config).set_timesteps(26)
    s = scheduler_from_config(config)
    s.set_timesteps(2)
    assert s.draws_noise and not scheduler_from_config(SD_V1).draws_noise
    x = np.zeros((1, 4, 2, 2), np.float32)
    with pytest.raises(ValueError, match="NoiseStream"):
        s.step(x, s.timesteps[0], x)  # a step before the last re-noises: it needs the generator


def test_noise_stream_continues_the_initial_noise():
    from bksdm_edge.runtime.noise import gaussian_noise

    whole = gaussian_noise(7, (23,))
    stream = NoiseStream(7)
    parts = [stream.normal((5,)), stream.normal((1,)), stream.normal((2, 4)), stream.normal((9,))]
    np.testing.assert_array_equal(np.concatenate([p.reshape(-1) for p in parts]), whole)
    assert stream.position == 23


def test_unsupported_config_lists_every_problem():
    with pytest.raises(NotImplementedError, match="use_karras_sigmas.*rescale_betas_zero_snr|rescale.*karras"):
        scheduler_from_config({**SD_V1, "use_karras_sigmas": True, "rescale_betas_zero_snr": True}, "euler")
    with pytest.raises(NotImplementedError, match="prediction_type"):
        scheduler_from_config({**SD_V1, "prediction_type": "sample"}, "ddim")
    with pytest.raises(NotImplementedError, match="skip_prk_steps"):
        scheduler_from_config({**SD_V1, "skip_prk_steps": False})
    with pytest.raises(ValueError, match="not ported"):
        scheduler_from_config({**SD_V1, "_class_name": "LMSDiscreteScheduler"})
    with pytest.raises(ValueError, match="unknown scheduler"):
        scheduler_from_config(SD_V1, "lms")


def test_step_before_set_timesteps_raises():
    s = scheduler_from_config(SD_V1, "ddim")
    x = np.zeros((1, 4, 2, 2), np.float32)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        s.step(x, 1, x)


def test_guidance_embedding_matches_diffusers():
    """diffusers computes exp in float32 1 ulp off the correctly rounded value at one of 128 frequencies; the
    runtime (and the Kotlin engine) round correctly, so one component differs by up to ~1e-3 at w = 15."""
    from diffusers import LatentConsistencyModelPipeline

    from bksdm_edge.runtime.image import embedded_guidance, guidance_scale_embedding

    for g in (1.0, 2.0, 4.0, 8.5, 16.0):
        for dim in (256, 64, 7):
            ours = guidance_scale_embedding(g - 1, dim)
            ref = LatentConsistencyModelPipeline.get_guidance_scale_embedding(
                None, torch.tensor(g - 1).repeat(1), embedding_dim=dim).numpy()
            assert ours.shape == ref.shape == (1, dim) and ours.dtype == np.float32
            diff = np.abs(ours - ref)
            assert diff.max() <= 1.5e-3 and (diff > 1e-6).sum() <= 2 * (dim // 128 + 1), (g, dim, diff.max())
    spec = {"input": "timestep_cond", "dim": 16, "w": "guidance_scale - 1", "scale": 1000.0, "max_period": 10000.0}
    np.testing.assert_array_equal(embedded_guidance(spec, 8.0), guidance_scale_embedding(7.0, 16))
    with pytest.raises(NotImplementedError, match="guidance_scale"):
        embedded_guidance({**spec, "w": "guidance_scale"}, 8.0)
