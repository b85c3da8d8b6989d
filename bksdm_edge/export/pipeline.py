"""``export_bundle``: the one library call behind ``bksdm-edge export`` and ``export/to_*.py``.

It never branches on the format: the registry's target supplies the converter, the
runner, the tolerances and the calibration needs; the bundle writer makes the result
atomic; the shared validation routine gates it.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

from ..errors import BksdmError
from .bundle import VALIDATION, BundleWriter, component_entry, read_manifest, scheduler_entry, verify_bundle
from .registry import get_target

DEFAULT_VALIDATION_PROMPT = "a photo of an astronaut riding a horse on mars"
VERSION_PACKAGES = ("torch", "diffusers", "transformers", "onnx", "onnxruntime", "coremltools", "ai-edge-litert",
                    "litert-torch", "numpy")


def versions() -> dict[str, str]:
    """Versions of the toolkit and of the installed packages an export depends on."""
    from .. import __version__

    out = {"bksdm_edge": __version__, "python": platform.python_version()}
    for pkg in VERSION_PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def default_shape(model, height=None, width=None, batch=1, dynamic=False):
    """ShapeConfig from the user's sizes, else the U-Net's native resolution."""
    from .components import ShapeConfig

    native = model.unet.config.sample_size * model.vae_scale_factor
    return ShapeConfig(height=height or native, width=width or native, batch=batch, dynamic=dynamic)


def _progress(iterable, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, disable=not enabled, leave=False, file=sys.stderr)


def export_bundle(
    model_src: str,
    *,
    out: str | Path,
    format: str = "onnx",
    precision: str = "fp32",
    unet: str | Path | None = None,
    components: Sequence[str] | None = None,
    height: int | None = None,
    width: int | None = None,
    batch: int = 1,
    dynamic: bool = False,
    calibration_prompts: str | Path | None = None,
    calibration_steps: int = 4,
    validation_prompt: str = DEFAULT_VALIDATION_PROMPT,
    validation_steps: int = 4,
    overwrite: bool = False,
    progress: bool = True,
    model=None,
) -> Path:
    """Export, validate and bundle an SD model; returns the bundle path.

    Args:
        model_src: model source (``builtin:NAME``, diffusers folder, hub id).
        out: bundle folder to create (written atomically).
        format, precision: an export target (``registry.get_target``).
        unet: optional student U-Net folder replacing the source's U-Net.
        components: components to export (default: text_encoder, unet, vae_decoder).
        height, width, batch: static export shapes (default: the model's native size, batch 1;
            batch 2 holds the unconditional and conditional rows of classifier-free guidance).
        dynamic: export batch/height/width as dynamic axes (when the format supports it).
        calibration_prompts: prompt file for static int8 calibration (default: the packaged list).
        calibration_steps: denoising steps recorded per calibration prompt.
        validation_prompt, validation_steps: the pipeline run whose real inputs validation uses.
        overwrite: replace an existing bundle at ``out``.
        progress: show progress bars on stderr.
        model: an already loaded ``SDModel`` (skips loading ``model_src``; used by tests).
    Raises:
        ValidationFailed: an exported component did not match PyTorch (bundle left as ``OUT.failed``).
    """
    from ..loading import load_model
    from ..tokenizer_files import clip_merges_and_vocab, write_clip_tokenizer_files
    from .components import COMPONENTS, DEFAULT_COMPONENTS
    from .inputs import calibration_inputs, read_prompts, seeded_input_sets, trajectory_input_sets
    from .validation import ValidationReport, validate_component

    target = get_target(format, precision)
    components = tuple(components or DEFAULT_COMPONENTS)
    unknown = [c for c in components if c not in COMPONENTS]
    if unknown:
        raise BksdmError(f"unknown components {unknown}; choose from {', '.join(COMPONENTS)}")
    unsupported = [c for c in components if c not in target.COMPONENTS]
    if unsupported:
        raise BksdmError(f"{target.name()} cannot export {unsupported}; it exports {', '.join(target.COMPONENTS)}")
    writer = BundleWriter(out, overwrite=overwrite)  # refuses an existing bundle before any slow work

    # 1. Load the model and settle the shapes.
    if model is None:
        model = load_model(model_src, unet=unet)
    shape = default_shape(model, height, width, batch, dynamic)
    shape.latent(model)  # checks divisibility

    # 2. Real inputs: one validation trajectory, and calibration runs if the target needs them.
    steps = _progress(range(2), "recording pipeline inputs", progress)
    real_sets = trajectory_input_sets(model, shape, validation_prompt, components, steps=validation_steps)
    steps.update()
    calib_components = [c for c in components if c in target.NEEDS_CALIBRATION]
    calibration: dict[str, list] = {}
    prompts = read_prompts(calibration_prompts) if calib_components else []
    if calib_components:
        calibration = calibration_inputs(model, shape, prompts, calib_components, steps=calibration_steps)
    steps.update()
    steps.close()

    report = ValidationReport(target=target.name(), context={
        "validation_prompt": validation_prompt, "validation_steps": validation_steps, "shape": asdict(shape)})
    manifest_components: dict[str, Any] = {}
    with writer:
        root = writer.root
        # 3. Convert and validate every component; collect all failures before deciding.
        for name in _progress(components, f"exporting {target.name()}", progress):
            spec = COMPONENTS[name]
            module = spec.module(model)
            options = target.options(name)
            if shape.dynamic:
                options["dynamic_axes"] = spec.dynamic_axes
            converted = target.convert(
                module, spec.example_inputs(model, shape), spec.output_names, root / name, precision,
                calibration=calibration.get(name), options=options,
            )
            sets = seeded_input_sets(name, model, shape) + real_sets.get(name, [])
            report.components[name] = validate_component(
                name, target, module, converted, sets, input_names=spec.input_names, output_names=spec.output_names)
            manifest_components[name] = component_entry(converted, root)
        report.save(root / VALIDATION)

        # 4. Tokenizer, scheduler and the format's own layout files.
        tok = model.tokenizer
        write_clip_tokenizer_files(root / "tokenizer", tok.pad_token)
        vocab = clip_merges_and_vocab()[1]
        model.scheduler.save_config(root / "scheduler")
        scheduler = scheduler_entry(model.scheduler)
        vae = model.vae.config
        manifest = {
            "format": target.FORMAT,
            "precision": target.PRECISION,
            "target": {"name": target.name(), "description": target.DESCRIPTION},
            "source": {
                "model": model_src, "unet": str(unet) if unet else None,
                "variant": (model.info.get("student") or {}).get("variant"), "family": model.family,
            },
            "image": {"height": shape.height, "width": shape.width, "batch": shape.batch, "dynamic": shape.dynamic,
                      "vae_scale_factor": model.vae_scale_factor, "latent_channels": vae.latent_channels},
            "latent_scaling_factor": vae.scaling_factor,
            "vae_decoder_input_scaled": False,
            "vae_decoder_output_range": [-1, 1],
            "prediction_type": scheduler.get("prediction_type", "epsilon"),
            "scheduler": scheduler,
            "tokenizer": {"vocab": "tokenizer/vocab.json", "merges": "tokenizer/merges.txt",
                          "max_length": shape.max_length, "bos_token_id": vocab["<|startoftext|>"],
                          "eos_token_id": vocab["<|endoftext|>"], "pad_token_id": vocab[tok.pad_token],
                          "pad_token": tok.pad_token},
            "components": manifest_components,
            "export": {
                "calibration": {"prompts": str(calibration_prompts) if calibration_prompts else "default",
                                "num_prompts": len(prompts), "steps": calibration_steps,
                                "samples": {c: len(v) for c, v in calibration.items()}} if calib_components else None,
                "validation": {"prompt": validation_prompt, "steps": validation_steps, "passed": report.passed},
            },
            "versions": versions(),
        }
        target.write_layout_files(root, manifest)

        # 5. Only a validated export becomes a bundle; a failed one stays as OUT.failed for inspection.
        report.raise_if_failed(f" (report kept in {writer.out.name}.failed/{VALIDATION})")
        return writer.commit(manifest)


def validate_bundle(path: str | Path, *, model=None, progress: bool = True, report_path: str | Path | None = None):
    """Re-run the shared validation of an existing bundle against its source model.

    Args:
        path: bundle folder (verified first).
        model: an already loaded ``SDModel`` (default: load the manifest's source).
        report_path: where to write the report (the bundle itself is never modified).
    Returns the ``ValidationReport``; raises ``ValidationFailed`` when a check fails.
    """
    from ..loading import load_model
    from .components import COMPONENTS, ShapeConfig
    from .inputs import seeded_input_sets, trajectory_input_sets
    from .tensor_io import tensor_info_from_json
    from .base import ConvertedModel
    from .validation import ValidationReport, validate_component

    root = Path(path)
    manifest = verify_bundle(root)
    target = get_target(manifest["format"], manifest["precision"])
    if model is None:
        model = load_model(manifest["source"]["model"], unet=manifest["source"].get("unet"))
    img = manifest["image"]
    shape = ShapeConfig(height=img["height"], width=img["width"], batch=img["batch"], dynamic=img.get("dynamic", False))
    val = manifest.get("export", {}).get("validation") or {}
    prompt, steps = val.get("prompt", DEFAULT_VALIDATION_PROMPT), val.get("steps", 4)
    names = list(manifest["components"])
    real_sets = trajectory_input_sets(model, shape, prompt, names, steps=steps)
    report = ValidationReport(target=target.name(), context={"bundle": str(root), "revalidation": True})
    for name in _progress(names, "validating", progress):
        entry, spec = manifest["components"][name], COMPONENTS[name]
        converted = ConvertedModel(
            path=root / entry["file"], files=[], precision=entry["precision"],
            inputs=[tensor_info_from_json(t) for t in entry["inputs"]],
            outputs=[tensor_info_from_json(t) for t in entry["outputs"]], extra=entry.get("extra", {}),
        )
        sets = seeded_input_sets(name, model, shape) + real_sets.get(name, [])
        report.components[name] = validate_component(
            name, target, spec.module(model), converted, sets, input_names=spec.input_names,
            output_names=spec.output_names)
    if report_path:
        report.save(report_path)
    report.raise_if_failed()
    return report


__all__ = ["export_bundle", "validate_bundle", "read_manifest", "verify_bundle", "versions"]
