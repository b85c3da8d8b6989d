"""Core ML back-end: mlprogram ``.mlpackage`` files that Apple's Swift ``StableDiffusion`` package loads.

Conversion is ``torch.jit.trace`` + ``coremltools.convert`` at fp16 compute precision,
then optional weight compression with ``coremltools.optimize.coreml`` (int8 linear
quantization, 4/6/8-bit k-means palettization). Differences from the canonical
component I/O (docs/bundle_format.md), all recorded in ``TensorInfo``:

- text encoder: ``input_ids`` is float32 (Apple's Swift ``TextEncoder`` feeds token ids as floats);
- U-Net: ``encoder_hidden_states`` is channels-first ``(B, D, 1, 77)`` (layout ``NC1S``), the
  layout Apple's pipeline builds with ``toHiddenStates`` for every attention implementation;
- VAE decoder input is named ``z``; VAE encoder input is named ``image`` (Apple's names).

Core ML prediction needs macOS. Elsewhere this back-end declares a static check: it reads
the saved spec (names, shapes, dtypes, the weight precision actually stored) and the
stored weights (dequantized) and compares those with the PyTorch weights (PSNR).
Every torch/coremltools import stays inside functions (see registry.py).
"""

from __future__ import annotations

import importlib.util
import logging
import math
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from .base import ConvertedModel, ExportError, Runner, TensorInfo
from .registry import ExportTarget, Tolerance, register_target

# ---------------------------------------------------------------------------------------------
# data: precisions, deployment targets, compute units, Apple names


@dataclass(frozen=True)
class WeightRecipe:
    """How one ``--precision`` stores weights (compute precision is always fp16)."""

    name: str
    kind: str  # "fp16" | "linear" | "palettize"
    nbits: int
    min_target: str  # the oldest deployment target that can hold these weights
    description: str

    @property
    def needs_sklearn(self) -> bool:
        return self.kind == "palettize"


RECIPES: dict[str, WeightRecipe] = {
    r.name: r
    for r in (
        WeightRecipe("fp16", "fp16", 16, "iOS16", "float16 weights and compute (Apple's default)"),
        WeightRecipe("int8", "linear", 8, "iOS16", "int8 weights (linear symmetric, per output channel), fp16 compute"),
        WeightRecipe("palettize8", "palettize", 8, "iOS17", "8-bit k-means palettized weights (256-entry LUT)"),
        WeightRecipe("palettize6", "palettize", 6, "iOS17",
                     "6-bit k-means palettized weights (64-entry LUT), Apple's recommended size/quality point"),
        WeightRecipe("palettize4", "palettize", 4, "iOS17", "4-bit k-means palettized weights (16-entry LUT)"),
    )
}

# Deployment target -> (coremltools target attribute, the OS "generation" used to compare targets).
DEPLOYMENT_TARGETS: dict[str, tuple[str, int]] = {
    "iOS16": ("iOS16", 16), "macOS13": ("macOS13", 16),
    "iOS17": ("iOS17", 17), "macOS14": ("macOS14", 17),
    "iOS18": ("iOS18", 18), "macOS15": ("macOS15", 18),
}
_GENERATION_NAMES = {16: "iOS16/macOS13", 17: "iOS17/macOS14", 18: "iOS18/macOS15"}

COMPUTE_UNITS: dict[str, str] = {
    "all": "ALL", "cpu-and-ne": "CPU_AND_NE", "cpu-and-gpu": "CPU_AND_GPU", "cpu-only": "CPU_ONLY",
}

# File names Apple's Swift StableDiffusionPipeline looks for (compiled as NAME.mlmodelc).
APPLE_NAMES = {"text_encoder": "TextEncoder", "unet": "Unet", "vae_decoder": "VAEDecoder",
               "vae_encoder": "VAEEncoder"}
UNET_CHUNK_NAMES = ("UnetChunk1", "UnetChunk2")
CHUNK_THRESHOLD_BYTES = 1 << 30  # Apple chunks U-Nets over 1 GB for the iOS Neural Engine

# Canonical tensor name -> Core ML name, per component.
TENSOR_RENAMES: dict[str, dict[str, str]] = {
    "vae_decoder": {"latent_sample": "z"},
    "vae_encoder": {"sample": "image"},
}

DESCRIPTIONS = {
    "input_ids": "CLIP token ids (float32 holding integers), padded to 77 with the end token",
    "last_hidden_state": "CLIP text embeddings (B, 77, D)",
    "sample": "noisy latents (B, 4, H/8, W/8)",
    "timestep": "diffusion timestep, one per batch row (float32)",
    "encoder_hidden_states": "text embeddings, channels-first (B, D, 1, 77) as Apple's pipeline passes them",
    "out_sample": "predicted noise (epsilon) or velocity, same shape as sample",
    "z": "latents already divided by the VAE scaling factor (B, 4, H/8, W/8)",
    "image": "RGB image in [-1, 1], (B, 3, H, W)",
    "latent_mean": "mean of the latent distribution (not yet multiplied by the scaling factor)",
}

# Sanity floors for the PSNR of stored weights against PyTorch (peak = max |w| per tensor).
# They catch a broken conversion (wrong tensor, failed compression), not quality loss.
WEIGHT_PSNR_FLOOR = {"fp16": 55.0, "int8": 30.0, "palettize8": 30.0, "palettize6": 20.0, "palettize4": 10.0}

