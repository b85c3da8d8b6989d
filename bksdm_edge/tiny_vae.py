"""Tiny VAEs (the TAESD architecture, diffusers' ``AutoencoderTiny``): sizing, sources and latent conventions.

The SD VAE decoder is 49.5M parameters and ~1,240 GMACs at 512 px; TAESD (madebyollin/taesd) decodes the
same latents with 1.2M parameters: plain 3x3 conv blocks, nearest upsampling, no attention, no norms.

Latent conventions (the thing to get right when swapping decoders):

- SD's ``AutoencoderKL`` decodes *unscaled* latents: the U-Net works on ``z * scaling_factor`` (0.18215 for
  SD-v1/v2), so a pipeline calls ``vae.decode(latents / scaling_factor)``; its encoder returns a posterior whose
  mean is *unscaled*.
- TAESD decodes the U-Net's latents as they are. diffusers expresses that with ``scaling_factor = 1.0`` in the
  ``AutoencoderTiny`` config, so the same pipeline code (``latents / vae.config.scaling_factor``) works for both.
  Its encoder returns U-Net-space latents directly (a tensor, not a distribution). ``latent_magnitude`` (3) and
  ``latent_shift`` (0.5) only map latents to [0, 1] for storing them as 8-bit images
  (``scale_latents``/``unscale_latents``); decoding does not use them. The decoder soft-clamps its input with
  ``tanh(x / 3) * 3`` and returns ``x * 2 - 1``: images in [-1, 1] (not clamped), like the SD decoder.
- A tiny VAE distilled here keeps that convention: ``scaling_factor = 1.0`` whatever the teacher's factor, and
  ``bksdm_edge.json`` beside its weights records the teacher's VAE (scaling factor, latent channels, spatial
  factor) so it is refused with a teacher whose latent space differs.

A bundle's manifest therefore needs no new arithmetic: ``latent_scaling_factor`` is the exported VAE's
``scaling_factor`` (1.0 for a tiny one) and ``vae.kind`` names the decoder (docs/bundle_format.md).

VAE sources (``--vae``), resolved by ``load_vae``:

- ``teacher``: the model's own VAE (the default);
- ``tiny``: the TAESD architecture sized for the teacher (``tiny_vae_config``) with seeded random weights, like the
  ``builtin:`` models: for profiling and benchmarking (its images are noise);
- a ``bksdm-edge distill-vae`` run folder (its ``vae/``), or any ``AutoencoderTiny`` folder (``save_pretrained``;
  a pipeline folder whose ``vae/`` is one also works);
- a hub id such as ``madebyollin/taesd``, through the Hugging Face cache (offline: only what is cached).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import BksdmError

TEACHER = "teacher"
TINY = "tiny"
TINY_META = "bksdm_edge.json"
RUN_VAE_DIRS = ("vae", "vae_ema")  # what a distill-vae run folder holds; "vae" is what a run folder means
TAESD_CHANNELS = 64  # TAESD's width at every stage


class VaeSourceError(BksdmError, ValueError):
    """A ``--vae`` source that cannot be loaded or does not fit the model; the message says what to do."""


@dataclass(frozen=True)
class VaeKind:
    """One decoder architecture as the bundle manifest names it (``vae.kind``).

    Attributes:
        name: the manifest's name.
        diffusers_class: the diffusers class that implements it.
        description: what it is, for the manifest and ``--help``.
        encoder_returns_distribution: the encoder returns a posterior (take its mean) rather than latents.
    """

    name: str
    diffusers_class: str
    description: str
    encoder_returns_distribution: bool


VAE_KINDS: dict[str, VaeKind] = {
    k.name: k
    for k in (
        VaeKind("autoencoder-kl", "AutoencoderKL", "Stable Diffusion's VAE (decodes latents / scaling_factor)", True),
        VaeKind("autoencoder-tiny", "AutoencoderTiny",
                "TAESD architecture (decodes the U-Net's latents as they are: scaling_factor 1.0)", False),
    )
}
_KIND_OF_CLASS = {k.diffusers_class: k for k in VAE_KINDS.values()}


def kind_of(vae) -> VaeKind:
    """The ``VaeKind`` of a diffusers VAE module (by its class name: the kinds are data, not isinstance checks)."""
    name = type(vae).__name__
    if name not in _KIND_OF_CLASS:
        raise VaeSourceError(f"{name} is not a supported VAE; supported: {', '.join(_KIND_OF_CLASS)}")
    return _KIND_OF_CLASS[name]


def spatial_factor(vae_config) -> int:
    """Pixels per latent along each side: 8 for SD, 2 for builtin:mini-sd-digits (both VAE classes)."""
    return 2 ** (len(_get(vae_config, "block_out_channels")) - 1)


def _get(config, key: str, default=None):
    return config.get(key, default) if isinstance(config, dict) else getattr(config, key, default)


def tiny_vae_config(teacher_vae_config, channels: int | None = None) -> dict[str, Any]:
    """The ``AutoencoderTiny`` config that decodes the teacher's latents.

    TAESD has 4 stages (3 upsamplings: factor 8) of 64 channels, decoder blocks (3, 3, 3, 1) and encoder blocks
    (1, 3, 3, 3). Here the number of stages follows the teacher's spatial factor (log2(factor) + 1: 2 stages for
    the factor-2 digits VAE) with the same block pattern, and the width defaults to TAESD's 64 capped at the
    teacher's first VAE width (so a toy teacher gets a toy decoder: 16 for mini-sd-digits, 8 for tiny-sd).

    Args:
        teacher_vae_config: the teacher ``AutoencoderKL`` config (object or dict).
        channels: width of every stage (default: ``min(64, teacher block_out_channels[0])``).
    """
    factor = spatial_factor(teacher_vae_config)
    stages = int(math.log2(factor)) + 1
    if 2 ** (stages - 1) != factor:
        raise VaeSourceError(f"the teacher VAE's spatial factor {factor} is not a power of two")
    width = channels or min(TAESD_CHANNELS, int(_get(teacher_vae_config, "block_out_channels")[0]))
    if width < 1:
        raise VaeSourceError(f"tiny VAE channels must be >= 1 (got {width})")
    return {
        "in_channels": 3,
        "out_channels": 3,
        "encoder_block_out_channels": [width] * stages,
        "decoder_block_out_channels": [width] * stages,
        "num_encoder_blocks": [1] + [3] * (stages - 1),
        "num_decoder_blocks": [3] * (stages - 1) + [1],
        "latent_channels": int(_get(teacher_vae_config, "latent_channels")),
        "act_fn": "relu",
        "upsample_fn": "nearest",
        "upsampling_scaling_factor": 2,
        "latent_magnitude": 3,
        "latent_shift": 0.5,
        "scaling_factor": 1.0,  # TAESD convention: decodes the U-Net's latents as they are
        "shift_factor": 0.0,
        "force_upcast": False,
    }


def build_tiny_vae(teacher_vae_config, channels: int | None = None, seed: int = 0):
    """A freshly initialised ``AutoencoderTiny`` for the teacher's latents (seeded; the global RNG is untouched)."""
    from diffusers import AutoencoderTiny

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderTiny(**tiny_vae_config(teacher_vae_config, channels)).eval()


