"""Conversion: ``torch.jit.trace`` + ``coremltools.convert`` to an mlprogram with float16 compute and
float32 inputs/outputs, then the precision's weight compression (``coremltools.optimize.coreml``:
int8 linear quantization, 4/6/8-bit k-means palettization), metadata, and a read-back of what the
saved package stores (``package.py``).

``convert`` follows the back-end contract of ``export/base.py``; ``recompress`` turns an fp16 export
into another precision without converting the PyTorch model again.
"""

from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ... import __version__
from ..base import ConvertedModel, ExportError
from .adapters import APPLE_NAMES, DESCRIPTIONS, apple_adapter, find_sd_unet, infer_component
from .chunking import CHUNK_THRESHOLD_BYTES, UNET_CHUNK_NAMES, build_unet_chunks, chunk_io_names
from .contract import IO_DTYPE, to_apple_text_layout
from .environment import (ATTENTIONS, COMPUTE_UNITS, DEPLOYMENT_TARGETS, check_environment, newer_target,
                          quiet_coremltools, resolve_deployment_target)
from .package import inspect_package, merge_psnr, merge_stored, package_files, package_paths, spec_io, weight_psnr
from .precisions import CoreMLPrecision, get_precision
from .targets import TENSOR_NAMES


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
        verbose: show coremltools' progress bars and warnings.
    """

    component: str | None = None
    attention: str = "original"
    compute_units: str = "all"
    min_deployment_target: str | None = None
    chunk_unet: bool = False
    weight_threshold: int = 2048
    file_name: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    verbose: bool = False

    @classmethod
    def from_dict(cls, options: dict[str, Any] | None) -> "CoreMLOptions":
        options = dict(options or {})
        unknown = set(options) - set(cls.__dataclass_fields__)
        if unknown:
            raise ExportError(f"Unknown Core ML options {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        opts = cls(**options)
        if opts.attention not in ATTENTIONS:
            raise ExportError(f"Unknown attention {opts.attention!r}; choose {' or '.join(ATTENTIONS)}")
        if opts.compute_units not in COMPUTE_UNITS:
            raise ExportError(f"Unknown compute units {opts.compute_units!r}; choose from {', '.join(COMPUTE_UNITS)}")
        return opts


def _compress(mlmodel, row: CoreMLPrecision, weight_threshold: int):
    import coremltools.optimize.coreml as cto

    if row.kind == "fp16":
        return mlmodel
    if row.kind == "linear":
        op = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel",
                                         weight_threshold=weight_threshold)
        return cto.linear_quantize_weights(mlmodel, cto.OptimizationConfig(global_config=op))
    op = cto.OpPalettizerConfig(mode="kmeans", nbits=row.nbits, granularity="per_tensor",
                                weight_threshold=weight_threshold)
    return cto.palettize_weights(mlmodel, cto.OptimizationConfig(global_config=op))


def _convert_one(module, feeds: dict[str, Any], output_names, target: str, compute_units: str):
    """Trace ``module`` on ``feeds`` (ordered) and convert it to an mlprogram: fp16 compute, fp32 I/O."""
    import coremltools as ct

    with torch.no_grad(), warnings.catch_warnings():
        # diffusers' shape asserts become constants in the trace; shapes are static here, so that is intended.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(module, tuple(feeds.values()), check_trace=False, strict=False)
    io_dtype = np.dtype(IO_DTYPE).type
    try:
        return ct.convert(
            traced,
            inputs=[ct.TensorType(name=k, shape=tuple(v.shape), dtype=io_dtype) for k, v in feeds.items()],
            # Without a dtype, outputs of an fp16 program are fp16, which Swift's MLShapedArray<Float32>
            # (converting:) crashed on (apple/ml-stable-diffusion#253); Apple's converter asks for fp32 too.
            outputs=[ct.TensorType(name=n, dtype=io_dtype) for n in output_names],
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
    text = DESCRIPTIONS[component]
    for f in spec.description.input:
        mlmodel.input_description[f.name] = text.get(f.name, f"U-Net chunk tensor {f.name}")
    for f in spec.description.output:
        mlmodel.output_description[f.name] = text.get(f.name, f"U-Net chunk tensor {f.name}")
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


def convert(module, example_inputs, output_names, out_dir, precision, *, calibration=None, options=None
            ) -> ConvertedModel:
    """Convert one SD component to ``out_dir/<AppleName>.mlpackage`` (see base.py for the contract).

    Args:
        module: the component module (canonical inputs, components.py; the targets' ``component_module``).
        example_inputs: canonical inputs (name -> tensor), in the module's argument order.
        output_names: canonical output names.
        out_dir: folder for the package(s).
        precision: a row of ``precisions.PRECISIONS``.
        calibration: unused (Core ML weight compression is data-free).
        options: ``CoreMLOptions`` fields as a dict.
    """
    opts = CoreMLOptions.from_dict(options)
    row = get_precision(precision)
    target = resolve_deployment_target(precision, opts.min_deployment_target)
    versions = check_environment(precision)
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
        from ..split_einsum import apply_split_einsum

        module, n_attn = apply_split_einsum(module)
        notes.append(f"split-einsum attention in {n_attn} attention layers")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    renames = TENSOR_NAMES.get(component, {})
    packages = []
    with quiet_coremltools(opts.verbose):
        for name, part, feeds, outs in _parts(component, module, example, tuple(output_names), opts):
            adapted = apple_adapter(component, part, feeds)
            feeds = {renames.get(k, k): (to_apple_text_layout(v) if k == "encoder_hidden_states" else
                                         v.to(torch.float32)) for k, v in feeds.items()}
            mlmodel = _convert_one(adapted, feeds, [renames.get(o, o) for o in outs], target, opts.compute_units)
            packages.append(_finish(mlmodel, out_dir / f"{name}.mlpackage", adapted, component, row, opts, target))
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
    row = get_precision(precision)
    target = resolve_deployment_target(precision, opts.min_deployment_target or
                                       newer_target(extra["min_deployment_target"], row.min_target))
    extra["versions"] = check_environment(precision)
    extra["min_deployment_target"] = target
    extra["weight_threshold"] = opts.weight_threshold
    module = module.eval()
    if opts.attention == "split-einsum":
        from ..split_einsum import apply_split_einsum

        module, _ = apply_split_einsum(module)
    parts = _parts(opts.component, module, None, (), opts, names_only=True)
    sources = package_paths(converted)
    extra.pop("chunks", None)
    packages = []
    with quiet_coremltools(opts.verbose):
        for (name, part, _feeds, _outs), src in zip(parts, sources):
            input_names = [t.name for t in spec_io(src)[0]]
            adapted = apple_adapter(opts.component, part, input_names)
            mlmodel = ct.models.MLModel(str(src), skip_model_load=True)
            packages.append(_finish(mlmodel, Path(out_dir) / f"{name}.mlpackage", adapted, opts.component, row,
                                    opts, target))
    return _converted(packages, precision, extra, opts)


def _finish(mlmodel, path: Path, adapted, component, row: CoreMLPrecision, opts, target) -> dict[str, Any]:
    """Compress, describe and save one package; read it back for its stored weights and their PSNR."""
    mlmodel = _compress(mlmodel, row, opts.weight_threshold)
    _describe(mlmodel, component, row.name, opts, target)
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
    extra["stored_weights"] = merge_stored([p["stored"] for p in packages])
    extra["weight_psnr"] = merge_psnr([p["weight_psnr"] for p in packages])
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
        files=[f for p in packages for f in package_files(p["path"])],
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