TEXT_LAYOUT = "NC1S"  # (batch, channels, 1, sequence): Apple's channels-first text layout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CoreMLOptions:
    """Options of one ``convert`` call (``convert(..., options=dict)`` builds this).

    Args:
        component: text_encoder | unet | vae_decoder | vae_encoder; inferred from the input names if None.
        attention: "original" (diffusers' attention) or "split-einsum" (ANE layout, see split_einsum.py).
        compute_units: recorded in the package metadata and used when the model is run on macOS.
        min_deployment_target: iOS16 | iOS17 | macOS13 | macOS14 | ...; None picks the oldest that
            the precision allows (iOS16, or iOS17 for palettization).
        chunk_unet: split the U-Net into UnetChunk1/UnetChunk2 (Apple's layout for the iOS Neural Engine).
        weight_threshold: weights with fewer elements stay fp16 (coremltools' default 2048).
        file_name: package name without extension; None uses Apple's name for the component.
        metadata: extra ``user_defined_metadata`` entries (teacher, variant, ...).
    """

    component: str | None = None
    attention: str = "original"
    compute_units: str = "all"
    min_deployment_target: str | None = None
    chunk_unet: bool = False
    weight_threshold: int = 2048
    file_name: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, options: dict[str, Any] | None) -> "CoreMLOptions":
        options = dict(options or {})
        unknown = set(options) - set(cls.__dataclass_fields__)
        if unknown:
            raise ExportError(f"Unknown Core ML options {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**options)


# ---------------------------------------------------------------------------------------------
# environment and argument checks (before any model is loaded)


@dataclass(frozen=True)
class IncompatibleVersions:
    """A package version range that does not work with a coremltools version range."""

    package: str
    package_versions: str  # PEP 440 specifier
    coremltools_versions: str
    why: str
    fix: str


KNOWN_INCOMPATIBLE = (
    IncompatibleVersions(
        "numpy", ">=2.3", "<=9.0",
        "coremltools {ct} cannot convert traced PyTorch models with numpy {v} (it fails with \"only 0-dimensional "
        "arrays can be converted to Python scalars\")",
        "pip install 'numpy<2.3'",
    ),
    IncompatibleVersions(
        "torch", "<2.1", ">=0", "the diffusers models and the PyTorch frontend of coremltools {ct} need torch >= 2.1 "
        "(found {v})", "pip install 'torch>=2.1'",
    ),
)
MIN_COREMLTOOLS = "8.0"


def _version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def check_environment(precision: str) -> dict[str, str]:
    """Raise ``ExportError`` if this Python environment cannot do a Core ML export at ``precision``.

    Returns the versions that were checked (recorded in the bundle).
    """
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    recipe = get_recipe(precision)
    ct_version = _version("coremltools")
    if ct_version is None:
        raise ExportError("Core ML export needs coremltools: pip install 'coremltools>=8.0'")
    if Version(ct_version) < Version(MIN_COREMLTOOLS):
        raise ExportError(f"coremltools {ct_version} is too old for weight compression; "
                          f"pip install 'coremltools>={MIN_COREMLTOOLS}'")
    versions = {"coremltools": ct_version}
    problems = []
    for rule in KNOWN_INCOMPATIBLE:
        v = _version(rule.package)
        if v is None:
            continue
        versions[rule.package] = v
        if Version(v) in SpecifierSet(rule.package_versions) and Version(ct_version) in SpecifierSet(
            rule.coremltools_versions
        ):
            problems.append(f"{rule.why.format(ct=ct_version, v=v)}. Fix: {rule.fix}")
    if recipe.needs_sklearn:
        if importlib.util.find_spec("sklearn") is None:
            problems.append(
                f"--precision {precision} clusters weights with k-means from scikit-learn, which is not installed. "
                "Fix: pip install scikit-learn"
            )
        else:
            versions["scikit-learn"] = _version("scikit-learn") or "?"
    if problems:
        raise ExportError("Core ML export cannot run in this environment:\n  - " + "\n  - ".join(problems))
    return versions


def get_recipe(precision: str) -> WeightRecipe:
    if precision not in RECIPES:
        raise ExportError(f"Unknown Core ML precision {precision!r}; choose from {', '.join(RECIPES)}")
    return RECIPES[precision]


def resolve_deployment_target(precision: str, requested: str | None) -> str:
    """The deployment target to convert for; refuses one too old for the precision."""
    recipe = get_recipe(precision)
    if requested is None:
        return recipe.min_target
    if requested not in DEPLOYMENT_TARGETS:
        raise ExportError(f"Unknown --min-deployment-target {requested!r}; choose from {', '.join(DEPLOYMENT_TARGETS)}")
    needed = DEPLOYMENT_TARGETS[recipe.min_target][1]
    if DEPLOYMENT_TARGETS[requested][1] < needed:
        raise ExportError(
            f"--precision {precision} needs --min-deployment-target {_GENERATION_NAMES[needed]} or newer "
            f"(palettized weights are decompressed on the Neural Engine only from iOS 17 / macOS 14); "
            f"got {requested}. Use --precision int8 or fp16 for {requested}, or raise the target."
        )
    return requested


def _quiet_coremltools() -> None:
    for name in ("coremltools", "coremltools.models", "coremltools.converters"):
        logging.getLogger(name).setLevel(logging.ERROR)


# ---------------------------------------------------------------------------------------------
# PyTorch adapters: Apple's I/O layout around the canonical component wrappers


def infer_component(input_names) -> str:
    """The SD component a set of canonical input names belongs to."""
    names = tuple(input_names)
    table = {
        ("input_ids",): "text_encoder",
        ("sample", "timestep", "encoder_hidden_states"): "unet",
        ("latent_sample",): "vae_decoder",
        ("sample",): "vae_encoder",
    }
    if names not in table:
        raise ExportError(f"Cannot tell which SD component takes inputs {list(names)}; pass options={{'component': ...}}")
    return table[names]


def find_sd_unet(module):
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
        "time_embedding conditioning": cfg.timestep_post_act is not None or cfg.time_cond_proj_dim is not None,
    }
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise ExportError(f"This U-Net uses {', '.join(bad)}, which Stable Diffusion v1/v2 U-Nets do not; "
                          "the Core ML exporter supports SD-v1/v2 U-Nets and their BK-SDM students.")
    return unet