def teacher_vae_facts(teacher_vae_config) -> dict[str, Any]:
    """What a tiny VAE must agree on with the VAE whose latents it decodes (recorded in ``bksdm_edge.json``)."""
    return {
        "scaling_factor": float(_get(teacher_vae_config, "scaling_factor", 1.0)),
        "latent_channels": int(_get(teacher_vae_config, "latent_channels")),
        "spatial_factor": spatial_factor(teacher_vae_config),
    }


def save_tiny_vae(vae, out_dir: str | Path, *, teacher: str, teacher_vae_config, extra: dict | None = None) -> Path:
    """Save an ``AutoencoderTiny`` folder plus ``bksdm_edge.json`` (teacher, its latent space, what was trained)."""
    from . import __version__

    out = Path(out_dir)
    vae.save_pretrained(out)
    meta = {
        "kind": kind_of(vae).name,
        "teacher": teacher,
        "teacher_vae": teacher_vae_facts(teacher_vae_config),
        "decoder_params": sum(p.numel() for p in vae.decoder.parameters()),
        "encoder_params": sum(p.numel() for p in vae.encoder.parameters()),
        "bksdm_edge_version": __version__,
        "torch_version": torch.__version__,
        **(extra or {}),
    }
    (out / TINY_META).write_text(json.dumps(meta, indent=2))
    return out


