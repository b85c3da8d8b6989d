"""The exportable components of an SD pipeline, as plain ``nn.Module`` wrappers.

Every format exports the same wrappers, so input/output names, dtypes and the
latent-scaling convention are identical across ONNX, TFLite and Core ML (a
format may rename tensors for its own runtime; the manifest records the names).

Conventions (see docs/bundle_format.md):
- text_encoder: ``input_ids`` int32 [B, 77] -> ``last_hidden_state`` float [B, 77, D]
- unet: ``sample`` [B, 4, h, w], ``timestep`` float32 [B], ``encoder_hidden_states`` [B, 77, D] -> ``out_sample``
- vae_decoder: ``latent_sample`` (latents already divided by the scaling factor) -> ``sample`` in [-1, 1]
- vae_encoder: ``sample`` image in [-1, 1] -> ``latent_parameters``: the latent distribution's mean and
  log-variance stacked on the channel axis (2 x latent channels, not yet multiplied by the scaling factor), what
  optimum's ``ORTVaeEncoder`` wraps as a ``DiagonalGaussianDistribution`` and Apple's Swift ``Encoder`` samples from

A tiny VAE (``AutoencoderTiny``, TAESD) has ``scaling_factor`` 1.0: its decoder takes the U-Net's latents and its
encoder returns them (as the mean, with the smallest log-variance a sampler accepts), so the same conventions hold
with a factor of 1 (``bksdm_edge.tiny_vae``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ..loading import SDModel
from .request import ShapeConfig  # noqa: F401 (re-exported: the shape type of make_inputs)
from ..tiny_vae import kind_of


class TextEncoderWrapper(nn.Module):
    def __init__(self, text_encoder: nn.Module):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids.to(torch.long), return_dict=False)[0]


class UNetWrapper(nn.Module):
    """The U-Net; a latent consistency model's also takes ``timestep_cond``, its guidance-scale embedding."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                timestep_cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.unet(sample, timestep, encoder_hidden_states, timestep_cond=timestep_cond, return_dict=False)[0]


class VaeDecoderWrapper(nn.Module):
    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, latent_sample: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent_sample, return_dict=False)[0]


class VaeEncoderWrapper(nn.Module):
    """image -> the parameters (mean, log-variance) of the VAE's latent distribution: a pipeline samples from them
    (img2img) or takes the mean; the two consumers we match (optimum, Apple's Swift package) both expect them."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae
        self.distribution = kind_of(vae).encoder_returns_distribution

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        out = self.vae.encode(sample, return_dict=False)[0]
        if self.distribution:
            return out.parameters
        # a tiny (TAESD) encoder returns latents, not a distribution: they become the mean, with the smallest
        # log-variance diffusers', optimum's and Swift's samplers accept (-30, std 3e-7), so a sample is the output
        return torch.cat([out, torch.full_like(out, TINY_LOGVAR)], dim=1)


TINY_LOGVAR = -30.0  # diffusers' and Swift's DiagonalGaussianDistribution clamp log-variance to [-30, 20]


def _latent_channels(model: SDModel) -> int:
    return model.unet.config.in_channels if model.unet is not None else model.vae.config.latent_channels


@dataclass(frozen=True)
class ComponentSpec:
    """One exportable component: how to wrap it and what its example inputs look like."""

    name: str
    needs: str  # the SDModel attribute the wrapper is built from
    wrap: Callable[[nn.Module], nn.Module]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    make_inputs: Callable[[SDModel, ShapeConfig, torch.Generator], dict[str, torch.Tensor]]
    # Dimensions that may be dynamic, per input (and output, where its axes are the inputs'): {name: {axis: name}}.
    dynamic_axes: dict[str, dict[int, str]]
    # Inputs after ``input_names`` that only some models have: {input: does this model have it}.
    optional_inputs: dict[str, Callable[[SDModel], bool]] = field(default_factory=dict)

    def input_names_for(self, model: SDModel) -> tuple[str, ...]:
        """This model's input names, in argument order (``input_names`` plus the optional inputs it has)."""
        return self.input_names + tuple(name for name, has in self.optional_inputs.items() if has(model))

    @property
    def batch_axes(self) -> dict[str, dict[int, str]]:
        """``dynamic_axes`` with the batch axis only (a U-Net exported with ``--batch dynamic``)."""
        return {name: {0: axes[0]} for name, axes in self.dynamic_axes.items() if 0 in axes}

    def module(self, model: SDModel) -> nn.Module:
        part = getattr(model, self.needs)
        if part is None:
            raise ValueError(f"The model was loaded without its {self.needs}; cannot export {self.name}.")
        return self.wrap(part).eval()

    def example_inputs(self, model: SDModel, shape: ShapeConfig, seed: int = 0) -> dict[str, torch.Tensor]:
        return self.make_inputs(model, shape, torch.Generator().manual_seed(seed))


def _text_inputs(model: SDModel, shape: ShapeConfig, g: torch.Generator) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, model.text_encoder.config.vocab_size - 2, (shape.batch, shape.max_length), generator=g)
    ids[:, 0] = model.text_encoder.config.bos_token_id
    ids[:, -1] = model.text_encoder.config.eos_token_id
    return {"input_ids": ids.to(torch.int32)}


