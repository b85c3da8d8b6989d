"""PyTorch-free inference pieces for running an exported bundle.

Everything here depends on numpy (and ``regex`` for the tokenizer) only, so that
``bksdm-edge generate`` runs from a bundle with onnxruntime or LiteRT alone. The
Kotlin engine in ``android_demo/engine`` mirrors these modules; the golden vectors
written by :mod:`bksdm_edge.runtime.golden` keep the two in step.
"""

from bksdm_edge.runtime.image import (
    VAE_DECODER_KINDS,
    classifier_free_guidance,
    decoder_output_to_rgb,
    embedded_guidance,
    guidance_scale_embedding,
    latents_for_decoder,
    vae_decoder_kind,
)
from bksdm_edge.runtime.noise import NoiseStream, gaussian_noise
from bksdm_edge.runtime.schedulers import SCHEDULERS, Scheduler, scheduler_from_config
from bksdm_edge.runtime.tokenizer import ClipTokenizer

__all__ = [
    "SCHEDULERS",
    "VAE_DECODER_KINDS",
    "ClipTokenizer",
    "NoiseStream",
    "Scheduler",
    "classifier_free_guidance",
    "decoder_output_to_rgb",
    "embedded_guidance",
    "gaussian_noise",
    "guidance_scale_embedding",
    "latents_for_decoder",
    "scheduler_from_config",
    "vae_decoder_kind",
]
