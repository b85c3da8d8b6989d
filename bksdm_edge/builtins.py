"""Built-in Stable Diffusion architectures: the real configs, seeded random weights.

They let full-size models be built, profiled, exported and benchmarked on a
machine that cannot download checkpoints. Each entry is data: one frozen
``BuiltinSpec`` holding the diffusers/transformers config of every component.
Variants of a family are made with ``dataclasses.replace``, never by copying.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

SD_V1_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "downsample_padding": 1,
    "act_fn": "silu",
}

SD_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}

OPENAI_CLIP_L_TEXT: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 1,
}

# SD-v2 uses OpenCLIP ViT-H/14's text tower up to its penultimate layer (23 of 24).
OPENCLIP_H_TEXT: dict[str, Any] = {
    **OPENAI_CLIP_L_TEXT,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 23,
    "num_attention_heads": 16,
    "hidden_act": "gelu",
    "projection_dim": 512,
    "pad_token_id": 1,
}

SD_SCHEDULER: dict[str, Any] = {
    "_class_name": "PNDMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "skip_prk_steps": True,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "clip_sample": False,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}


@dataclass(frozen=True)
class BuiltinSpec:
    """Everything needed to build one Stable Diffusion pipeline with random weights."""

    name: str
    family: str  # "sd-v1" | "sd-v2"
    description: str
    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    scheduler: dict[str, Any]
    pad_token: str = "<|endoftext|>"
    default_resolution: int = 512
    seed: int = 0
    weights: str | None = None  # packaged safetensors folder with trained weights, if any
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae["block_out_channels"]) - 1)


SD_V14 = BuiltinSpec(
    name="sd-v1.4",
    family="sd-v1",
    description="Stable Diffusion v1.4/v1.5 architecture (859.5M-param U-Net, CLIP ViT-L/14 text encoder)",
    unet=SD_V1_UNET,
    vae=SD_VAE,
    text_encoder=OPENAI_CLIP_L_TEXT,
    scheduler=SD_SCHEDULER,
)

SD_V21_BASE = BuiltinSpec(
    name="sd-v2.1-base",
    family="sd-v2",
    description="Stable Diffusion v2.1-base architecture, 512 px (OpenCLIP ViT-H/14 text encoder)",
    unet={
        **SD_V1_UNET,
        "attention_head_dim": [5, 10, 20, 20],
        "cross_attention_dim": 1024,
        "use_linear_projection": True,
    },
    vae=SD_VAE,
    text_encoder=OPENCLIP_H_TEXT,
    # stabilityai/stable-diffusion-2-1-base ships an epsilon-prediction PNDM config.
    scheduler=SD_SCHEDULER,
    pad_token="!",
)

SD_V21 = dataclasses.replace(
    SD_V21_BASE,
    name="sd-v2.1",
    description="Stable Diffusion v2.1 architecture, 768 px, v-prediction",
    unet={**SD_V21_BASE.unet, "sample_size": 96, "upcast_attention": True},
    scheduler={**SD_SCHEDULER, "_class_name": "DDIMScheduler", "prediction_type": "v_prediction"},
    default_resolution=768,
)

# The SD-v1 topology at small widths: every BK-SDM variant applies, fast on a CPU.
MINI_SD = dataclasses.replace(
    SD_V14,
    name="mini-sd",
    description="SD-v1 topology at small widths (demos and quick tests)",
    unet={
        **SD_V1_UNET,
        "sample_size": 16,
        "block_out_channels": [32, 64, 128, 128],
        "cross_attention_dim": 64,
        "attention_head_dim": 4,
        "norm_num_groups": 16,
    },
    vae={**SD_VAE, "block_out_channels": [16, 32, 32, 32], "norm_num_groups": 8, "sample_size": 128},
    text_encoder={
        **OPENAI_CLIP_L_TEXT,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "projection_dim": 64,
    },
    default_resolution=128,
)

# Smaller still: for unit tests (seconds per export).
TINY_SD = dataclasses.replace(
    MINI_SD,
    name="tiny-sd",
    description="SD-v1 topology at toy widths (unit tests)",
    unet={**MINI_SD.unet, "sample_size": 8, "block_out_channels": [8, 16, 32, 32], "cross_attention_dim": 32,
          "attention_head_dim": 2, "norm_num_groups": 4},
    vae={**MINI_SD.vae, "block_out_channels": [8, 8, 8, 8], "norm_num_groups": 4, "layers_per_block": 1,
         "sample_size": 64},
    text_encoder={**MINI_SD.text_encoder, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                  "projection_dim": 32},
    default_resolution=64,
)

TINY_SD_V2 = dataclasses.replace(
    TINY_SD,
    name="tiny-sd-v2",
    family="sd-v2",
    description="SD-v2 topology (linear projections, per-stage heads) at toy widths (unit tests)",
    unet={**TINY_SD.unet, "attention_head_dim": [1, 2, 4, 4], "use_linear_projection": True},
    text_encoder={**TINY_SD.text_encoder, "hidden_act": "gelu"},
    scheduler={**SD_SCHEDULER, "_class_name": "DDIMScheduler", "prediction_type": "v_prediction"},
    pad_token="!",
)

# A trained teacher: the SD-v1 topology at toy widths, trained here on scikit-learn's handwritten digits
# (benchmarks/mini_sd/train_teacher.py; weights and train_config.json in bksdm_edge/weights/mini-sd-digits).
# 32 px images, a factor-2 VAE: 16x16 latents, so the innermost U-Net stage is 2x2 and BK-SDM-Tiny applies.
MINI_SD_DIGITS = dataclasses.replace(
    MINI_SD,
    name="mini-sd-digits",
    description="SD-v1 topology trained on handwritten digits (32 px; prompts like 'a handwritten digit seven')",
    unet={**MINI_SD.unet, "block_out_channels": [16, 32, 64, 64], "cross_attention_dim": 32,
          "attention_head_dim": 2, "norm_num_groups": 8},
    vae={**MINI_SD.vae, "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
         "block_out_channels": [16, 32], "layers_per_block": 1, "norm_num_groups": 8, "sample_size": 32,
         "scaling_factor": 1.0},
    text_encoder={**MINI_SD.text_encoder, "hidden_size": 32, "intermediate_size": 64, "projection_dim": 32},
    default_resolution=32,
    weights="weights/mini-sd-digits",
)

BUILTINS: dict[str, BuiltinSpec] = {
    spec.name: spec for spec in (SD_V14, SD_V21_BASE, SD_V21, MINI_SD, TINY_SD, TINY_SD_V2, MINI_SD_DIGITS)
}
DEFAULT_BUILTIN = "mini-sd"