def _nn():
    from torch import nn

    return nn


class _Adapters:
    """Lazily built torch modules (torch is imported only when converting)."""

    @staticmethod
    def float_token_ids(inner):
        import torch

        class FloatTokenIds(_nn().Module):
            """Take token ids as float32 (Apple's TextEncoder feeds floats) and cast them back to integers."""

            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, input_ids):
                return self.inner(input_ids.to(torch.int32))

        return FloatTokenIds(inner)

    @staticmethod
    def channels_first_text(inner, text_position: int):
        class ChannelsFirstText(_nn().Module):
            """Accept encoder_hidden_states as (B, D, 1, S) and hand (B, S, D) to the wrapped module."""

            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, *inputs):
                inputs = list(inputs)
                inputs[text_position] = inputs[text_position].squeeze(2).transpose(1, 2)
                return self.inner(*inputs)

        return ChannelsFirstText(inner)


def to_apple_text_layout(x):
    """(B, S, D) -> (B, D, 1, S), for torch tensors or numpy arrays."""
    if x.ndim == 4:
        return x
    return x.transpose(1, 2)[:, :, None, :] if hasattr(x, "unsqueeze") else np.ascontiguousarray(
        x.transpose(0, 2, 1)[:, :, None, :])


# ---------------------------------------------------------------------------------------------
# U-Net chunking (Apple's UnetChunk1 / UnetChunk2), as explicit PyTorch halves


def build_unet_chunks(unet, n_up: int | None = None, example: dict[str, Any] | None = None):
    """Split a diffusers SD U-Net into two modules whose composition equals it.

    Chunk 1 runs the time embedding, ``conv_in``, the down blocks, the mid block (if any) and the
    first ``n_up`` up blocks; chunk 2 runs the remaining up blocks and the output head. Chunk 1
    returns ``temb``, ``hidden_states`` and the skip tensors chunk 2 still needs (``skip_0`` ...),
    chunk 2 takes ``encoder_hidden_states`` plus exactly those. ``n_up`` defaults to the split that
    balances parameter counts (what matters for the 1 GB per-model limit). Given ``example`` inputs,
    boundary tensors that are the same tensor (a down block without downsampler returns its output
    as a skip too) are passed once: Core ML cannot declare one tensor as two outputs.

    Returns:
        (chunk1, chunk2, n_up)
    """
    import torch

    find_sd_unet(unet)
    ups = list(unet.up_blocks)
    if n_up is None:
        total = sum(p.numel() for p in unet.parameters())
        before = total - sum(p.numel() for b in ups for p in b.parameters()) - sum(
            p.numel() for m in (unet.conv_norm_out, unet.conv_out) if m is not None for p in m.parameters())
        best, n_up = math.inf, 0
        for k in range(len(ups)):  # chunk 2 keeps at least one up block
            first = before + sum(p.numel() for b in ups[:k] for p in b.parameters())
            if abs(2 * first - total) < best:
                best, n_up = abs(2 * first - total), k
    if not 0 <= n_up < len(ups):
        raise ExportError(f"n_up must be in [0, {len(ups) - 1}] for a U-Net with {len(ups)} up blocks")

    def run_up(block, h, emb, ehs, skips):
        if getattr(block, "has_cross_attention", False):
            return block(hidden_states=h, temb=emb, res_hidden_states_tuple=skips, encoder_hidden_states=ehs)
        return block(hidden_states=h, temb=emb, res_hidden_states_tuple=skips)

    class UnetChunk1(_nn().Module):
        def __init__(self):
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, encoder_hidden_states):
            u = self.unet
            # 1. Time embedding, as UNet2DConditionModel.forward computes it for SD.
            emb = u.time_embedding(u.time_proj(timestep.expand(sample.shape[0])).to(sample.dtype))
            # 2. Down path, collecting skips.
            h = u.conv_in(sample)
            skips = (h,)
            for block in u.down_blocks:
                if getattr(block, "has_cross_attention", False):
                    h, res = block(hidden_states=h, temb=emb, encoder_hidden_states=encoder_hidden_states)
                else:
                    h, res = block(hidden_states=h, temb=emb)
                skips += res
            # 3. Mid block (BK-SDM Small and Tiny have none).
            if u.mid_block is not None:
                h = u.mid_block(h, emb, encoder_hidden_states=encoder_hidden_states)
            # 4. The first n_up up blocks.
            for block in u.up_blocks[:n_up]:
                n = len(block.resnets)
                h = run_up(block, h, emb, encoder_hidden_states, skips[-n:])
                skips = skips[:-n]
            boundary = (emb, h, *skips)
            return tuple(boundary[i] for i in self.keep) if self.keep is not None else boundary

    class UnetChunk2(_nn().Module):
        def __init__(self):
            super().__init__()
            self.unet = unet

        def forward(self, encoder_hidden_states, *boundary):
            u = self.unet
            if self.expand is not None:
                boundary = tuple(boundary[j] for j in self.expand)
            temb, h, skips = boundary[0], boundary[1], boundary[2:]
            for block in u.up_blocks[n_up:]:
                n = len(block.resnets)
                h = run_up(block, h, temb, encoder_hidden_states, skips[-n:])
                skips = skips[:-n]
            if u.conv_norm_out is not None:
                h = u.conv_act(u.conv_norm_out(h))
            return u.conv_out(h)

    chunk1, chunk2 = UnetChunk1().eval(), UnetChunk2().eval()
    chunk1.keep = chunk2.expand = None
    if example is not None:
        with torch.no_grad():
            boundary = chunk1(*example.values())
        # keep: the first occurrence of each distinct tensor; expand: full position -> kept position.
        keep = [i for i, t in enumerate(boundary) if not any(t is boundary[j] for j in range(i))]
        chunk1.keep = keep
        chunk2.expand = [next(k for k, i in enumerate(keep) if boundary[i] is t) for t in boundary]
        names = ["temb", "hidden_states"] + [f"skip_{i}" for i in range(len(boundary) - 2)]
        chunk1.output_names = [names[i] for i in keep]
    return chunk1, chunk2, n_up


