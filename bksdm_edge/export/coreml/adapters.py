"""PyTorch adapters that give the canonical component wrappers (``export/components.py``) the I/O
Apple's Swift package feeds, plus Apple's names (see ``contract.py`` for the whole contract):

- text encoder: ``input_ids`` as float32 (Swift's ``TextEncoder`` feeds token ids as Float32);
- U-Net: ``encoder_hidden_states`` channels-first ``(B, D, 1, 77)`` (layout ``NC1S``), the layout
  Swift's ``toHiddenStates`` builds for every attention implementation;
- VAE encoder: Apple's ``latent`` output is the canonical ``latent_parameters`` (8 channels: mean and
  log-variance, ``components.VaeEncoderWrapper``), which Swift's ``Encoder`` samples from, renamed;
- packages named ``TextEncoder``, ``Unet``, ``VAEDecoder``, ``VAEEncoder``; tensor renames are in
  ``targets.TENSOR_NAMES``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..base import ExportError

# Package names Apple's Swift StableDiffusionPipeline looks for (compiled as NAME.mlmodelc).
APPLE_NAMES = {"text_encoder": "TextEncoder", "unet": "Unet", "vae_decoder": "VAEDecoder", "vae_encoder": "VAEEncoder"}

# Input/output descriptions written into each package.
DESCRIPTIONS: dict[str, dict[str, str]] = {
    "text_encoder": {
        "input_ids": "CLIP token ids (float32 holding integers), padded to 77 with the end token",
        "last_hidden_state": "CLIP text embeddings (1, 77, D)",
    },
    "unet": {
        "sample": "noisy latents (B, 4, H/8, W/8)",
        "timestep": "diffusion timestep, one per batch row (float32)",
        "encoder_hidden_states": "text embeddings, channels-first (B, D, 1, 77) as Apple's pipeline passes them",
        "out_sample": "predicted noise (epsilon) or velocity, same shape as sample",
    },
    "vae_decoder": {
        "z": "latents already divided by the VAE scaling factor (1, 4, H/8, W/8)",
        "sample": "RGB image in [-1, 1], (1, 3, H, W)",
    },
    "vae_encoder": {
        "image": "RGB image in [-1, 1], (1, 3, H, W)",
        "latent": "latent distribution: mean (channels 0-3) and log-variance (4-7), before the scaling factor",
    },
}


def infer_component(input_names) -> str:
    """The SD component a set of canonical input names belongs to."""
    names = tuple(input_names)
    table = {
        ("input_ids",): "text_encoder",
        ("sample", "timestep", "encoder_hidden_states"): "unet",
        ("sample", "timestep", "encoder_hidden_states", "timestep_cond"): "unet",  # a latent consistency model
        ("latent_sample",): "vae_decoder",
        ("sample",): "vae_encoder",
    }
    if names not in table:
        raise ExportError(f"Cannot tell which SD component takes inputs {list(names)}; pass options={{'component': ...}}")
    return table[names]


def find_sd_unet(module: nn.Module):
    """The diffusers ``UNet2DConditionModel`` inside ``module``; a clear error if there is none."""
    from diffusers import UNet2DConditionModel

    found = [m for m in module.modules() if isinstance(m, UNet2DConditionModel)]
    if not found:
        raise ExportError(
            f"The U-Net to export is a {type(module).__name__} containing no diffusers UNet2DConditionModel: "
            "the Core ML exporter converts Stable Diffusion U-Nets (SD-v1/v2 teachers and BK-SDM students). "
            "Pass a diffusers pipeline folder or a student saved by `bksdm-edge build`/`distill`."
        )
    unet = found[0]
    cfg = unet.config
    unsupported = {
        "class embeddings": unet.class_embedding is not None,
        f"addition_embed_type={cfg.addition_embed_type}": cfg.addition_embed_type is not None,
        "encoder_hid_proj": unet.encoder_hid_proj is not None,
        # time_cond_proj_dim (an LCM's guidance embedding) is supported: it is the U-Net's timestep_cond input.
        "time_embedding post-activation": cfg.timestep_post_act is not None,
    }
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise ExportError(f"This U-Net uses {', '.join(bad)}, which Stable Diffusion v1/v2 U-Nets do not; "
                          "the Core ML exporter supports SD-v1/v2 U-Nets and their BK-SDM students.")
    return unet


class FloatTokenIds(nn.Module):
    """Take token ids as float32 (Apple's TextEncoder feeds floats) and cast them back to integers."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids):
        return self.inner(input_ids.to(torch.int32))


class ChannelsFirstText(nn.Module):
    """Accept ``encoder_hidden_states`` as (B, D, 1, S) and hand (B, S, D) to the wrapped module."""

    def __init__(self, inner: nn.Module, text_position: int):
        super().__init__()
        self.inner = inner
        self.text_position = text_position

    def forward(self, *inputs):
        inputs = list(inputs)
        inputs[self.text_position] = inputs[self.text_position].squeeze(2).transpose(1, 2)
        return self.inner(*inputs)


def apple_adapter(component: str, module: nn.Module, input_names) -> nn.Module:
    """``module`` wrapped to take the inputs Swift feeds (``input_names``: the module's inputs, in order)."""
    if component == "text_encoder":
        return FloatTokenIds(module).eval()
    names = list(input_names)
    if "encoder_hidden_states" in names:
        return ChannelsFirstText(module, names.index("encoder_hidden_states")).eval()
    return module
