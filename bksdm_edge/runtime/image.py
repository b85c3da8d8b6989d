"""Latent / image conversions, classifier-free guidance and the LCM guidance embedding, in numpy.

Everything is float32, as in diffusers, so that the Kotlin engine (which also
works in float32 here) gives bit-identical RGB values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# The VAE decoders a bundle may hold: the manifest's ``vae.kind`` (docs/bundle_format.md). A bundle without the
# field (made before it existed) holds SD's AutoencoderKL. The kind names the architecture; the arithmetic always
# comes from ``latent_scaling_factor`` (1.0 for a tiny decoder: TAESD decodes the U-Net's latents as they are),
# ``vae_decoder_input_scaled`` and ``vae_decoder_output_range``. An unknown kind is refused instead of being decoded
# with numbers this reader cannot vouch for. Mirrors ``bksdm_edge.tiny_vae.VAE_KINDS`` (tests keep them equal).
VAE_DECODER_KINDS = ("autoencoder-kl", "autoencoder-tiny")
DEFAULT_VAE_DECODER_KIND = "autoencoder-kl"


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


def guidance_scale_embedding(w, dim: int) -> np.ndarray:
    """The sinusoidal embedding an LCM U-Net takes as ``timestep_cond``, (len(w), dim) float32.

    diffusers' ``LatentConsistencyModelPipeline.get_guidance_scale_embedding``, op for op in float32:
    with f_i = exp(-i·ln(10000)/(dim/2 - 1)) for i < dim/2, the row of w is
    [sin(1000·w·f_i)..., cos(1000·w·f_i)...], zero-padded to an odd ``dim``. The pipeline embeds
    w = guidance_scale - 1 (the LCM paper's CFG convention). exp, sin and cos are evaluated in float64
    and rounded (correctly rounded float32, which torch's kernels match to 1 ulp and Kotlin's
    ``Math`` reproduces); products stay float32 as in torch.

    Args:
        w: one value or a 1-D array of values (LCM convention: guidance_scale - 1).
        dim: the U-Net's ``time_cond_proj_dim``.
    """
    scaled = np.asarray(w, dtype=np.float32).reshape(-1) * np.float32(1000.0)
    half = dim // 2
    step = np.log(np.float32(10000.0)) / np.float32(half - 1)
    freq = np.exp((np.arange(half, dtype=np.float32) * -step).astype(np.float64)).astype(np.float32)
    angles = (scaled[:, None] * freq[None, :]).astype(np.float64)
    emb = np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32)
    if dim % 2:
        emb = np.pad(emb, ((0, 0), (0, 1)))
    return emb.astype(np.float32, copy=False)


# The manifest's ``guidance_embedding`` section (docs/bundle_format.md): what the runtime ports.
GUIDANCE_EMBEDDING_PORTED = {"w": "guidance_scale - 1", "scale": 1000.0, "max_period": 10000.0}


def embedded_guidance(spec: dict, guidance_scale: float) -> np.ndarray:
    """The ``timestep_cond`` input (1, dim) of an LCM U-Net asked for ``guidance_scale``.

    Args:
        spec: the manifest's ``guidance_embedding`` section (``input``, ``dim``, ``w``, ``scale``, ``max_period``).
        guidance_scale: diffusers' guidance scale (the CFG scale the student imitates).
    """
    problems = [f"{k}={spec.get(k)!r} (only {v!r} is ported)" for k, v in GUIDANCE_EMBEDDING_PORTED.items()
                if spec.get(k, v) != v]
    if problems:
        raise NotImplementedError("guidance_embedding: unsupported " + "; ".join(problems))
    return guidance_scale_embedding(guidance_scale - 1.0, int(spec["dim"]))


def latents_for_decoder(latents: np.ndarray, scaling_factor: float, decoder_input_scaled: bool = False) -> np.ndarray:
    """Undo the VAE latent scaling before the decoder, unless the exported decoder does it itself.

    Args:
        latents: final denoised latents.
        scaling_factor: the manifest's ``latent_scaling_factor`` (0.18215 for SD-v1/v2).
        decoder_input_scaled: the manifest's ``vae_decoder_input_scaled``.
    """
    latents = latents.astype(np.float32, copy=False)
    return latents if decoder_input_scaled else latents / np.float32(scaling_factor)


def vae_decoder_kind(manifest: Mapping[str, Any]) -> str:
    """The decoder kind a bundle manifest declares (``vae.kind``); ``ValueError`` for a kind this runtime does not know.

    Args:
        manifest: the parsed ``manifest.json``.
    """
    vae = manifest.get("vae") or {}
    if not isinstance(vae, Mapping):
        raise ValueError(f"manifest 'vae' must be an object, got {type(vae).__name__}")
    kind = vae.get("kind", DEFAULT_VAE_DECODER_KIND)
    if kind not in VAE_DECODER_KINDS:
        raise ValueError(f"the bundle's VAE decoder kind {kind!r} is not supported by this runtime (it decodes "
                         f"{', '.join(VAE_DECODER_KINDS)}); update bksdm-edge")
    return kind


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