def chunk_io_names(chunk1) -> tuple[list[str], list[str]]:
    """(chunk 1 output names, chunk 2 input names) of chunks built with example inputs."""
    return list(chunk1.output_names), ["encoder_hidden_states", *chunk1.output_names]


# ---------------------------------------------------------------------------------------------
# conversion


def _numpy_dtype_name(data_type: int) -> str:
    from coremltools.proto import FeatureTypes_pb2 as ft

    table = {ft.ArrayFeatureType.FLOAT32: "float32", ft.ArrayFeatureType.FLOAT16: "float16",
             ft.ArrayFeatureType.INT32: "int32", ft.ArrayFeatureType.DOUBLE: "float64"}
    return table.get(data_type, str(data_type))


def _layout(name: str, shape) -> str | None:
    if name == "encoder_hidden_states" and len(shape) == 4:
        return TEXT_LAYOUT
    if len(shape) == 4:
        return "NCHW"
    return None


def spec_io(path_or_spec) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """Declared inputs and outputs of a saved package, as TensorInfo."""
    import coremltools as ct

    spec = path_or_spec if hasattr(path_or_spec, "description") else ct.utils.load_spec(str(path_or_spec))

    def info(f):
        shape = tuple(int(d) for d in f.type.multiArrayType.shape)
        return TensorInfo(f.name, shape, _numpy_dtype_name(f.type.multiArrayType.dataType), _layout(f.name, shape))

    return [info(f) for f in spec.description.input], [info(f) for f in spec.description.output]


def _compress(mlmodel, recipe: WeightRecipe, weight_threshold: int):
    import coremltools.optimize.coreml as cto

    if recipe.kind == "fp16":
        return mlmodel
    if recipe.kind == "linear":
        op = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel",
                                         weight_threshold=weight_threshold)
        return cto.linear_quantize_weights(mlmodel, cto.OptimizationConfig(global_config=op))
    op = cto.OpPalettizerConfig(mode="kmeans", nbits=recipe.nbits, granularity="per_tensor",
                                weight_threshold=weight_threshold)
    return cto.palettize_weights(mlmodel, cto.OptimizationConfig(global_config=op))


def _convert_one(module, feeds: dict[str, Any], output_names, target: str, compute_units: str):
    """Trace ``module`` on ``feeds`` (ordered) and convert it to an fp16 mlprogram."""
    import coremltools as ct
    import torch

    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        # diffusers' shape asserts become constants in the trace; shapes are static here, so that is intended.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(module, tuple(feeds.values()), check_trace=False, strict=False)
    try:
        return ct.convert(
            traced,
            inputs=[ct.TensorType(name=k, shape=tuple(v.shape), dtype=np.float32) for k, v in feeds.items()],
            outputs=[ct.TensorType(name=n) for n in output_names],
            convert_to="mlprogram",
            compute_precision=ct.precision.FLOAT16,
            minimum_deployment_target=getattr(ct.target, DEPLOYMENT_TARGETS[target][0]),
            compute_units=getattr(ct.ComputeUnit, COMPUTE_UNITS[compute_units]),
            skip_model_load=True,
        )
    except Exception as err:
        raise ExportError(f"coremltools could not convert the model: {type(err).__name__}: {err}") from err


def _describe(mlmodel, component: str, precision: str, opts: CoreMLOptions, target: str) -> None:
    mlmodel.author = "bksdm-edge"
    mlmodel.version = __version__
    mlmodel.short_description = f"Stable Diffusion {component} ({precision}, {opts.attention} attention), bksdm-edge"
    spec = mlmodel.get_spec()
    for f in spec.description.input:
        if f.name in DESCRIPTIONS:
            mlmodel.input_description[f.name] = DESCRIPTIONS[f.name]
    for f in spec.description.output:
        mlmodel.output_description[f.name] = DESCRIPTIONS.get(f.name, f"U-Net chunk tensor {f.name}")
    meta = {
        "com.bksdm_edge.version": __version__,
        "com.bksdm_edge.component": component,
        "com.bksdm_edge.precision": precision,
        "com.bksdm_edge.attention": opts.attention,
        "com.bksdm_edge.compute_units": opts.compute_units,
        "com.bksdm_edge.min_deployment_target": target,
    }
    meta.update({f"com.bksdm_edge.{k}": str(v) for k, v in opts.metadata.items()})
    for k, v in meta.items():
        mlmodel.user_defined_metadata[k] = v


def _package_files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