def _read_class(config_path: Path) -> str | None:
    try:
        return json.loads(config_path.read_text()).get("_class_name")
    except (OSError, json.JSONDecodeError):
        return None


def _local_folder(path: Path) -> Path:
    """The ``AutoencoderTiny`` folder inside a run folder / pipeline folder / model folder."""
    if (path / "config.json").exists():
        return path
    for sub in RUN_VAE_DIRS:  # a distill-vae run folder (vae/), or a pipeline folder (vae/)
        if (path / sub / "config.json").exists():
            return path / sub
    if (path / "checkpoints").is_dir():
        raise VaeSourceError(
            f"{path} is a distill-vae run folder without a finished vae/ (the run has not finished); resume it "
            "with `bksdm-edge distill-vae ... --resume latest` or pass a finished run")
    raise VaeSourceError(
        f"{path} is not a tiny VAE: no config.json, vae/config.json or vae_ema/config.json. Pass a "
        "`bksdm-edge distill-vae` run folder, an AutoencoderTiny folder (save_pretrained), a hub id such as "
        "madebyollin/taesd, 'tiny' (random weights) or 'teacher'")


def load_vae(src: str | Path, teacher_vae_config, *, dtype=torch.float32, weights: bool = True):
    """Load a ``--vae`` source (not ``teacher``) that decodes the teacher's latents; returns ``(vae, info)``.

    Args:
        src: ``tiny``, a run / AutoencoderTiny / pipeline folder, or a hub id (see the module docstring).
        teacher_vae_config: the config of the VAE whose latents the U-Net produces (for the checks).
        dtype: torch dtype of the weights.
        weights: False builds the module on the meta device from its config (profiling).
    Returns:
        the VAE (eval mode) and a dict for ``SDModel.info["vae"]``: source, kind, folder, and ``meta`` (the
        folder's ``bksdm_edge.json``: teacher, its latent space, trained parts) when there is one.
    Raises:
        VaeSourceError: unknown source, offline hub id not cached, or a latent space that does not fit.
    """
    from diffusers import AutoencoderTiny

    src = str(src)
    if src == TEACHER:
        raise VaeSourceError("load_vae() loads a replacement VAE; 'teacher' keeps the model's own")
    info: dict[str, Any] = {"source": src}
    if src == TINY:
        if weights:
            vae = build_tiny_vae(teacher_vae_config)
            vae = vae if dtype == torch.float32 else vae.to(dtype)
        else:
            with torch.device("meta"):
                vae = AutoencoderTiny(**tiny_vae_config(teacher_vae_config)).eval()
        info.update(kind=kind_of(vae).name, weights="seeded random (TAESD architecture sized for the teacher)")
        return vae, info
    path = Path(src)
    if path.exists():
        folder = _local_folder(path)
        cls = _read_class(folder / "config.json")
        if cls != "AutoencoderTiny":
            raise VaeSourceError(f"{folder}/config.json describes a {cls}, not an AutoencoderTiny; --vae takes a tiny "
                                 "VAE (the teacher's own VAE is the default, 'teacher')")
        meta_path = folder / TINY_META
        if meta_path.exists():
            info["meta"] = json.loads(meta_path.read_text())
        info["folder"] = str(folder)
        load_from, kwargs = str(folder), {}
    else:
        load_from, kwargs = src, {}
        try:
            AutoencoderTiny.load_config(src)
        except OSError:
            try:  # a pipeline repo whose vae/ is tiny
                AutoencoderTiny.load_config(src, subfolder="vae")
                kwargs = {"subfolder": "vae"}
            except OSError as err:
                raise VaeSourceError(
                    f"Could not load the tiny VAE {src!r}: it is neither a local folder nor a hub id in the local "
                    "Hugging Face cache. With network access it downloads once; offline (HF_HUB_OFFLINE=1) only "
                    "cached ids load. Other choices: a `bksdm-edge distill-vae` run folder, an AutoencoderTiny "
                    "folder, 'tiny' (random weights) or 'teacher'."
                ) from err
    try:
        if weights:
            vae = AutoencoderTiny.from_pretrained(load_from, torch_dtype=dtype, **kwargs).eval()
        else:
            with torch.device("meta"):
                vae = AutoencoderTiny.from_config(AutoencoderTiny.load_config(load_from, **kwargs)).eval()
    except (OSError, ValueError) as err:
        raise VaeSourceError(f"Could not load the tiny VAE {src!r}: {err}") from err
    info["kind"] = kind_of(vae).name
    check_fits(vae.config, teacher_vae_config, src, info.get("meta"))
    return vae, info


