"""Peers: engines our users would pick instead of an export of ours, measured by the same harness.

Rows of a peer back-end carry ``peer: true`` and are marked as peers in the report: they are not exports of this
toolkit, and their ``precision`` is the peer's own weight type.

stable-diffusion.cpp (``sdcpp``), through the PyPI binding ``stable-diffusion-cpp-python`` built from its sdist
(``pip install --no-binary stable-diffusion-cpp-python stable-diffusion-cpp-python``: cmake + gcc compile ggml with
``-march=native``, so its CPU kernels use the ISA of the building machine). The artifact is a diffusers pipeline
folder that stable-diffusion.cpp loads as it is, converting the weights to the row's GGUF type at load (``f32``,
``f16``, ``q8_0``, ``q4_0``). It runs SD-v1 U-Nets and, through its "SD 1.x Tiny UNet" path (any SD1 U-Net
without a mid block), BK-SDM-Tiny; it has no path for BK-SDM-Base/Small (a mid-block-less U-Net with 4 stages is
not its tiny layout, and a full layout with one resnet per stage is not SD1's), so those rows are refused up front.

One U-Net call, measured as stable-diffusion.cpp itself times it: a run generates an image with ``cfg_scale=1``
(one U-Net call per sampling step, no unconditional pass) over ``SDCPP_STEPS`` steps, and the row's time is the
median of its own per-step times (its progress callback); the wall time of the whole image (text encoder, steps,
VAE decoder) is kept in ``backend_info``.
"""

from __future__ import annotations

import time
from importlib import metadata
from pathlib import Path

import numpy as np

from .backends import (BENCH_PROMPT, PIPELINE_PARTS, Backend, BackendUnavailable, Loaded, load_scenario_model,
                       register_backend)
from .scenario import TEACHER

SDCPP_PRECISIONS = ("f32", "f16", "q8_0", "q4_0")
SDCPP_STEPS = 2
SDCPP_MODELS = (TEACHER, "bk-tiny")
INSTALL = ("pip install --no-binary stable-diffusion-cpp-python stable-diffusion-cpp-python "
           "(builds stable-diffusion.cpp with cmake and gcc)")


def sdcpp_version() -> str | None:
    try:
        return metadata.version("stable-diffusion-cpp-python")
    except metadata.PackageNotFoundError:
        return None


def fix_text_encoder_keys(folder: Path) -> int:
    """Prefix the text encoder's state-dict keys with ``text_model.`` (transformers 5 saves CLIPTextModel without
    it; stable-diffusion.cpp maps only the prefixed names and fails to load otherwise). Returns keys renamed."""
    from safetensors.numpy import load_file, save_file

    renamed = 0
    for f in sorted((folder / "text_encoder").glob("*.safetensors")):
        tensors = load_file(str(f))
        fixed = {}
        for k, v in tensors.items():
            new = k if k.startswith("text_model.") or k.startswith("text_projection") else "text_model." + k
            renamed += new != k
            fixed[new] = v
        if renamed:
            save_file(fixed, str(f), metadata={"format": "pt"})
    return renamed


@register_backend
class StableDiffusionCppBackend(Backend):
    """stable-diffusion.cpp (a peer): SD-v1.4 and BK-SDM-Tiny U-Net calls at its GGUF weight types."""

    NAME = "sdcpp"
    PEER = True
    NEEDS_MODULE = False
    RUNTIME_MODULES = ("stable_diffusion_cpp",)

    def precisions(self) -> list[str]:
        return list(SDCPP_PRECISIONS) if sdcpp_version() else []

    def check(self, s) -> None:
        if not sdcpp_version():
            raise BackendUnavailable(f"stable-diffusion.cpp is not installed: {INSTALL}")
        super().check(s)
        if s.component != "unet":
            raise BackendUnavailable("stable-diffusion.cpp is measured per U-Net call (component: unet)")
        if s.batch != 1:
            raise BackendUnavailable("stable-diffusion.cpp rows run batch 1 (cfg_scale 1: one U-Net call per step)")
        if s.model not in SDCPP_MODELS and not Path(s.model).is_dir():
            raise BackendUnavailable(
                f"stable-diffusion.cpp has no path for {s.model}: it runs the SD-v1 U-Net and, as its 'tiny U-Net', "
                "an SD1 U-Net without a mid block (BK-SDM-Tiny); BK-SDM-Base/Small fit neither")
        if s.device != "cpu":
            raise BackendUnavailable("the stable-diffusion.cpp rows run on the CPU build")

    def prepare(self, s, module, example_inputs, output_names, out_dir: Path) -> dict:
        import torch

        model = load_scenario_model(s, PIPELINE_PARTS)
        if model.family != "sd-v1":
            raise BackendUnavailable(f"stable-diffusion.cpp rows are for SD-v1 sources, not {model.family}")
        pipe = model.to_pipeline().to(torch.float16)  # f16 on disk: half the folder; sd.cpp converts at load
        folder = out_dir / "pipeline"
        pipe.save_pretrained(folder, safe_serialization=True)
        renamed = fix_text_encoder_keys(folder)
        files = sorted(str(f.relative_to(out_dir)) for f in folder.rglob("*") if f.is_file())
        return {"files": files, "main": "pipeline",
                "extra": {"peer": "stable-diffusion.cpp", "package": f"stable-diffusion-cpp-python {sdcpp_version()}",
                          "weights_on_disk": "float16 diffusers folder", "text_encoder_keys_prefixed": renamed}}

    def load(self, s, artifact_dir: Path, meta: dict) -> Loaded:
        from stable_diffusion_cpp import StableDiffusion

        sd = StableDiffusion(model_path=str(artifact_dir / meta["main"]), wtype=s.precision, n_threads=s.threads,
                             vae_decode_only=True, verbose=False)
        step_times: list[float] = []
        walls: list[float] = []

        def on_step(step, steps, seconds):
            if steps == SDCPP_STEPS:  # sampling steps (the VAE decoder reports its own progress)
                step_times.append(float(seconds))

        def run(_):
            step_times.clear()
            t0 = time.perf_counter()
            sd.generate_image(BENCH_PROMPT, width=s.resolution, height=s.resolution, cfg_scale=1.0,
                              sample_steps=SDCPP_STEPS, seed=0, progress_callback=on_step)
            walls.append(time.perf_counter() - t0)
            if len(step_times) < SDCPP_STEPS:
                raise RuntimeError(f"stable-diffusion.cpp reported {len(step_times)} step times, expected "
                                   f"{SDCPP_STEPS}")

        return Loaded(run=run, reported_s=lambda: float(np.median(step_times[-SDCPP_STEPS:])),
                      info={"peer": "stable-diffusion.cpp", "version": sdcpp_version(), "wtype": s.precision,
                            "timing": f"median of stable-diffusion.cpp's own per-step times over {SDCPP_STEPS} "
                                      "steps at cfg_scale 1 (one U-Net call each)",
                            "image_wall_s": walls})