def convert(module, example_inputs, output_names, out_dir, precision, *, calibration=None, options=None
            ) -> ConvertedModel:
    """Convert one SD component to ``out_dir/<AppleName>.mlpackage`` (see base.py for the contract).

    Args:
        module: the component wrapper (canonical I/O, components.py).
        example_inputs: canonical inputs (name -> tensor), in the wrapper's argument order.
        output_names: canonical output names.
        out_dir: folder for the package(s).
        precision: fp16 | int8 | palettize8 | palettize6 | palettize4.
        calibration: unused (Core ML weight compression is data-free).
        options: ``CoreMLOptions`` fields as a dict.
    """
    import torch

    opts = CoreMLOptions.from_dict(options)
    recipe = get_recipe(precision)
    target = resolve_deployment_target(precision, opts.min_deployment_target)
    versions = check_environment(precision)
    if opts.attention not in ("original", "split-einsum"):
        raise ExportError(f"Unknown attention {opts.attention!r}; choose original or split-einsum")
    if opts.compute_units not in COMPUTE_UNITS:
        raise ExportError(f"Unknown compute units {opts.compute_units!r}; choose from {', '.join(COMPUTE_UNITS)}")
    _quiet_coremltools()
    component = opts.component or infer_component(example_inputs)
    if opts.chunk_unet and component != "unet":
        raise ExportError("chunking applies to the U-Net only")
    module = module.eval()
    if component == "unet":
        find_sd_unet(module)
    example = {k: torch.as_tensor(v) for k, v in example_inputs.items()}
    # Fail early, with the model's own message, if the module does not run on these inputs.
    try:
        with torch.no_grad():
            module(*example.values())
    except Exception as err:
        raise ExportError(f"The {component} module does not run on its example inputs "
                          f"({type(err).__name__}: {err}); is it a Stable Diffusion {component}?") from err
    notes = []
    if opts.attention == "split-einsum":
        from .split_einsum import apply_split_einsum

        module, n_attn = apply_split_einsum(module)
        notes.append(f"split-einsum attention in {n_attn} attention layers")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    renames = TENSOR_RENAMES.get(component, {})
    packages = []
    for name, part, feeds, outs in _parts(component, module, example, tuple(output_names), opts):
        adapted = _apple_adapter(component, part, feeds)
        feeds = {renames.get(k, k): (to_apple_text_layout(v) if k == "encoder_hidden_states" else
                                     v.to(torch.float32)) for k, v in feeds.items()}
        mlmodel = _convert_one(adapted, feeds, outs, target, opts.compute_units)
        packages.append(_finish(mlmodel, out_dir / f"{name}.mlpackage", adapted, component, recipe, opts, target))
        del mlmodel
    extra = {
        "component": component,
        "apple_name": APPLE_NAMES[component],
        "min_deployment_target": target,
        "compute_units": opts.compute_units,
        "attention": opts.attention,
        "weight_threshold": opts.weight_threshold,
        "versions": versions,
        "notes": notes,
    }
    return _converted(packages, precision, extra, opts)


def recompress(converted: ConvertedModel, module, precision: str, out_dir, *, options=None) -> ConvertedModel:
    """Compress an fp16 export to another precision without converting the PyTorch model again.

    Args:
        converted: what ``convert(..., "fp16")`` returned.
        module: the PyTorch component it was converted from (for the weight PSNR report).
        precision: int8 | palettize8 | palettize6 | palettize4.
        out_dir: folder for the new package(s).
        options: as for ``convert``; component, attention and chunking are taken from ``converted``.
    """
    import coremltools as ct

    if converted.precision != "fp16":
        raise ExportError(f"recompress starts from an fp16 export, not {converted.precision}")
    extra = dict(converted.extra)
    opts = CoreMLOptions.from_dict({**(options or {}), "component": extra["component"],
                                    "attention": extra["attention"], "chunk_unet": "chunks" in extra})
    recipe = get_recipe(precision)
    target = resolve_deployment_target(precision, opts.min_deployment_target or
                                       _newer(extra["min_deployment_target"], recipe.min_target))
    extra["versions"] = check_environment(precision)
    extra["min_deployment_target"] = target
    extra["weight_threshold"] = opts.weight_threshold
    _quiet_coremltools()
    module = module.eval()
    if opts.attention == "split-einsum":
        from .split_einsum import apply_split_einsum

        module, _ = apply_split_einsum(module)
    parts = _parts(opts.component, module, None, (), opts, names_only=True)
    sources = _package_paths(converted)
    extra.pop("chunks", None)
    packages = []
    for (name, part, feeds, _outs), src in zip(parts, sources):
        adapted = _apple_adapter(opts.component, part, {"encoder_hidden_states": None} if
                                 opts.component == "unet" else {})
        mlmodel = ct.models.MLModel(str(src), skip_model_load=True)
        packages.append(_finish(mlmodel, Path(out_dir) / f"{name}.mlpackage", adapted, opts.component, recipe,
                                opts, target))
    return _converted(packages, precision, extra, opts)


def _package_paths(converted: ConvertedModel) -> list[Path]:
    """The package(s) of a converted component: one, or UnetChunk1 and UnetChunk2 (beside each other)."""
    chunks = converted.extra.get("chunks")
    return [Path(converted.path).parent / c["file"] for c in chunks] if chunks else [Path(converted.path)]


def _newer(a: str, b: str) -> str:
    return a if DEPLOYMENT_TARGETS[a][1] >= DEPLOYMENT_TARGETS[b][1] else b


