"""Latent / image conversions and classifier-free guidance, in numpy.

Everything is float32, as in diffusers, so that the Kotlin engine (which also
works in float32 here) gives bit-identical RGB values.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def classifier_free_guidance(uncond: np.ndarray, cond: np.ndarray, guidance_scale: float) -> np.ndarray:
    """``uncond + g * (cond - uncond)`` in float32.

    Args:
        uncond: noise prediction for the empty prompt.
        cond: noise prediction for the prompt (same shape).
        guidance_scale: g; 1 returns ``cond`` (up to rounding).
    """
    if uncond.shape != cond.shape:
        raise ValueError(f"uncond {uncond.shape} and cond {cond.shape} differ in shape")
    u = uncond.astype(np.float32, copy=False)
    return u + np.float32(guidance_scale) * (cond.astype(np.float32, copy=False) - u)


def latents_for_decoder(latents: np.ndarray, scaling_factor: float, decoder_input_scaled: bool = False) -> np.ndarray:
    """Undo the VAE latent scaling before the decoder, unless the exported decoder does it itself.

    Args:
        latents: final denoised latents.
        scaling_factor: the manifest's ``latent_scaling_factor`` (0.18215 for SD-v1/v2).
        decoder_input_scaled: the manifest's ``vae_decoder_input_scaled``.
    """
    latents = latents.astype(np.float32, copy=False)
    return latents if decoder_input_scaled else latents / np.float32(scaling_factor)


def decoder_output_to_rgb(image: np.ndarray, output_range: Sequence[float] = (-1.0, 1.0)) -> np.ndarray:
    """VAE decoder output (N)CHW float -> HWC uint8 RGB (first image of a batch).

    ``clip((x - lo) / (hi - lo), 0, 1) * 255``, rounded half to even like diffusers'
    ``numpy_to_pil``; for the usual range [-1, 1] that is ``(x / 2 + 0.5)``.

    Args:
        image: shape (1, 3, H, W) or (3, H, W).
        output_range: the manifest's ``vae_decoder_output_range``.
    """
    if image.ndim == 4:
        image = image[0]
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected (1, 3, H, W) or (3, H, W) decoder output, got {image.shape}")
    lo, hi = (np.float32(v) for v in output_range)
    x = (image.astype(np.float32, copy=False) - lo) / (hi - lo)
    x = np.clip(x, np.float32(0), np.float32(1)) * np.float32(255)
    return np.rint(x).astype(np.uint8).transpose(1, 2, 0)
