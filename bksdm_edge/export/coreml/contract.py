"""The contract between a Core ML bundle and Apple's Swift ``StableDiffusion`` package, as data.

Read from apple/ml-stable-diffusion at ``SWIFT_COMMIT`` (files under ``swift/StableDiffusion/pipeline/``).
``SWIFT_MODELS`` lists every package Swift may load, with the inputs and outputs it feeds and reads;
``check_resources`` reads the spec of every ``.mlpackage`` of a bundle's ``Resources/`` folder and
checks it against this table (the export runs it before a bundle is committed; tests run it on tiny
bundles at several precisions and with a chunked U-Net); ``contract_table`` renders the table that
docs/coreml.md shows (a test keeps the two equal). Torch-free; coremltools is imported to read specs.

Shape symbols: ``B`` the U-Net batch (manifest ``image.batch``: 2 = both CFG rows in one call, 1 = Swift
calls the U-Net twice per step), ``h``/``w`` the latent size (image / 8), ``H``/``W`` the image size,
``D`` the text encoder width (768 for SD-v1, 1024 for SD-v2), ``L`` the token length (77).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

SWIFT_REPO = "apple/ml-stable-diffusion"
SWIFT_COMMIT = "e12202c1f6405b83918b58a5d097cd61e3e1f702"  # 2025-07-03, the version the table was read from
SWIFT_DIR = "swift/StableDiffusion/pipeline"
IO_DTYPE = "float32"  # every input and output: Swift builds MLShapedArray<Float32> and converts outputs to it
TEXT_LAYOUT = "NC1S"  # (batch, channels, 1, sequence): Apple's channels-first text layout
TOKENIZER_FILES = ("vocab.json", "merges.txt")  # BPETokenizer(mergesAt:vocabularyAt:), beside the models


@dataclass(frozen=True)
class SwiftTensor:
    """One input or output as Swift feeds or reads it.

    Args:
        name: our tensor name in the package.
        shape: symbolic shape (see the module docstring).
        swift: how Swift finds and uses it.
        layout: the manifest layout (``NCHW``, ``NC1S``) or None.
    """

    name: str
    shape: tuple[str, ...]
    swift: str
    layout: str | None = None


@dataclass(frozen=True)
class SwiftModel:
    """One package Swift may load from ``Resources/`` (compiled to ``NAME.mlmodelc``)."""

    resource: str
    component: str
    inputs: tuple[SwiftTensor, ...]
    outputs: tuple[SwiftTensor, ...]
    sources: tuple[str, ...]  # Swift files (under SWIFT_DIR) the row comes from
    when: str  # when Swift loads it


_UNET_INPUTS = (
    SwiftTensor("sample", ("B", "4", "h", "w"), 'by name "sample"; its shape fixes B and the latent size',
                "NCHW"),
    SwiftTensor("timestep", ("B",), 'by name "timestep": [t, t] when B = 2, [t] when B = 1'),
    SwiftTensor("encoder_hidden_states", ("B", "D", "1", "L"),
                'by name "encoder_hidden_states", built by toHiddenStates ([B, L, D] -> [B, D, 1, L])', TEXT_LAYOUT),
)
_NOISE = SwiftTensor("out_sample", ("B", "4", "h", "w"), "first output, converted to Float32", "NCHW")

SWIFT_MODELS: tuple[SwiftModel, ...] = (
    SwiftModel(
        "TextEncoder", "text_encoder",
        (SwiftTensor("input_ids", ("1", "L"), "first input: token ids as Float32, its shape read from the model"),),
        (SwiftTensor("last_hidden_state", ("1", "L", "D"), 'by name "last_hidden_state", MLShapedArray<Float32>'
                                                            "(converting:)"),),
        ("TextEncoder.swift",), "always (once per prompt, and once for the negative prompt)"),
    SwiftModel(
        "Unet", "unet", _UNET_INPUTS, (_NOISE,),
        ("Unet.swift", "StableDiffusionPipeline.swift"),
        "unless UnetChunk1 and UnetChunk2 both exist; one call per step when B = 2, two when B = 1"),
    SwiftModel(
        "UnetChunk1", "unet", _UNET_INPUTS,
        (SwiftTensor("temb, hidden_states, skip_*", ("…",), "merged with the U-Net inputs and fed to UnetChunk2"),),
        ("StableDiffusionPipeline+Resources.swift", "ManagedMLModel.swift"),
        "when UnetChunk1 and UnetChunk2 both exist (instead of Unet)"),
    SwiftModel(
        "UnetChunk2", "unet",
        (SwiftTensor("encoder_hidden_states, temb, hidden_states, skip_*", ("…",),
                     "by name, from UnetChunk1's outputs merged with the U-Net inputs"),),
        (_NOISE,),
        ("ManagedMLModel.swift", "Unet.swift"), "after UnetChunk1, every U-Net call"),
    SwiftModel(
        "VAEDecoder", "vae_decoder",
        (SwiftTensor("z", ("1", "4", "h", "w"), "first input: latents divided by the scaling factor in Swift",
                     "NCHW"),),
        (SwiftTensor("sample", ("1", "3", "H", "W"), "first output, MLShapedArray<Float32>(converting:), "
                                                     "[-1, 1] to RGB", "NCHW"),),
        ("Decoder.swift",), "always (once per image)"),
    SwiftModel(
        "VAEEncoder", "vae_encoder",
        (SwiftTensor("image", ("1", "3", "H", "W"), "first input; its shape must equal the input image's", "NCHW"),),
        (SwiftTensor("latent", ("1", "8", "h", "w"), "first output, MLShapedArray<Float32>(converting:): channels "
                                                     "0-3 mean, 4-7 log-variance, sampled and scaled in Swift",
                     "NCHW"),),
        ("Encoder.swift",), "optional; image-to-image only"),
)
MODELS_BY_RESOURCE = {m.resource: m for m in SWIFT_MODELS}

# A latent consistency U-Net's extra input (manifest ``guidance_embedding``; symbol G = its width). Swift's pipeline
# has no LCM scheduler at SWIFT_COMMIT and does not feed it: such a bundle needs an app that does.
LCM_UNET_INPUT = SwiftTensor("timestep_cond", ("B", "G"), "not fed by Swift's pipeline (no LCM scheduler at "
                             "SWIFT_COMMIT): an app running a latent consistency bundle feeds the guidance embedding")
LCM_NOTE = ("this is a latent consistency (LCM) bundle: its U-Net also takes timestep_cond, which Apple's Swift "
            "StableDiffusionPipeline neither feeds nor pairs with an LCM scheduler; run it with an app that does "
            "(docs/bundle_format.md: guidance_embedding)")


def resolve_shape(shape: tuple[str, ...], sizes: dict[str, int]) -> tuple[int, ...] | None:
    """The concrete shape of a symbolic one (None for the chunk boundary's variable list)."""
    if shape == ("…",):
        return None
    return tuple(int(d) if d.isdigit() else sizes[d] for d in shape)


def bundle_sizes(manifest: dict[str, Any]) -> dict[str, int]:
    """The values of the shape symbols for a bundle, from its manifest."""
    img = manifest["image"]
    f = img["vae_scale_factor"]
    sizes = {"B": img["batch"], "H": img["height"], "W": img["width"], "h": img["height"] // f,
             "w": img["width"] // f, "L": manifest["tokenizer"]["max_length"]}
    for comp in manifest["components"].values():
        for t in comp["inputs"] + comp["outputs"]:
            if t["name"] == "last_hidden_state":
                sizes["D"] = t["shape"][-1]
            elif t["name"] == "encoder_hidden_states":
                sizes["D"] = t["shape"][1] if t.get("layout") == TEXT_LAYOUT else t["shape"][-1]
    if manifest.get("guidance_embedding"):
        sizes["G"] = manifest["guidance_embedding"]["dim"]
    return sizes


def to_apple_text_layout(x):
    """(B, S, D) -> (B, D, 1, S) for numpy arrays or torch tensors (4-D input is returned as is)."""
    if x.ndim == 4:
        return x
    if hasattr(x, "unsqueeze"):  # torch, without importing it
        return x.transpose(1, 2)[:, :, None, :]
    import numpy as np

    return np.ascontiguousarray(np.asarray(x).transpose(0, 2, 1)[:, :, None, :])


def check_resources(resources: str | Path, manifest: dict[str, Any]) -> list[str]:
    """Problems of a ``Resources/`` folder against ``SWIFT_MODELS`` (empty = Swift can load it).

    Checks: the tokenizer files are there; every package has a name Swift looks for; no U-Net is there
    both whole and chunked; each package declares the inputs and outputs of the table, with the
    bundle's sizes, all float32; UnetChunk2's inputs are fed by UnetChunk1's outputs or the U-Net inputs.
    """
    from .package import spec_io

    root = Path(resources)
    problems = [f"{root.name}/{f} is missing (Swift's BPETokenizer reads it)" for f in TOKENIZER_FILES
                if not (root / f).is_file()]
    packages = {p.stem: p for p in sorted(root.glob("*.mlpackage"))}
    unknown = sorted(set(packages) - set(MODELS_BY_RESOURCE))
    if unknown:
        problems.append(f"packages Swift does not look for: {unknown}; it loads {sorted(MODELS_BY_RESOURCE)}")
    chunks = {"UnetChunk1", "UnetChunk2"} & set(packages)
    if len(chunks) == 1:
        problems.append(f"{next(iter(chunks))} without its other half: Swift would load Unet instead")
    elif chunks and "Unet" in packages:
        problems.append("both Unet and UnetChunk1/UnetChunk2: ship one U-Net (Swift prefers the chunks)")
    sizes = bundle_sizes(manifest)
    declared = {name: spec_io(path) for name, path in packages.items() if name in MODELS_BY_RESOURCE}
    lcm = bool(manifest.get("guidance_embedding"))
    for name, (inputs, outputs) in declared.items():
        model = MODELS_BY_RESOURCE[name]
        want_inputs = model.inputs + ((LCM_UNET_INPUT,) if lcm and model.inputs == _UNET_INPUTS else ())
        for kind, have, want in (("inputs", inputs, want_inputs), ("outputs", outputs, model.outputs)):
            for t in have:
                if t.dtype != IO_DTYPE:
                    problems.append(f"{name} {kind[:-1]} {t.name!r} is {t.dtype}; Swift feeds and reads {IO_DTYPE}")
            if resolve_shape(want[0].shape, sizes) is None:
                continue  # the chunk boundary: checked below
            got = [(t.name, tuple(t.shape)) for t in have]
            expected = [(t.name, resolve_shape(t.shape, sizes)) for t in want]
            if got != expected:
                problems.append(f"{name} {kind} {got} differ from Swift's {expected}")
    if {"UnetChunk1", "UnetChunk2"} <= set(declared):
        in1, out1 = declared["UnetChunk1"]
        in2, _ = declared["UnetChunk2"]
        fed = {t.name: tuple(t.shape) for t in in1} | {t.name: tuple(t.shape) for t in out1}
        for t in in2:
            if fed.get(t.name) != tuple(t.shape):
                problems.append(f"UnetChunk2 input {t.name!r} {list(t.shape)} is fed by neither UnetChunk1's "
                                "outputs nor the U-Net inputs")
    return problems


def contract_table() -> str:
    """The contract as the Markdown table docs/coreml.md shows."""

    def cell(tensors):
        return "<br>".join(f"`{t.name}` ({', '.join(t.shape)}) {IO_DTYPE}"
                           + (f" {t.layout}" if t.layout else "") + f": {t.swift}" for t in tensors)

    rows = ["| package (`Resources/NAME.mlmodelc`) | loaded | inputs | outputs | Swift source |",
            "|---|---|---|---|---|"]
    for m in SWIFT_MODELS:
        rows.append(f"| `{m.resource}` | {m.when} | {cell(m.inputs)} | {cell(m.outputs)} | "
                    + ", ".join(f"`{s}`" for s in m.sources) + " |")
    return "\n".join(rows) + "\n"