def _finish(mlmodel, path: Path, adapted, component, recipe, opts, target) -> dict[str, Any]:
    """Compress, describe and save one package; read it back for its stored weights and their PSNR."""
    mlmodel = _compress(mlmodel, recipe, opts.weight_threshold)
    _describe(mlmodel, component, recipe.name, opts, target)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        shutil.rmtree(path)
    mlmodel.save(str(path))
    inputs, outputs = spec_io(path)
    return {"name": path.stem, "path": path, "inputs": inputs, "outputs": outputs,
            "stored": inspect_package(path), "weight_psnr": weight_psnr(path, adapted)}


def _converted(packages, precision, extra, opts) -> ConvertedModel:
    first, last = packages[0], packages[-1]
    extra = dict(extra)
    extra["notes"] = list(extra.get("notes", []))
    extra["stored_weights"] = _merge_stored([p["stored"] for p in packages])
    extra["weight_psnr"] = _merge_psnr([p["weight_psnr"] for p in packages])
    weight_bytes = extra["stored_weights"]["weight_bytes"]
    if opts.chunk_unet and weight_bytes < CHUNK_THRESHOLD_BYTES:
        extra["notes"].append(f"U-Net weights are {weight_bytes / 2**20:.1f} MiB (< 1 GiB): chunking was not "
                              "needed but was done as requested")
    if len(packages) > 1:
        extra["chunks"] = [
            {"name": p["name"], "file": p["path"].name, "inputs": [t.to_json() for t in p["inputs"]],
             "outputs": [t.to_json() for t in p["outputs"]], "stored_weights": p["stored"],
             "weight_psnr": p["weight_psnr"]}
            for p in packages
        ]
    # The component's I/O: what the caller feeds (chunk 1's inputs) and what comes out (chunk 2's outputs).
    return ConvertedModel(
        path=first["path"],
        files=[f for p in packages for f in _package_files(p["path"])],
        inputs=first["inputs"],
        outputs=last["outputs"],
        precision=precision,
        extra=extra,
    )


def _parts(component, module, example, output_names, opts, names_only=False):
    """(package name, module, canonical feeds, output names) for each package to write."""
    name = opts.file_name or APPLE_NAMES[component]
    if not opts.chunk_unet:
        return [(name, module, example, output_names)]
    import torch

    if names_only:
        chunk1, chunk2, _ = build_unet_chunks(find_sd_unet(module))
        return [(UNET_CHUNK_NAMES[0], chunk1, None, ()), (UNET_CHUNK_NAMES[1], chunk2, None, ())]
    # Chunks take the raw U-Net's inputs; the canonical wrapper adds nothing but return_dict=False.
    chunk1, chunk2, _ = build_unet_chunks(find_sd_unet(module), example=example)
    with torch.no_grad():
        boundary = chunk1(*example.values())
    out1, _in2 = chunk_io_names(chunk1)
    feeds2 = {"encoder_hidden_states": example["encoder_hidden_states"], **dict(zip(out1, boundary))}
    return [
        (UNET_CHUNK_NAMES[0], chunk1, example, tuple(out1)),
        (UNET_CHUNK_NAMES[1], chunk2, feeds2, output_names),
    ]


def _apple_adapter(component: str, module, feeds: dict[str, Any]):
    if component == "text_encoder":
        return _Adapters.float_token_ids(module).eval()
    if "encoder_hidden_states" in feeds:
        return _Adapters.channels_first_text(module, list(feeds).index("encoder_hidden_states")).eval()
    return module


# ---------------------------------------------------------------------------------------------
# reading a saved package back: stored weight precision, dequantized weights


def _load_program(path: Path):
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load as load_mil

    _quiet_coremltools()
    model = ct.models.MLModel(str(path), skip_model_load=True)
    spec = model.get_spec()
    return load_mil(spec, specification_version=spec.specificationVersion, file_weights_dir=model.weights_dir)


def _weight_ops(program):
    """(op, kind, stored bits, stored bytes) for every weight tensor of the program."""
    for op in program.functions["main"].operations:
        if op.op_type == "const":
            val = op.outputs[0].val
            if isinstance(val, np.ndarray) and val.dtype.kind == "f" and val.size >= 16:
                yield op, str(val.dtype).replace("float", "fp"), val.dtype.itemsize * 8, val.nbytes
        elif op.op_type == "constexpr_affine_dequantize":
            data = op.quantized_data.val
            extra = op.scale.val.nbytes + np.asarray(op.zero_point.val).nbytes
            yield op, str(data.dtype), data.dtype.itemsize * 8, data.nbytes + extra
        elif op.op_type == "constexpr_blockwise_shift_scale":
            data = op.data.val
            bits = 4 if "4" in str(op.data.dtype) else data.dtype.itemsize * 8
            yield op, f"int{bits}", bits, data.size * bits // 8 + op.scale.val.nbytes
        elif op.op_type == "constexpr_lut_to_dense":
            lut = op.lut.val
            entries = lut.shape[0] if lut.ndim == 1 else lut.shape[-2]
            bits = int(round(math.log2(entries)))
            n = int(np.prod(op.outputs[0].shape))
            yield op, f"lut{bits}", bits, math.ceil(n * bits / 8) + lut.nbytes