def check_fits(tiny_config, teacher_vae_config, src: str, meta: dict | None = None) -> None:
    """Raise ``VaeSourceError`` unless the tiny VAE decodes the latent space the teacher's U-Net works in."""
    want = teacher_vae_facts(teacher_vae_config)
    problems = []
    channels = int(_get(tiny_config, "latent_channels"))
    if channels != want["latent_channels"]:
        problems.append(f"it takes {channels}-channel latents, the model's U-Net makes {want['latent_channels']}")
    factor = spatial_factor(tiny_config)
    if factor != want["spatial_factor"]:
        problems.append(f"it upsamples {factor}x, the model's VAE {want['spatial_factor']}x")
    if float(_get(tiny_config, "shift_factor", 0.0) or 0.0) != 0.0:
        problems.append("it has a shift_factor (an SD3/Flux latent space); SD-v1/v2 latents have none")
    if meta is not None:
        scale = meta.get("teacher_vae", {}).get("scaling_factor")
        if scale is not None and abs(scale - want["scaling_factor"]) > 1e-9:
            problems.append(f"it was distilled from a VAE with scaling_factor {scale}, the model's is "
                            f"{want['scaling_factor']}")
    if problems:
        raise VaeSourceError(f"The tiny VAE {src} does not fit this model: " + "; ".join(problems)
                             + ". Distil one from this teacher with `bksdm-edge distill-vae`.")


def check_components(model, components) -> None:
    """Refuse to export the encoder of a tiny VAE distilled without ``--encoder`` (its encoder is untrained)."""
    meta = (model.info.get("vae") or {}).get("meta")
    if "vae_encoder" in components and meta is not None and "encoder" not in meta.get("trained", ["encoder"]):
        raise VaeSourceError(
            f"the tiny VAE {model.vae_source} was distilled without --encoder, so its encoder is untrained; leave "
            "vae_encoder out of --components (image-to-image can use a bundle of the teacher's VAE encoder) or "
            "distil with --encoder")


def encode_latents(vae, pixels: torch.Tensor) -> torch.Tensor:
    """The encoder's latents of ``pixels`` in [-1, 1], before ``scaling_factor`` (the posterior mean for SD's VAE;
    a tiny VAE's encoder output, whose scaling factor is 1)."""
    out = vae.encode(pixels, return_dict=False)[0]
    return out.mean if kind_of(vae).encoder_returns_distribution else out


def describe(vae, source: str) -> dict[str, Any]:
    """The manifest's ``vae`` entry: which decoder a bundle holds and how to feed it."""
    return vae_entry(kind_of(vae), source, sum(p.numel() for p in vae.decoder.parameters()))


def vae_entry(kind: VaeKind, source: str, decoder_params: int) -> dict[str, Any]:
    """The manifest's ``vae`` entry from its facts (``describe`` for a loaded VAE; the golden bundle's)."""
    return {
        "kind": kind.name,
        "class": kind.diffusers_class,
        "source": source,
        "decoder_params": decoder_params,
        "description": kind.description,
    }