# An LCM U-Net is validated over the guidance scales users ask for (diffusers' convention): 1 to 16.
SEEDED_GUIDANCE_RANGE = (1.0, 16.0)


def _unet_inputs(model: SDModel, shape: ShapeConfig, g: torch.Generator) -> dict[str, torch.Tensor]:
    from ..runtime.image import guidance_scale_embedding

    h, w = shape.latent(model)
    dim = model.unet.config.cross_attention_dim
    inputs = {
        "sample": torch.randn(shape.batch, _latent_channels(model), h, w, generator=g),
        "timestep": torch.randint(0, 1000, (shape.batch,), generator=g).to(torch.float32),
        "encoder_hidden_states": torch.randn(shape.batch, shape.max_length, dim, generator=g),
    }
    if model.is_lcm:  # the embedding the runtime feeds: of w = guidance_scale - 1
        lo, hi = SEEDED_GUIDANCE_RANGE
        guidance = lo + (hi - lo) * torch.rand(shape.batch, generator=g, dtype=torch.float64)
        inputs["timestep_cond"] = torch.from_numpy(
            guidance_scale_embedding((guidance - 1.0).numpy(), model.unet.config.time_cond_proj_dim))
    return inputs


def _decoder_inputs(model: SDModel, shape: ShapeConfig, g: torch.Generator) -> dict[str, torch.Tensor]:
    h, w = shape.latent(model)
    # Latents a denoiser produces, divided by the scaling factor: unit-ish variance / 0.18.
    scale = model.vae.config.scaling_factor
    return {"latent_sample": torch.randn(shape.batch, model.vae.config.latent_channels, h, w, generator=g) / scale}


def _encoder_inputs(model: SDModel, shape: ShapeConfig, g: torch.Generator) -> dict[str, torch.Tensor]:
    return {"sample": torch.rand(shape.batch, 3, shape.height, shape.width, generator=g) * 2 - 1}


COMPONENTS: dict[str, ComponentSpec] = {
    spec.name: spec
    for spec in (
        ComponentSpec(
            "text_encoder", "text_encoder", TextEncoderWrapper, ("input_ids",), ("last_hidden_state",),
            _text_inputs, {"input_ids": {0: "batch"}, "last_hidden_state": {0: "batch"}},
        ),
        ComponentSpec(
            "unet", "unet", UNetWrapper, ("sample", "timestep", "encoder_hidden_states"), ("out_sample",),
            _unet_inputs,
            {"sample": {0: "batch", 2: "height", 3: "width"}, "timestep": {0: "batch"},
             "encoder_hidden_states": {0: "batch"}, "timestep_cond": {0: "batch"},
             "out_sample": {0: "batch", 2: "height", 3: "width"}},
            optional_inputs={"timestep_cond": lambda model: model.is_lcm},
        ),
        ComponentSpec(
            "vae_decoder", "vae", VaeDecoderWrapper, ("latent_sample",), ("sample",), _decoder_inputs,
            {"latent_sample": {0: "batch", 2: "height", 3: "width"}},
        ),
        ComponentSpec(
            "vae_encoder", "vae", VaeEncoderWrapper, ("sample",), ("latent_parameters",), _encoder_inputs,
            {"sample": {0: "batch", 2: "height", 3: "width"}},
        ),
    )
}
DEFAULT_COMPONENTS = ("text_encoder", "unet", "vae_decoder")


def spec_for_inputs(input_names: tuple[str, ...]) -> ComponentSpec:
    """The component whose wrapper takes these inputs (back-ends get example inputs, not the component name):
    its required inputs, then only optional ones (an LCM U-Net's ``timestep_cond``)."""
    names = tuple(input_names)
    for spec in COMPONENTS.values():
        n = len(spec.input_names)
        if names[:n] == spec.input_names and set(names[n:]) <= set(spec.optional_inputs):
            return spec
    raise ValueError(f"no component takes inputs {list(input_names)}")


def write_source_config(module: nn.Module, out_dir) -> "Path | None":
    """Save the config of the diffusers/transformers model inside a component wrapper as ``out_dir/config.json``,
    as ``save_pretrained`` of a diffusers pipeline writes it (``unet/config.json``, ``vae/config.json``,
    ``text_encoder/config.json``): what optimum's ORT pipelines read per component (``unet.config.in_channels``,
    ``vae.config.scaling_factor``, ...). Returns the file, or None when the wrapped module has no config."""
    import copy
    from pathlib import Path

    inner = next(module.children(), None)
    config = getattr(inner, "config", None)
    if config is None:
        return None
    out_dir = Path(out_dir)
    if hasattr(inner, "save_config"):  # diffusers ConfigMixin (UNet2DConditionModel, AutoencoderKL, AutoencoderTiny)
        inner.save_config(out_dir)
    elif hasattr(config, "save_pretrained"):  # transformers PretrainedConfig
        config = copy.deepcopy(config)
        # what PreTrainedModel.save_pretrained records besides the config: the class and the weights' dtype
        config.architectures = [type(inner).__name__]
        config.dtype = str(next(inner.parameters()).dtype).removeprefix("torch.")
        config.save_pretrained(out_dir)
    else:
        return None
    return out_dir / "config.json"