def inspect_package(path: str | Path) -> dict[str, Any]:
    """What a saved package stores: weight tensors by precision, bytes, and the dominant precision."""
    program = _load_program(Path(path))
    kinds: dict[str, dict[str, int]] = {}
    largest = 0
    for op, kind, _bits, nbytes in _weight_ops(program):
        n = int(np.prod(op.outputs[0].shape))
        largest = max(largest, n)
        entry = kinds.setdefault(kind, {"tensors": 0, "params": 0, "bytes": 0})
        entry["tensors"] += 1
        entry["params"] += n
        entry["bytes"] += nbytes
    compressed = {k: v for k, v in kinds.items() if not k.startswith("fp")}
    dominant = max(compressed, key=lambda k: compressed[k]["params"]) if compressed else (
        max(kinds, key=lambda k: kinds[k]["params"]) if kinds else "none")
    params = sum(v["params"] for v in kinds.values())
    return {
        "weights": kinds,
        "largest_tensor": largest,
        "stored_precision": dominant,
        "compressed_fraction": (sum(v["params"] for v in compressed.values()) / params) if params else 0.0,
        "weight_bytes": sum(v["bytes"] for v in kinds.values()),
        "weights_file_bytes": sum(f.stat().st_size for f in Path(path).rglob("weight.bin")),
        "package_bytes": sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()),
    }


EXPECTED_STORAGE = {"fp16": "fp16", "int8": "int8", "palettize8": "lut8", "palettize6": "lut6", "palettize4": "lut4"}

_SUFFIX = re.compile(r"(_to_fp16)?(_quantized|_palettized)?$")


def weight_psnr(path: str | Path, module) -> dict[str, Any]:
    """PSNR (dB, peak = max |w|) of each stored weight, dequantized, against ``module``'s parameters.

    Stored tensors are matched to parameters by name (coremltools names weight constants after
    the traced attribute path). Returns a summary with the worst tensors.
    """
    from ..metrics import psnr

    params = {k.replace(".", "_"): v.detach().float().numpy() for k, v in module.state_dict().items()}
    program = _load_program(Path(path))
    rows = []
    unmatched = 0
    for op, kind, _bits, _nbytes in _weight_ops(program):
        key = _SUFFIX.sub("", op.name)
        ref = params.get(key)
        if ref is None:
            unmatched += 1
            continue
        stored = op.outputs[0].val if op.op_type == "const" else op.materialized_val_inference()
        stored = np.asarray(stored, dtype=np.float32)
        if stored.size != ref.size:
            unmatched += 1
            continue
        rows.append((op.name, kind, ref.size, psnr(ref.reshape(stored.shape), stored)))
    if not rows:
        return {"tensors": 0, "unmatched": unmatched}
    values = np.array([r[3] for r in rows])
    sizes = np.array([r[2] for r in rows], dtype=np.float64)
    worst = sorted(rows, key=lambda r: r[3])[:3]
    return {
        "tensors": len(rows),
        "unmatched": unmatched,
        "min_db": float(values.min()),
        "median_db": float(np.median(values)),
        "weighted_mean_db": float((values * sizes).sum() / sizes.sum()),
        "worst": [{"name": n, "stored": k, "psnr_db": round(p, 2)} for n, k, _s, p in worst],
    }


def _merge_stored(items: list[dict[str, Any]]) -> dict[str, Any]:
    if len(items) == 1:
        return items[0]
    kinds: dict[str, dict[str, int]] = {}
    for it in items:
        for k, v in it["weights"].items():
            e = kinds.setdefault(k, {"tensors": 0, "params": 0, "bytes": 0})
            for f in e:
                e[f] += v[f]
    merged = {"weights": kinds, "stored_precision": items[0]["stored_precision"]}
    for f in ("weight_bytes", "weights_file_bytes", "package_bytes"):
        merged[f] = sum(it[f] for it in items)
    params = sum(v["params"] for v in kinds.values())
    merged["compressed_fraction"] = sum(v["params"] for k, v in kinds.items() if not k.startswith("fp")) / max(params, 1)
    return merged


def _merge_psnr(items: list[dict[str, Any]]) -> dict[str, Any]:
    if len(items) == 1:
        return items[0]
    rows = [it for it in items if it.get("tensors")]
    return {
        "tensors": sum(it.get("tensors", 0) for it in items),
        "unmatched": sum(it.get("unmatched", 0) for it in items),
        "min_db": min(it["min_db"] for it in rows),
        "median_db": float(np.median([it["median_db"] for it in rows])),
        "weighted_mean_db": float(np.mean([it["weighted_mean_db"] for it in rows])),
        "worst": sorted((w for it in rows for w in it["worst"]), key=lambda w: w["psnr_db"])[:3],
    }


