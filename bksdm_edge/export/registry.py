"""Export targets (format x precision) as data.

Each target is a class whose class attributes declare everything the framework
needs, in the spirit of optimum's ``OnnxConfig`` (``ATOL_FOR_VALIDATION``): the
back-end functions, per-component validation tolerances, which components need
calibration inputs, and whether the runtime can run here. A back-end module
registers its targets with ``@register_target``::

    @register_target
    class TFLiteFp16(ExportTarget):
        FORMAT = "tflite"
        PRECISION = "fp16"
        DESCRIPTION = "float16 weights, float32 I/O"
        TOLERANCES = {"default": Tolerance(min_psnr=35, min_cosine=0.999)}
        convert = staticmethod(convert)          # see base.py for the contract
        load_runner = staticmethod(load_runner)

The framework (``pipeline.export_bundle``, ``validation``, ``generate``) looks
targets up here and never branches on the format. This module imports no torch,
and back-end modules must keep their torch imports inside functions, so that
``bksdm-edge generate`` can load a runner without PyTorch.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

from .base import ConvertedModel, ExportError

# Format -> module that registers its targets when imported. Modules that are not
# written yet (or whose runtime is not installed) are skipped by ``all_targets``.
FORMAT_MODULES: dict[str, str] = {
    "onnx": "bksdm_edge.export.onnx",
    "tflite": "bksdm_edge.export.tflite",
    "coreml": "bksdm_edge.export.coreml",
    "openvino": "bksdm_edge.export.openvino",
}

# The names of components.COMPONENTS / DEFAULT_COMPONENTS, repeated here so that torch-free code
# (the CLI parser, generate) need not import components.py; tests/test_registry.py keeps them equal.
ALL_COMPONENTS = ("text_encoder", "unet", "vae_decoder", "vae_encoder")
DEFAULT_COMPONENTS = ("text_encoder", "unet", "vae_decoder")


@dataclass(frozen=True)
class FormatOption:
    """A format-specific export option: its key in ``ExportRequest.options`` and its command-line flag.

    ``cli_args.add_export_args`` makes ``--KEY`` (underscores as dashes) from it, so
    ``bksdm-edge export --format F`` and ``export/to_F.py`` offer the same options with the same help.
    """

    key: str
    help: str
    choices: tuple[Any, ...] | None = None
    type: Callable[[str], Any] | None = None
    flag: bool = False  # a switch (store_true) instead of a value

    @property
    def cli(self) -> str:
        return "--" + self.key.replace("_", "-")


@dataclass(frozen=True)
class Tolerance:
    """Validation thresholds of one component.

    fp32 targets set ``atol``/``rtol`` (numpy ``allclose``); reduced-precision targets set
    ``min_psnr`` (dB, peak = max |reference|, as apple/ml-stable-diffusion) and ``min_cosine``.
    Every threshold that is set must hold.
    """

    atol: float | None = None
    rtol: float | None = None
    min_psnr: float | None = None
    min_cosine: float | None = None

    def to_json(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class RuntimeVariant:
    """A run-time setting validated beside the target's default run (e.g. OpenVINO's bf16 inference precision).

    The export validates each variant with the same routine and its own tolerances and records the outcome
    in the manifest (``components.<name>.extra.runtime_validation``); a failing variant does not fail the export,
    it is only never chosen by default. ``generate``'s ``auto`` measures the default and every variant that passed
    for every component and that this machine can run on the bundle's U-Net, and keeps the fastest
    (``generate.choose_runtime``, ``runtime_speed``).
    """

    runner_options: dict[str, Any]
    tolerances: dict[str, Tolerance]  # per component, with a "default" entry
    description: str = ""

    def tolerance(self, component: str) -> Tolerance:
        return self.tolerances.get(component, self.tolerances["default"])


class ExportTarget:
    """Base class of a registered target; subclasses set the class attributes."""

    FORMAT: ClassVar[str]
    PRECISION: ClassVar[str]
    DESCRIPTION: ClassVar[str] = ""
    # Per component, with a "default" entry for components not listed.
    TOLERANCES: ClassVar[dict[str, Tolerance]]
    # Components this target can export.
    COMPONENTS: ClassVar[tuple[str, ...]] = ALL_COMPONENTS
    # Components whose conversion needs calibration inputs (real inputs gathered from the pipeline).
    NEEDS_CALIBRATION: ClassVar[tuple[str, ...]] = ()
    # Canonical tensor name -> the name this format's runtime expects (e.g. Core ML's "z"); others unchanged.
    TENSOR_NAMES: ClassVar[dict[str, str]] = {}
    # Extra keyword options passed to ``convert(..., options=...)`` per component ("default" for the rest).
    OPTIONS: ClassVar[dict[str, dict[str, Any]]] = {}
    # Whether ``convert`` honours ``options["release_module"]`` (frees the PyTorch weights once traced).
    RELEASES_MODULE: ClassVar[bool] = False
    # The format's default precision when a request names none (exactly one target per format sets it).
    DEFAULT: ClassVar[bool] = False
    # The U-Net batch when a request names none: 1, 2 or request.BATCH_AXIS (text encoder and VAE are always batch 1).
    DEFAULT_BATCH: ClassVar[int | str] = 1
    # Whether batch/height/width can be exported as dynamic axes.
    DYNAMIC_SHAPES: ClassVar[bool] = True
    # Format-specific options a request may carry (``check_options`` validates them).
    FORMAT_OPTIONS: ClassVar[tuple[FormatOption, ...]] = ()

    # Back-end functions (see base.py). Set with staticmethod(...).
    convert: ClassVar[Callable[..., ConvertedModel]]
    load_runner: ClassVar[Callable[..., Callable]]
    # Run-time settings validated beside the default (see RuntimeVariant); DEFAULT_RUNTIME names
    # the default run itself (the setting ``load_runner`` uses without options), e.g. OpenVINO's "f32".
    RUNTIME_VARIANTS: ClassVar[dict[str, RuntimeVariant]] = {}
    DEFAULT_RUNTIME: ClassVar[str | None] = None
    # A check of the saved model for back-ends whose runtime cannot run here:
    # ``static_check(converted: ConvertedModel) -> list[str]`` (failure messages; empty = passed).
    static_check: ClassVar[Callable[[ConvertedModel], list[str]] | None] = None

    @classmethod
    def name(cls) -> str:
        return f"{cls.FORMAT}-{cls.PRECISION}"

    @classmethod
    def tolerance(cls, component: str) -> Tolerance:
        return cls.TOLERANCES.get(component, cls.TOLERANCES["default"])

    @classmethod
    def options(cls, component: str) -> dict[str, Any]:
        return dict(cls.OPTIONS.get(component, cls.OPTIONS.get("default", {})))

    @classmethod
    def runtime_unavailable(cls) -> str | None:
        """Why the exported model cannot be run on this machine (None = it can)."""
        return None

    # -- hooks of the export path (``pipeline.export_bundle``); the defaults fit ONNX and TFLite --

    @classmethod
    def check_options(cls, request, options: dict[str, Any]) -> dict[str, Any]:
        """Check a request's format-specific options; returns them normalised (a format without options
        refuses any)."""
        if options:
            raise ExportError(f"{cls.FORMAT} export takes no format options; got {sorted(options)}")
        return options

    @classmethod
    def component_module(cls, component: str, model):
        """The PyTorch module this format exports for ``component`` of a loaded ``SDModel`` (and validates
        against): the canonical wrapper of ``components.py`` unless the format's runtime expects another output."""
        from .components import COMPONENTS

        return COMPONENTS[component].module(model)

    @classmethod
    def component_options(cls, component: str, request, facts=None) -> dict[str, Any]:
        """The ``convert(..., options=...)`` of one component of ``request`` (``facts``: the model's
        ``manifest.ModelFacts``, for formats that record them in the model files)."""
        from .request import BATCH_AXIS

        options = cls.options(component)
        if request.dynamic or (component == "unet" and request.batch == BATCH_AXIS):
            from .components import COMPONENTS

            spec = COMPONENTS[component]
            options["dynamic_axes"] = spec.dynamic_axes if request.dynamic else spec.batch_axes
        return options

    @classmethod
    def memory_estimate(cls, component: str, model, shape, options: dict[str, Any]):
        """What converting ``component`` at ``shape`` adds to the process's peak memory, as a
        ``memory.MemoryEstimate`` fitted above measured peaks; None where the format has none. The export
        checks every component's estimate before any slow work (``memory.check_export_memory``)."""
        return None

    @classmethod
    def component_dir(cls, root: Path, component: str) -> Path:
        """Where ``convert`` writes ``component`` inside the bundle (one folder per component by default)."""
        return root / component

    @classmethod
    def for_component(cls, component: str) -> type["ExportTarget"]:
        """The target as validation sees ``component`` (formats that rename tensors per component override)."""
        return cls

    @classmethod
    def needs_recorded_inputs(cls) -> bool:
        """Whether validation replays recorded pipeline inputs: only when the exported model runs here
        (a static check compares declared shapes only, so recording a trajectory would be wasted time)."""
        return cls.runtime_unavailable() is None

    @classmethod
    def manifest_section(cls, request) -> dict[str, Any]:
        """Extra top-level manifest entries of this format (e.g. Core ML's ``coreml``)."""
        return {}

    @classmethod
    def runtime_variant_unavailable(cls, variant: str) -> str | None:
        """Why a run-time variant cannot run on this machine (None = it can), e.g. a CPU without bf16."""
        return None

    @classmethod
    def write_layout_files(cls, root: Path, info: dict[str, Any]) -> list[Path]:
        """Write format-specific files at the bundle root (e.g. ONNX's model_index.json); returns them."""
        return []

    @classmethod
    def check_layout(cls, root: Path, manifest: dict[str, Any]) -> list[str]:
        """Problems of the written bundle as a whole against the format's consumer (e.g. Apple's Swift
        package for Core ML); checked before the bundle is committed. Empty = none."""
        return []

    @classmethod
    def component_summary(cls, entry: dict[str, Any]) -> str:
        """Format facts worth one line after an export (e.g. Core ML's stored weights), from a manifest entry."""
        return ""

    @classmethod
    def bundle_notes(cls, path: Path, manifest: dict[str, Any]) -> list[str]:
        """What to do with the bundle next (e.g. compile Core ML packages on a Mac)."""
        return []


