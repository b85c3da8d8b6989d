"""Real component inputs, recorded by running the PyTorch pipeline on prompts.

Validation uses them (a real denoising trajectory exercises value ranges that seeded
random inputs miss) and static int8 quantization calibrates on them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..loading import SDModel
from .components import COMPONENTS, ShapeConfig


@dataclass
class InputSet:
    """One named set of canonical inputs (component input name -> array) for validation."""

    name: str
    inputs: dict[str, np.ndarray]


def seeded_input_sets(component: str, model: SDModel, shape: ShapeConfig, seeds=(0,)) -> list[InputSet]:
    """The component's seeded example inputs, one set per seed."""
    spec = COMPONENTS[component]
    return [
        InputSet(f"seeded:{seed}", {k: v.numpy() for k, v in spec.example_inputs(model, shape, seed).items()})
        for seed in seeds
    ]


def _rebatch(rows: list[dict[str, np.ndarray]], batch: int) -> list[dict[str, np.ndarray]]:
    """Group single-row inputs into batches of ``batch`` rows (cycling rows when there are too few)."""
    if len(rows) < batch:
        rows = [rows[i % len(rows)] for i in range(batch)]
    groups = [rows[i : i + batch] for i in range(0, len(rows) - batch + 1, batch)]
    return [{k: np.stack([r[k] for r in g]) for k in g[0]} for g in groups]


@torch.no_grad()
def record_pipeline_inputs(
    model: SDModel,
    shape: ShapeConfig,
    prompts: list[str],
    *,
    steps: int = 4,
    guidance_scale: float = 7.5,
    seed: int = 0,
    components=("text_encoder", "unet", "vae_decoder", "vae_encoder"),
) -> dict[str, list[list[dict[str, np.ndarray]]]]:
    """Run the diffusers pipeline (classifier-free guidance) on each prompt and record component inputs.

    Returns, per component, one list per U-Net call (a scheduler may call it more often than ``steps``:
    PNDM makes steps + 1 calls) or a single list (others) of single-row input dicts (no batch axis), in
    the order the pipeline produced them: for the U-Net and text encoder each prompt contributes an
    unconditional and a conditional row.
    """
    pipe = model.to_pipeline()
    pipe.set_progress_bar_config(disable=True)
    unet_calls: list[list[dict[str, np.ndarray]]] = []
    call_of_prompt = {"n": 0}

    def hook(_module, args, kwargs):
        names = ("sample", "timestep", "encoder_hidden_states")
        values = dict(zip(names, args)) | {k: kwargs[k] for k in names if k in kwargs}
        x, t, ehs = (values[k] for k in names)
        t = torch.as_tensor(t, dtype=torch.float32).reshape(-1).expand(x.shape[0])
        if call_of_prompt["n"] == len(unet_calls):
            unet_calls.append([])
        for i in range(x.shape[0]):
            unet_calls[call_of_prompt["n"]].append(
                {"sample": x[i].float().numpy(), "timestep": np.float32(t[i]),
                 "encoder_hidden_states": ehs[i].float().numpy()}
            )
        call_of_prompt["n"] += 1

    records: dict[str, list] = {c: [] for c in components}
    latents = []
    for p, prompt in enumerate(prompts):
        call_of_prompt["n"] = 0
        handle = pipe.unet.register_forward_pre_hook(hook, with_kwargs=True) if "unet" in components else None
        try:
            out = pipe(
                prompt, height=shape.height, width=shape.width, num_inference_steps=steps,
                guidance_scale=guidance_scale, generator=torch.Generator().manual_seed(seed + p),
                output_type="latent",
            )
        finally:
            if handle is not None:
                handle.remove()
        latents.append(out.images[0])
        if "text_encoder" in components:
            for text in ("", prompt):
                ids = model.tokenizer(text, padding="max_length", max_length=shape.max_length, truncation=True,
                                      return_tensors="np").input_ids[0]
                records["text_encoder"].append({"input_ids": ids.astype(np.int32)})
    if "unet" in components:
        records["unet"] = unet_calls
    scale = model.vae.config.scaling_factor
    decoder_rows = [{"latent_sample": (z / scale).float().numpy()} for z in latents]
    if "vae_decoder" in components:
        records["vae_decoder"] = decoder_rows
    if "vae_encoder" in components:
        records["vae_encoder"] = [
            {"sample": model.vae.decode(torch.from_numpy(r["latent_sample"])[None]).sample[0].clamp(-1, 1).numpy()}
            for r in decoder_rows
        ]
    return records


def trajectory_input_sets(
    model: SDModel, shape: ShapeConfig, prompt: str, components, *, steps: int = 4, seed: int = 0,
    max_unet_steps: int = 3,
) -> dict[str, list[InputSet]]:
    """Validation sets from one pipeline run on ``prompt``: the U-Net at its first, middle and last call."""
    records = record_pipeline_inputs(model, shape, [prompt], steps=steps, seed=seed, components=components)
    sets: dict[str, list[InputSet]] = {}
    for component, rows in records.items():
        if component == "unet":
            n = len(rows)
            picked = sorted({0, n // 2, n - 1})[:max_unet_steps]
            sets[component] = [
                InputSet(f"trajectory:step{s}" + (f":{j}" if j else ""), batch)
                for s in picked for j, batch in enumerate(_rebatch(rows[s], shape.batch))
            ]
        else:
            sets[component] = [
                InputSet("trajectory" + (f":{j}" if j else ""), batch)
                for j, batch in enumerate(_rebatch(rows, shape.batch))
            ]
    return sets


def calibration_inputs(
    model: SDModel, shape: ShapeConfig, prompts: list[str], components, *, steps: int = 4, seed: int = 1000,
) -> dict[str, list[dict[str, np.ndarray]]]:
    """Calibration samples (batched as exported) for static quantization, from real pipeline runs."""
    records = record_pipeline_inputs(model, shape, prompts, steps=steps, seed=seed, components=components)
    out = {}
    for component, rows in records.items():
        flat = [r for step in rows for r in step] if component == "unet" else rows
        out[component] = _rebatch(flat, shape.batch)
    return out


def read_prompts(path=None) -> list[str]:
    """Prompts from a text file (one per line, '#' comments), or the packaged default list."""
    from importlib import resources
    from pathlib import Path

    text = Path(path).read_text() if path else (resources.files("bksdm_edge") / "data" / "calibration_prompts.txt").read_text()
    prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if not prompts:
        from ..errors import BksdmError

        raise BksdmError(f"no prompts in {path or 'the default calibration list'}")
    return prompts
