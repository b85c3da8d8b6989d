"""``ExportRequest``: everything one export needs, as one frozen value built once per entry point.

``bksdm-edge export``, ``export/to_{onnx,tflite,coreml}.py``, the benchmark's pipeline export, the
main job and the tests each build a request (the CLI with ``cli_args.request_from_args``) and call
``export_bundle(request)``; nothing downstream reads CLI flags or takes loose keyword arguments::

    request = ExportRequest(out="bundles/bk-small", model="builtin:sd-v1.4", unet="students/bk-small",
                            format="onnx", precision="int8")
    export_bundle(request)

Construction checks everything that needs no model (format x precision is registered, components
are known and supported, format options are valid), so a bad request fails in a second, before any
model is loaded. Defaults that depend on the format come from the registry: the precision
(``ExportTarget.DEFAULT``) and the U-Net batch (``ExportTarget.DEFAULT_BATCH``).

Shapes are per component (``component_shape``): the U-Net gets the requested batch (2 = the
unconditional and conditional rows of classifier-free guidance in one call; ``BATCH_AXIS``: a batch
axis, any number of rows per call, exported and validated at 2), the text encoder and the VAE batch 1,
because every SD pipeline (diffusers, optimum, Apple's Swift package, ours) calls them once per
prompt / latent.

This module imports no torch (the CLI builds requests before deciding to load a model).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from .base import ExportError
from .registry import ALL_COMPONENTS, DEFAULT_COMPONENTS, get_target

DEFAULT_VALIDATION_PROMPT = "a photo of an astronaut riding a horse on mars"
DEFAULT_CALIBRATION_PROMPTS = 4
# ``ExportRequest.batch`` for a U-Net with a batch axis: one call takes 1 row (no guidance, LCM) or 2 (CFG), as
# optimum's pipelines send them. The ONNX default (docs/bundle_format.md, "ONNX bundles in optimum").
BATCH_AXIS = "dynamic"
BATCHES = (1, 2, BATCH_AXIS)


@dataclass(frozen=True)
class ShapeConfig:
    """Static export shapes of one component (dynamic axes are opt-in per format)."""

    height: int = 512
    width: int = 512
    batch: int = 1
    dynamic: bool = False
    max_length: int = 77

    def latent(self, model) -> tuple[int, int]:
        """Latent height and width; refuses sizes the VAE and the U-Net cannot both divide."""
        from ..checks import image_size

        f = model.vae_scale_factor
        image_size(self.height, self.width, f, source=model.source)  # InputError (exit 2) naming the fix
        return self.height // f, self.width // f


@dataclass(frozen=True)
class Calibration:
    """Real pipeline inputs that static int8 targets calibrate on (ignored by targets that need none).

    Args:
        prompts: prompt file, one per line ('#' comments); None = the packaged list.
        steps: denoising steps recorded per prompt.
        seed: seed of the first prompt's initial latents (prompt i uses seed + i); kept apart from
            the validation seed so that calibration never sees the inputs it is validated on.
        count: how many prompts of the list to run (the first ones; None = all). MinMax ranges come from
            the extremes of a trajectory, not from many prompts: on builtin:mini-sd 1-6 prompts gave the
            same int8 accuracy (benchmarks/results/int8_study), while every prompt is a full pipeline run.
    """

    prompts: Path | None = None
    steps: int = 4
    seed: int = 1000
    count: int | None = DEFAULT_CALIBRATION_PROMPTS


@dataclass(frozen=True)
class Validation:
    """The real denoising trajectory that validation replays (besides seeded inputs).

    Args:
        prompt: the prompt of the recorded pipeline run.
        steps: its denoising steps (the U-Net is checked at its first, middle and last call).
        seed: seed of its initial latents.
    """

    prompt: str = DEFAULT_VALIDATION_PROMPT
    steps: int = 4
    seed: int = 0


@dataclass(frozen=True)
class ExportRequest:
    """One export, fully described.

    Args:
        out: bundle folder to create (written atomically; ``OUT.failed`` if validation fails).
        model: model source (``builtin:NAME``, diffusers pipeline folder, hub id).
        unet: student U-Net folder replacing the source's U-Net (``bksdm-edge build``/``distill``).
        vae: VAE replacing the source's (``bksdm_edge.tiny_vae``: ``tiny``, a ``distill-vae`` run, an
            ``AutoencoderTiny`` folder or hub id); None (or ``teacher``) keeps the source's own.
        format: export format (``registry.FORMAT_MODULES``).
        precision: a registered precision of ``format``; None = the format's default target.
        components: components to export, in order.
        height, width: image size in pixels; None = the U-Net's native size.
        batch: the U-Net's batch: 1, 2 (both CFG rows in one call) or ``BATCH_AXIS`` ("dynamic": a batch axis,
            formats with dynamic shapes); None = the format's default. Text encoder and VAE are always batch 1.
        dynamic: batch/height/width as dynamic axes (formats that support them).
        calibration: where static int8 calibration inputs come from.
        validation: the pipeline run whose real inputs validation replays.
        overwrite: replace an existing bundle at ``out``.
        progress: progress bars on stderr.
        options: format-specific options (Core ML: attention, compute_units, ...); the target checks them.
        memory_limit: bytes the export may use beyond the loaded model, for the pre-flight memory check
            (``memory.check_export_memory``); None = the memory available when the check runs.
    """

    out: Path
    model: str = "builtin:mini-sd"
    unet: Path | None = None
    vae: str | None = None
    format: str = "onnx"
    precision: str | None = None
    components: tuple[str, ...] = DEFAULT_COMPONENTS
    height: int | None = None
    width: int | None = None
    batch: int | str | None = None
    dynamic: bool = False
    calibration: Calibration = field(default_factory=Calibration)
    validation: Validation = field(default_factory=Validation)
    overwrite: bool = False
    progress: bool = True
    options: Mapping[str, Any] = field(default_factory=dict)
    memory_limit: int | None = None

    def __post_init__(self) -> None:
        from .registry import default_precision

        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        set_("out", Path(self.out))
        set_("unet", Path(self.unet) if self.unet is not None else None)
        set_("vae", None if self.vae in (None, "teacher") else str(self.vae))
        set_("calibration", dataclasses.replace(self.calibration, prompts=Path(self.calibration.prompts))
             if self.calibration.prompts is not None else self.calibration)
        if self.precision is None:
            set_("precision", default_precision(self.format))
        target = get_target(self.format, self.precision)  # a clear error listing the choices
        components = tuple(self.components or DEFAULT_COMPONENTS)
        unknown = [c for c in components if c not in ALL_COMPONENTS]
        if unknown:
            raise ExportError(f"unknown components {unknown}; choose from {', '.join(ALL_COMPONENTS)}")
        unsupported = [c for c in components if c not in target.COMPONENTS]
        if unsupported:
            raise ExportError(f"{target.name()} cannot export {unsupported}; it exports {', '.join(target.COMPONENTS)}")
        if len(set(components)) != len(components):
            raise ExportError(f"components listed twice: {list(components)}")
        set_("components", components)
        if self.batch is None:
            set_("batch", target.DEFAULT_BATCH)
        if self.batch not in BATCHES:
            raise ExportError(f"U-Net batch must be 1, 2 (both classifier-free guidance rows) or {BATCH_AXIS!r} "
                              f"(a batch axis); got {self.batch!r}")
        if self.batch == BATCH_AXIS and not target.DYNAMIC_SHAPES:
            raise ExportError(f"{target.FORMAT} exports static shapes only: a U-Net batch axis is not possible; "
                              "use --batch 1 or 2")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ExportError(f"{name} must be a positive number of pixels; got {value}")
        for name, run in (("calibration", self.calibration), ("validation", self.validation)):
            if run.steps < 1:
                raise ExportError(f"{name} steps must be at least 1; got {run.steps}")
        if self.calibration.count is not None and self.calibration.count < 1:
            raise ExportError(f"the calibration prompt count (--calibration-count) must be at least 1, or 0 for all "
                              f"prompts; got {self.calibration.count}")
        if self.memory_limit is not None and self.memory_limit <= 0:
            raise ExportError(f"the memory limit (--memory-limit) must be positive; got {self.memory_limit} bytes")
        if self.dynamic and not target.DYNAMIC_SHAPES:
            raise ExportError(f"{target.FORMAT} exports static shapes only; drop --dynamic")
        set_("options", MappingProxyType(target.check_options(self, dict(self.options))))

    @property
    def target(self):
        """The registered ``ExportTarget`` of this request."""
        return get_target(self.format, self.precision)

    def image_size(self, model) -> tuple[int, int]:
        """(height, width) in pixels: the requested size, else the U-Net's native resolution."""
        native = model.unet.config.sample_size * model.vae_scale_factor
        return self.height or native, self.width or native

    def component_shape(self, component: str, model) -> ShapeConfig:
        """Export shape of ``component``: the requested U-Net batch for the U-Net (a batch axis is traced and
        validated at 2, the CFG batch), batch 1 for the others."""
        height, width = self.image_size(model)
        batch = (2 if self.batch == BATCH_AXIS else self.batch) if component == "unet" else 1
        shape = ShapeConfig(height=height, width=width, batch=batch, dynamic=self.dynamic)
        shape.latent(model)  # checks divisibility
        return shape

    def replace(self, **changes) -> "ExportRequest":
        """A copy with ``changes`` (checked again)."""
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able record of the request (paths as strings)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                value = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(value).items()}
            elif isinstance(value, Mapping):
                value = dict(value)
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out