def static_check(converted: ConvertedModel) -> list[str]:
    """Checks of a saved package that need no Core ML runtime; returns failure messages.

    The declared I/O must equal what ``convert`` reported, the stored weights must have the
    requested precision, and the dequantized weights must be close to the PyTorch ones.
    """
    problems = []
    paths = _package_paths(converted)
    for path in paths:
        if not path.exists():
            problems.append(f"{path.name} is missing")
    if problems:
        return problems
    inputs, _ = spec_io(paths[0])
    _, outputs = spec_io(paths[-1])
    for kind, declared, expected in (("inputs", inputs, converted.inputs), ("outputs", outputs, converted.outputs)):
        got = [(t.name, tuple(t.shape), t.dtype) for t in declared]
        want = [(t.name, tuple(t.shape), t.dtype) for t in expected]
        if got != want:
            problems.append(f"saved {kind} {got} differ from the exported ones {want}")
    if len(paths) == 2:
        _, out1 = spec_io(paths[0])
        in2, _ = spec_io(paths[1])
        feeds = {t.name: tuple(t.shape) for t in out1} | {t.name: tuple(t.shape) for t in inputs}
        for t in in2:
            if feeds.get(t.name) != tuple(t.shape):
                problems.append(f"{paths[1].name} input {t.name!r} {list(t.shape)} is fed by neither "
                                f"{paths[0].name}'s outputs nor the U-Net inputs")
    want = EXPECTED_STORAGE[converted.precision]
    for path in paths:
        stored = inspect_package(path)
        if converted.precision != "fp16" and stored["largest_tensor"] < converted.extra.get("weight_threshold", 2048):
            continue  # no tensor is large enough to compress (toy models): coremltools keeps them all fp16
        if want not in stored["weights"]:
            problems.append(f"{path.name}: no {want} weights stored (found {sorted(stored['weights'])})")
        elif converted.precision != "fp16" and stored["compressed_fraction"] < 0.5:
            problems.append(f"{path.name}: only {stored['compressed_fraction']:.0%} of the weights are stored as {want}")
    psnr_info = converted.extra.get("weight_psnr", {})
    floor = WEIGHT_PSNR_FLOOR[converted.precision]
    if psnr_info.get("tensors", 0) == 0:
        problems.append("no stored weight could be matched to a PyTorch parameter")
    elif psnr_info["min_db"] < floor:
        problems.append(f"stored weights differ from PyTorch: min PSNR {psnr_info['min_db']:.1f} dB < {floor:g} dB "
                        f"(worst: {psnr_info['worst'][0]['name']})")
    return problems


# ---------------------------------------------------------------------------------------------
# running (macOS only)


def runtime_unavailable() -> str | None:
    """Why Core ML models cannot run here (None on macOS with coremltools' native module)."""
    if sys.platform != "darwin":
        return f"Core ML prediction needs macOS (this machine runs {sys.platform})"
    if importlib.util.find_spec("coremltools.libcoremlpython") is None:
        return "coremltools was installed without its native Core ML module (libcoremlpython)"
    return None


def load_runner(converted_or_path, *, compute_units: str = "all") -> Runner:
    """A callable running the package(s) on macOS: feeds dict -> outputs dict (chunks chained like Swift)."""
    import coremltools as ct

    why = runtime_unavailable()
    if why:
        raise ExportError(f"Cannot run Core ML models here: {why}. Validate on a Mac, or rely on the static check.")
    if isinstance(converted_or_path, ConvertedModel):
        paths = _package_paths(converted_or_path)
        compute_units = converted_or_path.extra.get("compute_units", compute_units)
    else:
        paths = [converted_or_path]
    units = getattr(ct.ComputeUnit, COMPUTE_UNITS[compute_units])
    models = [ct.models.MLModel(str(p), compute_units=units) for p in paths]
    shapes = [{f.name: tuple(f.type.multiArrayType.shape) for f in m.get_spec().description.input} for m in models]

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        available = dict(feeds)
        out: dict[str, np.ndarray] = {}
        for model, wanted in zip(models, shapes):
            args = {}
            for name, shape in wanted.items():
                x = np.asarray(available[name], dtype=np.float32)
                if len(shape) == 4 and x.ndim == 3:  # canonical (B, S, D) text states
                    x = to_apple_text_layout(x)
                args[name] = x
            out = {k: np.asarray(v) for k, v in model.predict(args).items()}
            available.update(out)
        return out

    return run


# ---------------------------------------------------------------------------------------------
# registry targets


class _CoreMLTarget(ExportTarget):
    FORMAT = "coreml"
    DYNAMIC_SHAPES = False
    DEFAULT_BATCH = 2  # Apple's converter and Swift pipeline: both CFG rows in one U-Net call
    # Only names that mean one thing across components can be global; the VAE encoder's
    # "sample" -> "image" rename is per component (TENSOR_RENAMES, target_for_component).
    TENSOR_NAMES = {"latent_sample": "z"}
    convert = staticmethod(convert)
    load_runner = staticmethod(load_runner)
    static_check = staticmethod(static_check)

    @classmethod
    def runtime_unavailable(cls) -> str | None:
        return runtime_unavailable()


def target_for_component(target: type[ExportTarget], component: str) -> type[ExportTarget]:
    """``target`` with the tensor names of ``component`` (Core ML renames per component)."""
    names = {**target.TENSOR_NAMES, **TENSOR_RENAMES.get(component, {})}
    return type(target.__name__, (target,), {"TENSOR_NAMES": names})


@register_target
class CoreMLFp16(_CoreMLTarget):
    PRECISION = "fp16"
    DEFAULT = True
    DESCRIPTION = RECIPES["fp16"].description
    TOLERANCES = {"default": Tolerance(min_psnr=35.0)}  # apple/ml-stable-diffusion's gate


@register_target
class CoreMLInt8(_CoreMLTarget):
    PRECISION = "int8"
    DESCRIPTION = RECIPES["int8"].description
    TOLERANCES = {"default": Tolerance(min_psnr=25.0)}


@register_target
class CoreMLPalettize8(_CoreMLTarget):
    PRECISION = "palettize8"
    DESCRIPTION = RECIPES["palettize8"].description
    TOLERANCES = {"default": Tolerance(min_psnr=25.0)}


@register_target
class CoreMLPalettize6(_CoreMLTarget):
    PRECISION = "palettize6"
    DESCRIPTION = RECIPES["palettize6"].description
    TOLERANCES = {"default": Tolerance(min_psnr=20.0)}


@register_target
class CoreMLPalettize4(_CoreMLTarget):
    PRECISION = "palettize4"
    DESCRIPTION = RECIPES["palettize4"].description
    TOLERANCES = {"default": Tolerance(min_psnr=12.0)}
