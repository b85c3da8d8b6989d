"""``export_bundle``: the one library call behind ``bksdm-edge export`` and ``export/to_*.py``.

It never branches on the format: the registry's target supplies the converter, the
runner, the tolerances and the calibration needs; the bundle writer makes the result
atomic; the shared validation routine gates it.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..runtime.image import GUIDANCE_EMBEDDING_PORTED as GUIDANCE_EMBEDDING
from ..versions import package_versions
from .bundle import EXPORT_LOG, VALIDATION, BundleWriter, component_entry, read_manifest, scheduler_entry, verify_bundle
from .manifest import ModelFacts, build_manifest
from .registry import get_target
from .request import ExportRequest, Validation

VERSION_PACKAGES = ("torch", "diffusers", "transformers", "onnx", "onnxruntime", "coremltools", "ai-edge-litert",
                    "litert-torch", "numpy")


def versions() -> dict[str, str]:
    """Versions of the toolkit and of the installed packages an export depends on."""
    return package_versions(VERSION_PACKAGES)


def _progress(iterable, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, disable=not enabled, leave=False, file=sys.stderr)


def model_facts(model) -> ModelFacts:
    """The facts a manifest records about a loaded ``SDModel``."""
    from ..tiny_vae import describe as describe_vae
    from .components import COMPONENTS

    vae = model.vae.config
    guidance = None
    if model.is_lcm:  # the U-Net embeds the guidance scale (runtime.image.embedded_guidance computes the input)
        lcm = (model.info.get("student") or {}).get("lcm") or {}
        guidance = {"position": COMPONENTS["unet"].input_names_for(model).index("timestep_cond"),
                    "dim": model.unet.config.time_cond_proj_dim, **GUIDANCE_EMBEDDING,
                    "w_range": lcm.get("w_range")}
    return ModelFacts(
        family=model.family, variant=(model.info.get("student") or {}).get("variant"),
        vae_scale_factor=model.vae_scale_factor, latent_channels=vae.latent_channels,
        latent_scaling_factor=vae.scaling_factor, scheduler=scheduler_entry(model.scheduler),
        pad_token=model.tokenizer.pad_token, guidance_embedding=guidance,
        vae=describe_vae(model.vae, model.vae_source or "teacher"),
    )


def export_bundle(request: ExportRequest, *, model=None) -> Path:
    """Export, validate and bundle an SD model as ``request`` describes; returns the bundle path.

    The console shows each stage as it starts (``request.progress``); the bundle's ``export_log.json``
    records every stage's wall and CPU seconds and peak RSS (also in ``OUT.failed``).

    Args:
        request: what to export and how (``ExportRequest``; checked when it was built).
        model: an already loaded ``SDModel`` (skips loading ``request.model``; tests and the benchmark use it).
    Raises:
        ValidationFailed: an exported component did not match PyTorch (bundle left as ``OUT.failed``).
    """
    from .stages import StageLog

    with StageLog(show=request.progress) as log:
        return _export_bundle(request, model, log)


def _export_bundle(request: ExportRequest, model, log) -> Path:
    from ..loading import load_model
    from ..tiny_vae import check_components as check_vae_components
    from ..tokenizer_files import write_clip_tokenizer_files
    from .components import COMPONENTS
    from .inputs import calibration_prompts, prepare_inputs
    from .memory import check_export_memory
    from .stages import stage
    from .validation import ValidationReport, reference_outputs, validate_component, validate_runtime_variants

    target = request.target
    writer = BundleWriter(request.out, overwrite=request.overwrite)  # refuses an existing bundle before slow work

    # 1. Load the model and settle each component's shape (U-Net: the requested batch; others: batch 1).
    owns_model = model is None  # only a model loaded here may have its weights freed as components finish
    if owns_model:
        with stage("load model", show=False):
            model = load_model(request.model, unet=request.unet, vae=request.vae)
    check_vae_components(model, request.components)
    shapes = {c: request.component_shape(c, model) for c in request.components}
    facts = model_facts(model)
    # Refuse now, with the numbers, rather than be killed by the kernel after minutes of recording.
    estimates = check_export_memory(request, model, shapes)

    # 2. Inputs: seeded sets, one recorded pipeline run for validation (when the export can run here)
    #    and the calibration runs (when the target calibrates).
    calibrate = [c for c in request.components if c in target.NEEDS_CALIBRATION]
    with stage("record inputs"):
        inputs = prepare_inputs(model, shapes,
                                validation=request.validation if target.needs_recorded_inputs() else None,
                                calibration=request.calibration, calibrate=calibrate, progress=request.progress)

    base = shapes[request.components[0]]
    report = ValidationReport(target=target.name(), context={
        "validation_prompt": request.validation.prompt, "validation_steps": request.validation.steps,
        "shapes": {c: asdict(s) for c, s in shapes.items()}})
    manifest_components: dict[str, Any] = {}
    with writer:
        root = writer.root
        # 3. Convert and validate every component; collect all failures before deciding.
        #    PyTorch's outputs come first, so that a back-end may free the module's weights once it has
        #    traced it (release_module), before it calibrates and quantizes: the SD-v1.4 U-Net's 3.4 GB
        #    then never sit beside ONNX Runtime's calibration session.
        needed_later = [COMPONENTS[c].needs for c in request.components]
        for i, name in enumerate(request.components):
            spec = COMPONENTS[name]
            module = target.component_module(name, model)
            with stage("references", name, detail=f"PyTorch on {len(inputs[name].validation)} input sets"):
                references = reference_outputs(module, inputs[name].validation, spec.input_names_for(model))
            options = target.component_options(name, request, facts)
            if target.RELEASES_MODULE and owns_model and spec.needs not in needed_later[i + 1:]:
                options["release_module"] = True
            with stage("convert", name, detail=target.name()):
                converted = target.convert(
                    module, inputs[name].example, spec.output_names, target.component_dir(root, name),
                    target.PRECISION, calibration=inputs[name].calibration, options=options,
                )
            with stage("validate", name, detail=f"{len(inputs[name].validation)} input sets"):
                report.components[name] = validate_component(
                    name, target.for_component(name), module, converted, inputs[name].validation,
                    input_names=spec.input_names_for(model), output_names=spec.output_names, references=references)
            if target.RUNTIME_VARIANTS:  # e.g. OpenVINO's bf16 inference precision, recorded for generate's default
                converted.extra["runtime_validation"] = validate_runtime_variants(
                    name, target.for_component(name), module, converted, inputs[name].validation,
                    input_names=spec.input_names_for(model), output_names=spec.output_names)
            manifest_components[name] = component_entry(converted, root)

        # 4. Tokenizer, scheduler, the manifest and the format's own layout files, checked as a whole.
        write_clip_tokenizer_files(root / "tokenizer", model.tokenizer.pad_token)
        model.scheduler.save_config(root / "scheduler")
        calibration = None
        if calibrate:
            prompts = request.calibration.prompts
            used = calibration_prompts(request.calibration, request.validation)
            calibration = {"prompts": str(prompts) if prompts else "default", "num_prompts": len(used),
                           "prompt_list": used, "steps": request.calibration.steps,
                           "samples": {c: len(inputs[c].calibration) for c in calibrate}}
            if "vae_decoder" in calibrate:  # half of them drawn from the VAE's latent prior (inputs.latent_prior_samples)
                calibration["vae_decoder_latent_prior_samples"] = len(inputs["vae_decoder"].calibration) // 2
        manifest = build_manifest(
            request, target, facts, height=base.height, width=base.width, max_length=base.max_length,
            components=manifest_components, calibration=calibration,
            validation={"prompt": request.validation.prompt, "steps": request.validation.steps,
                        "passed": report.passed, "numeric_checks": report.numeric_checks},
            versions=versions(),
        )
        target.write_layout_files(root, manifest)
        report.bundle = target.check_layout(root, manifest)
        report.save(root / VALIDATION)

        # 5. Only a validated export becomes a bundle; a failed one stays as OUT.failed for inspection.
        (root / EXPORT_LOG).write_text(json.dumps({**log.to_json(), "memory_estimates_bytes": estimates}, indent=1)
                                       + "\n")
        report.raise_if_failed(f" (report kept in {writer.out.name}.failed/{VALIDATION})")
        return writer.commit(manifest)


def request_of_bundle(path: str | Path, manifest: dict[str, Any]) -> ExportRequest:
    """The ``ExportRequest`` a bundle was made from, as far as its manifest records it (for re-validation)."""
    img, src = manifest["image"], manifest["source"]
    val = (manifest.get("export") or {}).get("validation") or {}
    return ExportRequest(
        out=Path(path), model=src["model"], unet=src.get("unet"), vae=src.get("vae"), format=manifest["format"],
        precision=manifest["precision"], components=tuple(manifest["components"]), height=img["height"],
        width=img["width"], batch=img.get("batch", 1), dynamic=img.get("dynamic", False),
        validation=Validation(prompt=val.get("prompt", Validation.prompt), steps=val.get("steps", Validation.steps)),
        overwrite=True, progress=False,
    )


def validate_bundle(path: str | Path, *, model=None, progress: bool = True, report_path: str | Path | None = None):
    """Re-run the shared validation of an existing bundle against its source model.

    Args:
        path: bundle folder (verified first).
        model: an already loaded ``SDModel`` (default: load the manifest's source).
        report_path: where to write the report (the bundle itself is never modified).
    Returns the ``ValidationReport``; raises ``ValidationFailed`` when a check fails.
    """
    from dataclasses import replace

    from ..loading import load_model
    from .base import ConvertedModel
    from .components import COMPONENTS
    from .inputs import prepare_inputs
    from .tensor_io import tensor_info_from_json
    from .validation import ValidationReport, validate_component

    root = Path(path)
    manifest = verify_bundle(root)
    request = request_of_bundle(root, manifest)
    target = request.target
    if model is None:
        model = load_model(request.model, unet=request.unet, vae=request.vae)
    shapes = {}
    for name in request.components:
        # Each component at its own exported batch (bundles from before per-component batches had one batch).
        declared = manifest["components"][name]["inputs"][0]["shape"][0]
        shape = request.component_shape(name, model)
        shapes[name] = replace(shape, batch=declared) if isinstance(declared, int) else shape
    inputs = prepare_inputs(model, shapes, validation=request.validation if target.needs_recorded_inputs() else None)
    report = ValidationReport(target=target.name(), context={"bundle": str(root), "revalidation": True})
    for name in _progress(request.components, "validating", progress):
        entry, spec = manifest["components"][name], COMPONENTS[name]
        converted = ConvertedModel(
            path=root / entry["file"], files=[], precision=entry["precision"],
            inputs=[tensor_info_from_json(t) for t in entry["inputs"]],
            outputs=[tensor_info_from_json(t) for t in entry["outputs"]], extra=entry.get("extra", {}),
        )
        report.components[name] = validate_component(
            name, target.for_component(name), target.component_module(name, model), converted,
            inputs[name].validation, input_names=spec.input_names_for(model), output_names=spec.output_names)
    report.bundle = target.check_layout(root, manifest)
    if report_path:
        report.save(report_path)
    report.raise_if_failed()
    return report


def export_summary(path: str | Path) -> list[str]:
    """What ``bksdm-edge export`` and ``export/to_*.py`` print after an export: each component's validation
    (worst PSNR, or why values were not compared) and format facts, the bundle path, the next steps."""
    import json

    root = Path(path)
    manifest = read_manifest(root)
    target = get_target(manifest["format"], manifest["precision"])
    report = json.loads((root / VALIDATION).read_text())
    lines = []
    for name, comp in report["components"].items():
        psnrs = [s["psnr_db"] for s in comp["sets"] if "psnr_db" in s]
        checked = f"min PSNR {min(psnrs):.1f} dB" if psnrs else f"numeric checks {comp['numeric_checks']}"
        facts = target.component_summary(manifest["components"][name])
        lines.append(f"  {name}: passed ({checked})" + (f"; {facts}" if facts else ""))
    return lines + [f"bundle written to {root}"] + target.bundle_notes(root, manifest)


__all__ = ["ExportRequest", "export_bundle", "export_summary", "validate_bundle", "read_manifest", "verify_bundle", "versions"]