_TARGETS: dict[tuple[str, str], type[ExportTarget]] = {}


def register_target(cls: type[ExportTarget]) -> type[ExportTarget]:
    """Class decorator: add a target to the registry (one per format x precision)."""
    for attr in ("FORMAT", "PRECISION", "TOLERANCES", "convert", "load_runner"):
        if not hasattr(cls, attr):
            raise TypeError(f"export target {cls.__name__} does not set {attr}")
    if "default" not in cls.TOLERANCES:
        raise TypeError(f"export target {cls.__name__}: TOLERANCES needs a 'default' entry")
    key = (cls.FORMAT, cls.PRECISION)
    if key in _TARGETS and _TARGETS[key] is not cls:
        raise TypeError(f"two export targets for {key}: {_TARGETS[key].__name__} and {cls.__name__}")
    if cls.DEFAULT and any(t.DEFAULT and f == cls.FORMAT and t is not cls for (f, _), t in _TARGETS.items()):
        raise TypeError(f"two default targets for format {cls.FORMAT!r}")
    _TARGETS[key] = cls
    return cls


def _import_format(fmt: str) -> None:
    if fmt not in FORMAT_MODULES:
        raise ExportError(f"Unknown export format {fmt!r}; choose from {', '.join(FORMAT_MODULES)}")
    try:
        importlib.import_module(FORMAT_MODULES[fmt])
    except ModuleNotFoundError as err:
        if err.name == FORMAT_MODULES[fmt]:
            raise ExportError(f"The {fmt} back-end ({FORMAT_MODULES[fmt]}) is not available in this version.") from err
        raise ExportError(f"The {fmt} back-end needs the package {err.name!r}, which is not installed.") from err


