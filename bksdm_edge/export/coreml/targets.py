"""The registered Core ML targets, one per row of ``precisions.PRECISIONS``, and the Core ML hooks of
the export path: the options of ``--format coreml``, Apple's ``Resources/`` layout, the manifest's
``coreml`` section and the Swift contract check before a bundle is committed.

Torch-free: the back-end functions are imported when they are first called.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..base import ExportError
from ..registry import ExportTarget, FormatOption, Tolerance, register_target
from .environment import (ATTENTIONS, COMPUTE_UNITS, DEPLOYMENT_TARGETS, check_environment,
                          resolve_deployment_target, runtime_unavailable)
from .precisions import PRECISIONS

RESOURCES = "Resources"  # Apple's resource folder: the packages, vocab.json and merges.txt

# Canonical tensor name -> Core ML name, per component (Apple's names; see contract.py).
TENSOR_NAMES: dict[str, dict[str, str]] = {
    "vae_decoder": {"latent_sample": "z"},
    "vae_encoder": {"sample": "image", "latent_parameters": "latent"},
}

OPTIONS = (
    FormatOption("attention", "original: diffusers' attention, best on the GPU (--compute-units cpu-and-gpu). "
                 "split-einsum: Apple's Neural Engine layout (channels-first (B, C, 1, S) tensors, 1x1 convs, one "
                 "einsum per head), the same numbers in PyTorch, made for the ANE (default: original)",
                 choices=ATTENTIONS),
    FormatOption("compute_units", "the hardware you intend to run on: all, cpu-and-ne (Neural Engine; pair with "
                 "--attention split-einsum), cpu-and-gpu (pair with original), cpu-only. Core ML picks the units "
                 "when the model is loaded, so this is recorded in the package metadata and used for validation "
                 "on a Mac; pass the same to Apple's CLI (--compute-units) (default: all)",
                 choices=tuple(COMPUTE_UNITS)),
    FormatOption("min_deployment_target", "oldest OS that must load the models. Default: iOS16 (what Apple's Swift "
                 "package needs) for fp16/int8, iOS17 for palettized weights, which iOS16/macOS13 cannot load "
                 "(asking for them with palettization is an error)", choices=tuple(DEPLOYMENT_TARGETS)),
    FormatOption("chunk_unet", "split the U-Net into UnetChunk1/UnetChunk2 packages of about equal weight size, "
                 "as Apple does for U-Nets over 1 GB on iPhone/iPad (the Neural Engine loads at most ~1 GB per "
                 "model); Swift finds and chains the chunks", flag=True),
    FormatOption("weight_threshold", "weights with fewer elements stay fp16 when compressing (coremltools' "
                 "default: 2048)", type=int),
    FormatOption("verbose", "show coremltools' progress bars and warnings", flag=True),
)
DEFAULT_OPTIONS = {"attention": "original", "compute_units": "all", "min_deployment_target": None,
                   "chunk_unet": False, "weight_threshold": 2048, "verbose": False}


def _convert(*args, **kwargs):
    from .convert import convert

    return convert(*args, **kwargs)


def _load_runner(*args, **kwargs):
    from .runner import load_runner

    return load_runner(*args, **kwargs)


def _static_check(converted):
    from .check import static_check

    return static_check(converted)


class CoreMLTarget(ExportTarget):
    """What every Core ML precision shares; the subclasses are made from ``PRECISIONS``."""

    FORMAT = "coreml"
    DYNAMIC_SHAPES = False
    DEFAULT_BATCH = 2  # Apple's converter and Swift pipeline: both CFG rows in one U-Net call
    FORMAT_OPTIONS = OPTIONS
    TENSOR_NAMES = TENSOR_NAMES["vae_decoder"]  # "latent_sample" means one thing everywhere
    convert = staticmethod(_convert)
    load_runner = staticmethod(_load_runner)
    static_check = staticmethod(_static_check)

    @classmethod
    def runtime_unavailable(cls) -> str | None:
        return runtime_unavailable()

    @classmethod
    def check_options(cls, request, options: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(options) - set(DEFAULT_OPTIONS))
        if unknown:
            raise ExportError(f"unknown Core ML options {unknown}; known: {', '.join(DEFAULT_OPTIONS)}")
        opts = {**DEFAULT_OPTIONS, **options}
        if opts["attention"] not in ATTENTIONS:
            raise ExportError(f"unknown --attention {opts['attention']!r}; choose {' or '.join(ATTENTIONS)}")
        if opts["compute_units"] not in COMPUTE_UNITS:
            raise ExportError(f"unknown --compute-units {opts['compute_units']!r}; choose from "
                              f"{', '.join(COMPUTE_UNITS)}")
        opts["min_deployment_target"] = resolve_deployment_target(cls.PRECISION, opts["min_deployment_target"])
        if opts["chunk_unet"] and "unet" not in request.components:
            raise ExportError("--chunk-unet needs the unet component")
        if not isinstance(opts["weight_threshold"], int) or opts["weight_threshold"] < 0:
            raise ExportError(f"--weight-threshold must be a number of elements >= 0; got {opts['weight_threshold']}")
        check_environment(cls.PRECISION)  # fails in a second, before any model is loaded
        return opts

    @classmethod
    def component_options(cls, component: str, request, facts=None) -> dict[str, Any]:
        opts = request.options
        source = {"source": request.model, "teacher": request.model,
                  "variant": (facts.variant if facts else None) or "teacher"}
        return {
            "component": component,
            "attention": opts["attention"] if component != "text_encoder" else "original",
            "compute_units": opts["compute_units"], "min_deployment_target": opts["min_deployment_target"],
            "chunk_unet": opts["chunk_unet"] and component == "unet", "weight_threshold": opts["weight_threshold"],
            "metadata": source, "verbose": opts["verbose"],
        }

    @classmethod
    def component_dir(cls, root: Path, component: str) -> Path:
        return root / RESOURCES

    @classmethod
    def for_component(cls, component: str) -> type[ExportTarget]:
        names = {**cls.TENSOR_NAMES, **TENSOR_NAMES.get(component, {})}
        return type(cls.__name__, (cls,), {"TENSOR_NAMES": names})

    @classmethod
    def manifest_section(cls, request) -> dict[str, Any]:
        opts = request.options
        return {"coreml": {
            "resources": RESOURCES,
            "attention": opts["attention"],
            "compute_units": opts["compute_units"],
            "min_deployment_target": opts["min_deployment_target"],
            "chunked_unet": opts["chunk_unet"],
            "compile_on_mac": f"for p in {RESOURCES}/*.mlpackage; do xcrun coremlcompiler compile \"$p\" "
                              f"{RESOURCES}/; done",
        }}

    @classmethod
    def write_layout_files(cls, root: Path, info: dict[str, Any]) -> list[Path]:
        """Swift's tokenizer files beside the packages (copies of the bundle's tokenizer/)."""
        from .contract import TOKENIZER_FILES

        out = []
        for name in TOKENIZER_FILES:
            out.append(Path(shutil.copyfile(root / "tokenizer" / name, root / RESOURCES / name)))
        return out

    @classmethod
    def check_layout(cls, root: Path, manifest: dict[str, Any]) -> list[str]:
        """The bundle's Resources/ against Apple's Swift contract (contract.py)."""
        from .contract import check_resources

        return check_resources(root / RESOURCES, manifest)

    @classmethod
    def component_summary(cls, entry: dict[str, Any]) -> str:
        extra = entry.get("extra", {})
        stored, psnr = extra.get("stored_weights", {}), extra.get("weight_psnr", {})
        if not stored:
            return ""
        return (f"stored {stored['stored_precision']}, {stored['package_bytes'] / 2**20:.1f} MiB, weight PSNR min "
                f"{psnr.get('min_db', float('nan')):.1f} dB")

    @classmethod
    def bundle_notes(cls, path: Path, manifest: dict[str, Any]) -> list[str]:
        from .contract import LCM_NOTE

        resources = Path(path) / RESOURCES
        return [f"on a Mac, compile once: for p in {resources}/*.mlpackage; do xcrun coremlcompiler compile "
                f"\"$p\" {resources}/; done   (then Apple's CLI: --resource-path {resources}; docs/coreml.md)"] + (
            [LCM_NOTE] if manifest.get("guidance_embedding") else [])


def _register(row) -> type[CoreMLTarget]:
    name = "CoreML" + "".join(part.capitalize() for part in row.name.split("-"))
    attrs = {"PRECISION": row.name, "DESCRIPTION": row.help, "DEFAULT": row.name == "fp16",
             "TOLERANCES": {"default": Tolerance(min_psnr=row.output_psnr)}, "__module__": __name__}
    return register_target(type(name, (CoreMLTarget,), attrs))


TARGETS = {name: _register(row) for name, row in PRECISIONS.items()}
