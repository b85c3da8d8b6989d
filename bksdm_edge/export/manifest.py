"""The bundle manifest, built in ONE function: ``build_manifest``.

Every writer of a bundle (``pipeline.export_bundle`` for every format, ``runtime/golden.py`` for the
Kotlin engine's golden bundle) goes through it, so a new field is added here once and mirrored in
``bksdm_edge/runtime`` / ``generate.py`` and the Kotlin engine (``Manifest.kt``); docs/bundle_format.md
describes every field. ``bundle.write_manifest`` adds ``format_version``, ``complete``, ``created`` and
the ``files`` hashes when the bundle is committed.

Torch-free: the builder takes plain data (``ModelFacts`` read from a loaded model by
``pipeline.model_facts``), so the golden generator can call it on a fake.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..tokenizer_files import BOS, EOS, clip_merges_and_vocab


@dataclass(frozen=True)
class ModelFacts:
    """What a manifest records about the exported model (besides its components).

    Args:
        family: "sd-v1" | "sd-v2".
        variant: the BK-SDM variant of a student U-Net (``bksdm_edge.json``), None for a teacher.
        vae_scale_factor: pixels per latent cell (8 for SD).
        latent_channels: channels of the VAE latent (4 for SD).
        latent_scaling_factor: the VAE's scaling factor (0.18215 for SD-v1/v2).
        scheduler: the scheduler config (``bundle.scheduler_entry``).
        pad_token: the tokenizer's pad token (``<|endoftext|>`` for SD-v1, ``!`` for SD-v2).
        guidance_embedding: a latent consistency model's guidance embedding: ``position`` (of its input among
            the U-Net's canonical inputs), ``dim``, ``w``, ``scale``, ``max_period``, ``w_range`` (the guidance
            scales it was distilled for, when known); None for other models.
        vae: the manifest's ``vae`` entry (``tiny_vae.describe``: kind, class, source, decoder parameters);
            None writes none (readers then assume SD's AutoencoderKL).
    """

    family: str
    variant: str | None
    vae_scale_factor: int
    latent_channels: int
    latent_scaling_factor: float
    scheduler: Mapping[str, Any]
    pad_token: str
    guidance_embedding: Mapping[str, Any] | None = None
    vae: Mapping[str, Any] | None = None


def tokenizer_entry(pad_token: str, max_length: int) -> dict[str, Any]:
    """The manifest's ``tokenizer`` entry for the CLIP BPE files written under ``tokenizer/``."""
    vocab = clip_merges_and_vocab()[1]
    return {"vocab": "tokenizer/vocab.json", "merges": "tokenizer/merges.txt", "max_length": max_length,
            "bos_token_id": vocab[BOS], "eos_token_id": vocab[EOS], "pad_token_id": vocab[pad_token],
            "pad_token": pad_token}


def guidance_embedding_entry(facts: ModelFacts, components: Mapping[str, Any]) -> dict[str, Any]:
    """``{"guidance_embedding": ...}`` for a latent consistency model (else ``{}``): the U-Net input (by the name
    the format gave it) that takes ``runtime.image.embedded_guidance`` of the guidance scale, and how it is made."""
    ge = facts.guidance_embedding
    if not ge or "unet" not in components:
        return {}
    entry = {k: v for k, v in ge.items() if k != "position"}
    return {"guidance_embedding": {"input": components["unet"]["inputs"][ge["position"]]["name"], **entry}}


def build_manifest(
    request,
    target,
    facts: ModelFacts,
    *,
    height: int,
    width: int,
    max_length: int,
    components: Mapping[str, Any],
    validation: Mapping[str, Any],
    calibration: Mapping[str, Any] | None,
    versions: Mapping[str, str],
) -> dict[str, Any]:
    """The manifest of a bundle (without the fields ``bundle.write_manifest`` adds).

    Args:
        request: the ``ExportRequest`` (source, batch, dynamic, format options).
        target: its registered ``ExportTarget`` (name, description, the format's own manifest section).
        facts: the model facts (``pipeline.model_facts``).
        height, width, max_length: the exported image size and token sequence length.
        components: component -> ``bundle.component_entry``.
        validation: ``{"prompt", "steps", "passed", "numeric_checks"}``.
        calibration: ``{"prompts", "num_prompts", "steps", "samples"}``, None when nothing was calibrated.
        versions: package versions (``pipeline.versions``).
    """
    return {
        "format": target.FORMAT,
        "precision": target.PRECISION,
        "target": {"name": target.name(), "description": target.DESCRIPTION},
        "source": {"model": request.model, "unet": str(request.unet) if request.unet else None,
                   "variant": facts.variant, "family": facts.family, "vae": request.vae},
        # batch: the U-Net's batch; the text encoder and VAE are exported at batch 1.
        "image": {"height": height, "width": width, "batch": request.batch, "dynamic": request.dynamic,
                  "vae_scale_factor": facts.vae_scale_factor, "latent_channels": facts.latent_channels},
        # The decoder kind; its latent scaling is latent_scaling_factor (1.0 for a tiny TAESD decoder).
        **({"vae": dict(facts.vae)} if facts.vae else {}),
        "latent_scaling_factor": facts.latent_scaling_factor,
        "vae_decoder_input_scaled": False,
        "vae_decoder_output_range": [-1, 1],
        "prediction_type": facts.scheduler.get("prediction_type", "epsilon"),
        "scheduler": dict(facts.scheduler),
        **guidance_embedding_entry(facts, components),
        "tokenizer": tokenizer_entry(facts.pad_token, max_length),
        "components": dict(components),
        **target.manifest_section(request),
        "export": {"calibration": dict(calibration) if calibration else None, "validation": dict(validation)},
        "versions": dict(versions),
    }
