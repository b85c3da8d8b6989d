"""``export_coreml_bundle``: a validated bundle that Apple's Swift ``StableDiffusion`` package loads.

The generic ``pipeline.export_bundle`` gives every component one batch size, one options
dict per target and one folder per component. Apple's Swift pipeline needs more:

- one ``Resources/`` folder holding ``TextEncoder``, ``Unet`` (or ``UnetChunk1``/``UnetChunk2``),
  ``VAEDecoder``, ``VAEEncoder`` plus ``vocab.json`` and ``merges.txt`` (compile each
  ``.mlpackage`` to ``.mlmodelc`` on a Mac, docs/coreml.md);
- batch 2 for the U-Net (Swift always stacks the unconditional and conditional rows) and
  batch 1 for the text encoder and the VAE (Swift calls them once per prompt / latent);
- the user's Core ML options (attention, compute units, deployment target, chunking).

Everything else is the shared machinery: ``BundleWriter`` (atomic, sha256 manifest),
``validate_component`` (names, shapes, and values on macOS; the static check elsewhere).
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from ..errors import BksdmError
from .bundle import VALIDATION, BundleWriter, component_entry, scheduler_entry
from .registry import get_target

RESOURCES = "Resources"
# Batch Apple's Swift pipeline feeds each component.
APPLE_BATCH = {"text_encoder": 1, "unet": 2, "vae_decoder": 1, "vae_encoder": 1}


@dataclass(frozen=True)
class CoreMLExportConfig:
    """What ``export/to_coreml.py`` asks for (see its ``--help`` for each field)."""

    model: str = "builtin:mini-sd"
    out: Path = Path("bundles/coreml")
    unet: Path | None = None
    precision: str = "fp16"
    components: tuple[str, ...] = ("text_encoder", "unet", "vae_decoder")
    attention: str = "original"
    height: int | None = None
    width: int | None = None
    unet_batch: int = 2
    compute_units: str = "all"
    min_deployment_target: str | None = None
    chunk_unet: bool = False
    weight_threshold: int = 2048
    overwrite: bool = False
    validation_prompt: str = "a photo of an astronaut riding a horse on mars"
    validation_steps: int = 4
    extra_metadata: dict[str, str] = field(default_factory=dict)


def export_coreml_bundle(config: CoreMLExportConfig, *, model=None, log=print) -> Path:
    """Convert, check and bundle an SD model for Core ML; returns the bundle path.

    Args:
        config: the export settings.
        model: an already loaded ``SDModel`` (skips loading ``config.model``; tests use it).
        log: where progress lines go (``print`` by default; ``lambda *_: None`` for silence).
    Raises:
        ExportError: unsupported environment/arguments (raised before any model is loaded).
        ValidationFailed: a component failed its checks (bundle left as ``OUT.failed``).
    """
    from ..loading import load_model
    from ..tokenizer_files import clip_merges_and_vocab, write_clip_tokenizer_files
    from . import coreml
    from .components import COMPONENTS
    from .inputs import prepare_inputs
    from .pipeline import versions
    from .request import ShapeConfig, Validation
    from .validation import ValidationReport, validate_component

    # 1. Every check that needs no model, so a bad combination fails in a second.
    target = get_target("coreml", config.precision)
    deployment = coreml.resolve_deployment_target(config.precision, config.min_deployment_target)
    coreml.check_environment(config.precision)
    unknown = [c for c in config.components if c not in COMPONENTS]
    if unknown:
        raise BksdmError(f"unknown components {unknown}; choose from {', '.join(COMPONENTS)}")
    if config.chunk_unet and "unet" not in config.components:
        raise BksdmError("--chunk-unet needs the unet component")
    writer = BundleWriter(config.out, overwrite=config.overwrite)

    # 2. Model and shapes (per component: Apple's batch sizes).
    if model is None:
        log(f"loading {config.model}" + (f" with U-Net {config.unet}" if config.unet else ""))
        model = load_model(config.model, unet=config.unet)
    native = model.unet.config.sample_size * model.vae_scale_factor
    base_shape = ShapeConfig(height=config.height or native, width=config.width or native)
    base_shape.latent(model)
    shapes = {c: replace(base_shape, batch=config.unet_batch if c == "unet" else APPLE_BATCH[c])
              for c in config.components}
    runs_here = coreml.runtime_unavailable() is None
    source = {"model": config.model, "unet": str(config.unet) if config.unet else None,
              "variant": (model.info.get("student") or {}).get("variant"), "family": model.family}
    metadata = {"source": config.model, "teacher": config.model,
                "variant": source["variant"] or "teacher", **config.extra_metadata}

    report = ValidationReport(target=target.name(), context={
        "shapes": {c: asdict(s) for c, s in shapes.items()},
        "numeric_checks": "run" if runs_here else f"skipped: {coreml.runtime_unavailable()}"})
    manifest_components: dict[str, Any] = {}
    with writer:
        root = writer.root
        resources = root / RESOURCES
        for name in config.components:
            spec, shape = COMPONENTS[name], shapes[name]
            module = spec.module(model)
            options = {
                "component": name, "attention": config.attention if name != "text_encoder" else "original",
                "compute_units": config.compute_units, "min_deployment_target": deployment,
                "chunk_unet": config.chunk_unet and name == "unet", "weight_threshold": config.weight_threshold,
                "metadata": metadata,
            }
            log(f"converting {name} ({config.precision}, batch {shape.batch}) ...")
            converted = coreml.convert(module, spec.example_inputs(model, shape), spec.output_names, resources,
                                       config.precision, options=options)
            # 3. Validate: seeded inputs always; a real denoising trajectory where the model can run.
            validation = Validation(config.validation_prompt, config.validation_steps) if runs_here else None
            sets = prepare_inputs(model, {name: shape}, validation=validation)[name].validation
            report.components[name] = validate_component(
                name, coreml.target_for_component(target, name), module, converted, sets,
                input_names=spec.input_names, output_names=spec.output_names)
            psnr = converted.extra["weight_psnr"]
            log(f"  {converted.path.name}: stored {converted.extra['stored_weights']['stored_precision']}, "
                f"{converted.extra['stored_weights']['package_bytes'] / 2**20:.1f} MiB, weight PSNR min "
                f"{psnr.get('min_db', float('nan')):.1f} dB; " + "; ".join(converted.extra["notes"]))
            manifest_components[name] = component_entry(converted, root)
        report.save(root / VALIDATION)

        # 4. Tokenizer files (for Swift beside the models, and in the shared tokenizer/ folder), scheduler.
        tok = model.tokenizer
        write_clip_tokenizer_files(root / "tokenizer", tok.pad_token)
        for f in ("vocab.json", "merges.txt"):
            shutil.copyfile(root / "tokenizer" / f, resources / f)
        vocab = clip_merges_and_vocab()[1]
        model.scheduler.save_config(root / "scheduler")
        scheduler = scheduler_entry(model.scheduler)
        vae = model.vae.config
        manifest = {
            "format": "coreml",
            "precision": config.precision,
            "target": {"name": target.name(), "description": target.DESCRIPTION},
            "source": source,
            "image": {"height": base_shape.height, "width": base_shape.width, "batch": 1, "dynamic": False,
                      "unet_batch": shapes.get("unet", base_shape).batch,
                      "vae_scale_factor": model.vae_scale_factor, "latent_channels": vae.latent_channels},
            "latent_scaling_factor": vae.scaling_factor,
            "vae_decoder_input_scaled": False,
            "vae_decoder_output_range": [-1, 1],
            "prediction_type": scheduler.get("prediction_type", "epsilon"),
            "scheduler": scheduler,
            "tokenizer": {"vocab": "tokenizer/vocab.json", "merges": "tokenizer/merges.txt",
                          "max_length": base_shape.max_length, "bos_token_id": vocab["<|startoftext|>"],
                          "eos_token_id": vocab["<|endoftext|>"], "pad_token_id": vocab[tok.pad_token],
                          "pad_token": tok.pad_token},
            "components": manifest_components,
            "coreml": {
                "resources": RESOURCES,
                "attention": config.attention,
                "compute_units": config.compute_units,
                "min_deployment_target": deployment,
                "chunked_unet": config.chunk_unet,
                "compile_on_mac": f"for p in {RESOURCES}/*.mlpackage; do xcrun coremlcompiler compile \"$p\" "
                                  f"{RESOURCES}/; done",
            },
            "export": {"validation": {"prompt": config.validation_prompt, "steps": config.validation_steps,
                                      "passed": report.passed, "numeric_checks": report.context["numeric_checks"]}},
            "versions": versions(),
        }
        report.raise_if_failed(f" (report kept in {writer.out.name}.failed/{VALIDATION})")
        return writer.commit(manifest)


def config_from_args(args) -> CoreMLExportConfig:
    """``CoreMLExportConfig`` from ``export/to_coreml.py``'s parsed options."""
    return CoreMLExportConfig(
        model=args.model, out=args.out, unet=args.unet, precision=args.precision,
        components=tuple(args.components), attention=args.attention, height=args.height, width=args.width,
        unet_batch=args.unet_batch, compute_units=args.compute_units,
        min_deployment_target=args.min_deployment_target, chunk_unet=args.chunk_unet,
        weight_threshold=args.weight_threshold, overwrite=args.overwrite,
    )


def component_list(text: str) -> Sequence[str]:
    from .components import COMPONENTS

    names = list(COMPONENTS) if text == "all" else [c.strip() for c in text.split(",") if c.strip()]
    return tuple(names)