def get_target(fmt: str, precision: str) -> type[ExportTarget]:
    """The registered target for ``fmt`` x ``precision``; a clear error listing the choices otherwise."""
    _import_format(fmt)
    if (fmt, precision) not in _TARGETS:
        choices = sorted(p for f, p in _TARGETS if f == fmt)
        raise ExportError(f"No {fmt} target for precision {precision!r}; choose from {', '.join(choices)}")
    return _TARGETS[(fmt, precision)]


def all_targets() -> dict[tuple[str, str], type[ExportTarget]]:
    """Every registered target of every format whose back-end imports here."""
    for fmt in FORMAT_MODULES:
        try:
            _import_format(fmt)
        except ExportError:
            continue
    return dict(_TARGETS)


def format_targets(fmt: str) -> list[type[ExportTarget]]:
    """The registered targets of a format, default first then by precision (empty when unavailable)."""
    try:
        _import_format(fmt)
    except ExportError:
        return []
    found = [t for (f, _), t in _TARGETS.items() if f == fmt]
    return sorted(found, key=lambda t: not t.DEFAULT)  # stable: registration order after the default


def runner_kwargs(target: type[ExportTarget], **wanted: Any) -> dict[str, Any]:
    """The keyword arguments among ``wanted`` (not None) that the target's ``load_runner`` takes (e.g. ``threads``)."""
    import inspect

    params = inspect.signature(target.load_runner).parameters
    return {k: v for k, v in wanted.items() if v is not None and k in params}


def precisions(fmt: str) -> list[str]:
    """Precisions registered for a format (empty when its back-end is unavailable)."""
    try:
        _import_format(fmt)
    except ExportError:
        return []
    return sorted(p for f, p in _TARGETS if f == fmt)


def default_precision(fmt: str) -> str:
    """The precision a request of format ``fmt`` gets when it names none (the target marked ``DEFAULT``)."""
    _import_format(fmt)
    defaults = [p for (f, p), t in _TARGETS.items() if f == fmt and t.DEFAULT]
    if len(defaults) != 1:
        raise ExportError(f"format {fmt!r} declares no default precision; pass one of {', '.join(precisions(fmt))}")
    return defaults[0]
