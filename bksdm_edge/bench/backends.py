"""Benchmark back-ends as a registry: PyTorch eager, and one back-end per export format.

A back-end turns a scenario's component into an on-disk *artifact* (``prepare``, run once
per model/component/format/precision/shape in its own process and cached) and loads that
artifact into something callable (``load``, timed in the measuring process). Export
back-ends are generated from ``bksdm_edge.export.registry``: the harness never branches
on the format, and a format or precision the registry does not (yet) have becomes a row
whose ``error`` says so.

Plugins (e.g. test fakes) register more back-ends with ``@register_backend``; list their
module in the config's ``plugins`` so the worker processes import them too.

No torch import at module level: the parent process and ONNX/LiteRT workers stay torch-free.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np

from .scenario import LCM_SUFFIX, TEACHER, Scenario, split_lcm

ARTIFACT_META = "artifact.json"
INPUTS_FILE = "inputs.npz"


class BackendUnavailable(Exception):
    """The scenario cannot run on this back-end (message goes to the ``error`` column)."""


@dataclass
class Loaded:
    """A loaded model: ``feed`` converts numpy inputs once, ``run`` is the timed call, ``sync`` waits for the device.

    ``split`` (pipelines): seconds the last ``run`` spent per component (``text_encoder``, ``unet``,
    ``vae_decoder``); the worker records their medians and shares.
    ``reported_s``: for a back-end that cannot isolate the measured call from a larger run (a peer's whole
    pipeline), the time of that call in the last run as the engine itself reports it; the row's times are then
    these, and the wall times of the runs are kept apart.
    """

    run: Callable[[Any], Any]
    feed: Callable[[dict[str, np.ndarray]], Any] = lambda feeds: feeds
    sync: Callable[[], None] = lambda: None
    info: dict[str, Any] | None = None
    reported_s: Callable[[], float] | None = None
    split: Callable[[], dict[str, float]] | None = None


# The components whose share of a generate run is reported.
SPLIT_COMPONENTS = ("text_encoder", "unet", "vae_decoder")


class ComponentClock:
    """Seconds spent in named callables of a diffusers pipeline (wrapped in place), reset per run."""

    def __init__(self, sync: Callable[[], None] = lambda: None):
        self.seconds = dict.fromkeys(SPLIT_COMPONENTS, 0.0)
        self._sync = sync

    def wrap(self, owner, attribute: str, component: str) -> None:
        original = getattr(owner, attribute)

        def timed(*args, **kwargs):
            self._sync()
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self._sync()
                self.seconds[component] += time.perf_counter() - start

        setattr(owner, attribute, timed)

    def reset(self) -> None:
        self.seconds = dict.fromkeys(SPLIT_COMPONENTS, 0.0)


class Backend:
    """Base class of a benchmark back-end."""

    NAME: ClassVar[str]
    DEVICES: ClassVar[tuple[str, ...]] = ("cpu",)  # device kinds (prefix before ':') it runs on locally
    # Imported before the load clock starts: library import time is not model load time.
    RUNTIME_MODULES: ClassVar[tuple[str, ...]] = ()
    # False for back-ends that do not convert the component (test fakes, peers that build their own artifact).
    NEEDS_MODULE: ClassVar[bool] = True
    # True for another engine than ours (stable-diffusion.cpp): its rows are marked as peers in the report.
    PEER: ClassVar[bool] = False

    def precisions(self) -> list[str]:
        raise NotImplementedError

    def artifact_precision(self, precision: str) -> str:
        """The precision of the artifact on disk (PyTorch casts at load time, so it stores fp32)."""
        return precision

    def artifact_format(self) -> str:
        return self.NAME

    def check(self, s: Scenario) -> None:
        """Raise ``BackendUnavailable`` when the scenario cannot run; called in the parent before any work."""
        available = self.precisions()
        if not available:
            raise BackendUnavailable(f"{self.NAME}: no precision is available here")
        if s.precision not in available:
            raise BackendUnavailable(
                f"{self.NAME} has no precision {s.precision!r} here; available: {', '.join(available)}")
        kind = s.device.split(":")[0]
        if kind not in self.DEVICES and kind != "android":
            raise BackendUnavailable(f"{self.NAME} does not run on device {s.device!r} (runs on {', '.join(self.DEVICES)})")
        if s.component == "generate":
            guidance_of(s)

    def prepare(self, s: Scenario, module, example_inputs: dict[str, Any], output_names, out_dir: Path) -> dict:
        """Write the artifact for ``s`` into ``out_dir``; return {"files": [...], "main": path, "extra": {...}}."""
        raise NotImplementedError

    def load(self, s: Scenario, artifact_dir: Path, meta: dict) -> Loaded:
        raise NotImplementedError

    def prepare_pipeline(self, s: Scenario, out_dir: Path) -> dict:
        """Write a whole text-to-image pipeline for ``generate`` into ``out_dir`` (same return as ``prepare``)."""
        raise BackendUnavailable(f"{self.NAME} has no text-to-image pipeline")

    def load_pipeline(self, s: Scenario, artifact_dir: Path, meta: dict) -> Loaded:
        """The pipeline as a Loaded whose ``run`` generates one image of ``s.steps`` steps."""
        raise BackendUnavailable(f"{self.NAME} has no text-to-image pipeline")


# ``generate`` scenarios: one fixed prompt and seed; batch 2 = classifier-free guidance.
BENCH_PROMPT = "a photograph of an astronaut riding a horse"
GUIDANCE_BY_BATCH = {1: 1.0, 2: 7.5}


def guidance_of(s: Scenario) -> float:
    if s.batch not in GUIDANCE_BY_BATCH:
        raise BackendUnavailable(f"generate runs batch 1 (no guidance) or 2 (classifier-free guidance), not {s.batch}")
    return GUIDANCE_BY_BATCH[s.batch]


def _torch_dtype(precision: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


# What a text-to-image pipeline needs from the source (``loading.load_model`` components).
PIPELINE_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def _files_under(root: Path, base: Path) -> list[str]:
    return sorted(str(f.relative_to(base)) for f in root.rglob("*") if f.is_file())


_BACKENDS: dict[str, Backend] = {}
# Back-ends in their own modules (they import this one, so this one names them and imports them on first lookup:
# the arrows keep pointing one way). Each registers itself with @register_backend when imported.
PLUGIN_MODULES = ("bksdm_edge.bench.ov_backend", "bksdm_edge.bench.peers")
_plugins_loaded = False


def _load_plugins() -> None:
    global _plugins_loaded
    if not _plugins_loaded:
        _plugins_loaded = True
        for name in PLUGIN_MODULES:
            importlib.import_module(name)


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Class decorator: register a back-end instance under ``cls.NAME``."""
    _BACKENDS[cls.NAME] = cls()
    return cls


def get_backend(name: str) -> Backend:
    _load_plugins()
    if name not in _BACKENDS:
        raise BackendUnavailable(f"unknown backend {name!r}; registered: {', '.join(sorted(_BACKENDS))}")
    return _BACKENDS[name]


def backend_names() -> list[str]:
    _load_plugins()
    return sorted(_BACKENDS)


# ---------------------------------------------------------------------------------------------
# PyTorch eager


@register_backend
class TorchBackend(Backend):
    """PyTorch eager on the component wrapper that every export format also converts.

    The artifact is the pickled fp32 wrapper (``torch.save``); fp16/bf16 cast it at load.
    """

    NAME = "pytorch"
    DEVICES = ("cpu", "cuda")
    RUNTIME_MODULES = ("torch", "diffusers", "transformers")
    FILE = "module.pt"

    def precisions(self) -> list[str]:
        return ["fp32", "fp16", "bf16"]

    def artifact_precision(self, precision: str) -> str:
        return "fp32"

    def check(self, s: Scenario) -> None:
        super().check(s)
        if s.device.startswith("android"):
            raise BackendUnavailable("PyTorch eager does not run on android devices; use litert or onnxruntime")
        if s.precision == "fp16" and not s.device.startswith("cuda"):
            raise BackendUnavailable("PyTorch fp16 is for CUDA; on CPU use bf16")
        if s.is_bundle:
            raise BackendUnavailable("an exported bundle runs on its format's backend (onnxruntime, litert, coreml), "
                                     "not PyTorch")

    def prepare(self, s, module, example_inputs, output_names, out_dir):
        import torch

        path = out_dir / self.FILE
        torch.save(module, path)
        return {"files": [self.FILE], "main": self.FILE, "extra": {}}

    def load(self, s, artifact_dir, meta):
        import torch

        torch.set_num_threads(s.threads)
        dtype = _torch_dtype(s.precision)
        device = torch.device(s.device)
        module = torch.load(artifact_dir / meta["main"], weights_only=False, map_location=device)
        module = module.to(dtype).eval()
        cuda = device.type == "cuda"

        def feed(feeds):
            return {k: torch.from_numpy(v).to(device=device, dtype=dtype if v.dtype.kind == "f" else None)
                    for k, v in feeds.items()}

        @torch.inference_mode()
        def run(inputs):
            return module(**inputs)

        return Loaded(run=run, feed=feed, sync=torch.cuda.synchronize if cuda else (lambda: None),
                      info={"torch_threads": torch.get_num_threads()})

    def prepare_pipeline(self, s, out_dir):
        pipe = load_scenario_model(s, PIPELINE_PARTS).to_pipeline()  # an LCM model: LatentConsistencyModelPipeline
        pipe.save_pretrained(out_dir / "pipeline", safe_serialization=True)
        return {"files": _files_under(out_dir / "pipeline", out_dir), "main": "pipeline",
                "extra": {"pipeline": f"diffusers {type(pipe).__name__}"}}

    def load_pipeline(self, s, artifact_dir, meta):
        import torch
        from diffusers import DiffusionPipeline

        torch.set_num_threads(s.threads)
        dtype = _torch_dtype(s.precision)
        # The class saved in model_index.json (StableDiffusionPipeline, or LatentConsistencyModelPipeline).
        pipe = DiffusionPipeline.from_pretrained(artifact_dir / meta["main"], torch_dtype=dtype,
                                                 local_files_only=True).to(s.device)
        pipe.set_progress_bar_config(disable=True)
        guidance = guidance_of(s)

        @torch.inference_mode()
        def run(_):
            return pipe(BENCH_PROMPT, height=s.resolution, width=s.resolution, num_inference_steps=s.steps,
                        guidance_scale=guidance, generator=torch.Generator("cpu").manual_seed(0),
                        output_type="np").images

        cuda = s.device.startswith("cuda")
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        clock = ComponentClock(sync)
        for owner, attribute, component in ((pipe.text_encoder, "forward", "text_encoder"),
                                            (pipe.unet, "forward", "unet"), (pipe.vae, "decode", "vae_decoder")):
            clock.wrap(owner, attribute, component)

        def timed_run(feeds):
            clock.reset()
            return run(feeds)

        return Loaded(run=timed_run, sync=sync, split=lambda: dict(clock.seconds),
                      info={"torch_threads": torch.get_num_threads(), "guidance": guidance, "steps": s.steps})


# ---------------------------------------------------------------------------------------------
# Export formats, through the export registry


class ExportBackend(Backend):
    """A runtime for one export format; precisions are whatever the export registry has."""

    FORMAT: ClassVar[str]

    def artifact_format(self) -> str:
        return self.FORMAT

    def precisions(self) -> list[str]:
        from ..export import registry

        return registry.precisions(self.FORMAT)

    def check(self, s: Scenario) -> None:
        from ..export import registry

        if s.is_bundle:
            manifest = _manifest(s)
            if manifest["format"] != self.FORMAT:
                raise BackendUnavailable(f"{s.model} is a {manifest['format']} bundle; {self.NAME} runs {self.FORMAT}")
            if manifest["precision"] != s.precision:
                raise BackendUnavailable(f"{s.model} holds {manifest['precision']} models; set precision: "
                                         f"{manifest['precision']} for this scenario")
            if s.component != "generate" and s.component not in manifest["components"]:
                raise BackendUnavailable(f"{s.model} has no {s.component} (it has "
                                         f"{', '.join(manifest['components'])})")
        if s.options.get("export") and (s.is_bundle or s.component == "generate"):
            raise BackendUnavailable("export options apply to exporting a single component, not to a bundle "
                                     "or to generate")
        try:
            registry.get_target(self.FORMAT, s.precision)
        except Exception as err:  # ExportError: not written yet / missing package / no such precision
            raise BackendUnavailable(f"not exportable yet: {err}") from None
        super().check(s)
        target = registry.get_target(self.FORMAT, s.precision)
        if s.component != "generate" and s.component not in target.COMPONENTS:
            raise BackendUnavailable(f"{target.name()} cannot export {s.component}")
        if not s.device.startswith("android"):
            why = target.runtime_unavailable()
            if why:
                raise BackendUnavailable(f"{target.name()} exports here but cannot run here: {why}")

    def prepare(self, s, module, example_inputs, output_names, out_dir):
        from ..export import registry

        target = registry.get_target(self.FORMAT, s.precision)
        options = target.options(s.component)
        options.update(s.options.get("export", {}))
        calibration = None
        if s.component in target.NEEDS_CALIBRATION:
            calibration = s.options["_calibration"]
        converted = target.convert(module, example_inputs, list(output_names), out_dir, s.precision,
                                   calibration=calibration, options=options)
        files = [str(Path(f).resolve().relative_to(out_dir.resolve())) for f in converted.files]
        main = str(Path(converted.path).resolve().relative_to(out_dir.resolve()))
        return {"files": files, "main": main, "extra": {**converted.extra, "target": target.name(),
                                                         "options": {k: v for k, v in options.items()}}}

    def load(self, s, artifact_dir, meta):
        from ..export import registry

        target = registry.get_target(self.FORMAT, s.precision)
        kwargs = registry.runner_kwargs(target, threads=s.threads, **s.options.get("runner", {}))
        runner = target.load_runner(artifact_dir / meta["main"], **kwargs)
        return Loaded(run=runner)

    def prepare_pipeline(self, s, out_dir):
        from ..export.pipeline import ExportRequest, export_bundle

        model = load_scenario_model(s, PIPELINE_PARTS)
        request = ExportRequest(out=out_dir / "bundle", model=s.source, vae=s.vae, format=self.FORMAT,
                                precision=s.precision, height=s.resolution, width=s.resolution, batch=s.batch,
                                overwrite=True, progress=False)
        bundle = export_bundle(request, model=model)
        return {"files": _files_under(bundle, out_dir), "main": "bundle", "extra": {"bundle": str(bundle)}}

    def load_pipeline(self, s, artifact_dir, meta):
        from ..export import registry
        from ..generate import BundlePipeline

        # A row measures one named run-time setting (the target's default unless the scenario names one), never
        # generate's auto choice, so that a row means the same thing on every machine.
        target = registry.get_target(self.FORMAT, s.precision)
        pipe = BundlePipeline(artifact_dir / meta["main"], threads=s.threads,
                              inference_precision=s.options.get("runner", {}).get("inference_precision")
                              or target.DEFAULT_RUNTIME)
        guidance = guidance_of(s)

        def run(_):
            return pipe(BENCH_PROMPT, steps=s.steps, guidance=guidance, seed=0)[0]

        return Loaded(run=run, split=lambda: {c: pipe.last_timings[c] for c in SPLIT_COMPONENTS},
                      info={"guidance": guidance, "steps": s.steps, "runtime": pipe.runtime})

    def prepare_bundle(self, s, out_dir):
        """A user's bundle is measured as it is: the artifact points into it, nothing is exported."""
        root = Path(s.model).resolve()
        manifest = _manifest(s)
        if s.component == "generate":
            files = sorted(str(f) for f in root.rglob("*") if f.is_file())
            return {"files": files, "main": str(root), "extra": {"bundle": str(root)}}, {}
        entry = manifest["components"][s.component]
        return ({"files": [str(root / entry["file"])], "main": str(root / entry["file"]),
                 "extra": {"bundle": str(root), "precision": manifest["precision"]}},
                bundle_inputs(entry["inputs"], batch=s.batch))


@register_backend
class OnnxRuntimeBackend(ExportBackend):
    NAME = "onnxruntime"
    FORMAT = "onnx"
    RUNTIME_MODULES = ("onnxruntime", "bksdm_edge.export.onnx")


@register_backend
class LiteRTBackend(ExportBackend):
    NAME = "litert"
    FORMAT = "tflite"
    RUNTIME_MODULES = ("ai_edge_litert.interpreter", "bksdm_edge.export.tflite")


@register_backend
class CoreMLBackend(ExportBackend):
    NAME = "coreml"
    FORMAT = "coreml"
    RUNTIME_MODULES = ("coremltools", "bksdm_edge.export.coreml")


# ---------------------------------------------------------------------------------------------
# artifacts


def artifact_dir(cache: Path, s: Scenario, backend: Backend) -> Path:
    """Where the artifact of ``s`` lives: shared by scenarios that differ only in threads/repeats/device."""
    source = s.source.replace(":", "_").replace("/", "_")
    base, lcm = split_lcm(s.model)
    suffix = LCM_SUFFIX if lcm else ""
    model = s.model
    if s.is_bundle:
        model = f"bundle_{Path(s.model).resolve().name}_{_folder_key(Path(s.model))}"
    elif Path(base).is_file():  # a plan file: keyed by its contents, so an edited plan is rebuilt
        digest = hashlib.sha256(Path(base).read_bytes()).hexdigest()[:12]
        model = f"plan_{Path(base).stem}_{digest}{suffix}"
    elif base != TEACHER and Path(base).is_dir():  # a student folder: keyed by its files, so a re-trained student is re-exported
        model = f"folder_{Path(base).name}_{_folder_key(Path(base))}{suffix}"
    elif "/" in s.model:
        model = "folder_" + Path(s.model).name
    variant = f"+{s.variant}" if s.variant and s.options.get("export") else ""
    if s.vae != TEACHER:  # another decoder, another artifact
        model += "+vae_" + (s.vae if "/" not in s.vae else "folder_" + Path(s.vae).name)
    # A pipeline does not depend on the step count (it is a run-time argument).
    return (cache / source / model / s.component
            / f"{backend.artifact_format()}-{backend.artifact_precision(s.precision)}{variant}"
            / f"{s.resolution}px-b{s.batch}")


def _folder_key(folder: Path) -> str:
    """A short digest of a folder's path and its files' names, sizes and modification times: a student or bundle
    that was re-trained or re-exported in place gets a new artifact instead of a stale cached one."""
    folder = folder.resolve()
    stats = sorted((str(f.relative_to(folder)), f.stat().st_size, f.stat().st_mtime_ns)
                   for f in folder.rglob("*") if f.is_file())
    return hashlib.sha256(repr((str(folder), stats)).encode()).hexdigest()[:10]


def _manifest(s: Scenario) -> dict:
    from .scenario import BUNDLE_MANIFEST

    return json.loads((Path(s.model) / BUNDLE_MANIFEST).read_text())


def bundle_inputs(infos: list[dict], seed: int = 0, batch: int = 1) -> dict[str, np.ndarray]:
    """Seeded feeds in a bundle component's own shapes and dtypes (latency does not depend on the values); a named
    (dynamic) leading axis, e.g. a U-Net's batch axis, gets ``batch`` rows."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for info in infos:
        dtype = np.dtype(info["dtype"])
        shape = tuple(d if isinstance(d, int) or i else batch for i, d in enumerate(info["shape"]))
        if np.issubdtype(dtype, np.integer):
            high = 49407 if "ids" in info["name"] else int(np.iinfo(dtype).max)
            low = 0 if "ids" in info["name"] else int(np.iinfo(dtype).min)
            feeds[info["name"]] = rng.integers(low, high, size=shape, endpoint=True).astype(dtype)
        elif "timestep" in info["name"]:
            feeds[info["name"]] = np.full(shape, 500, dtype=dtype)
        else:
            feeds[info["name"]] = rng.standard_normal(shape).astype(dtype)
    return feeds


def load_scenario_model(s: Scenario, parts: tuple[str, ...]):
    """The scenario's SD model: the source pipeline with its U-Net replaced by the student (variant, plan file or
    student folder), made a latent consistency model for ``+lcm`` models."""
    from ..loading import load_model

    name, lcm = split_lcm(s.model)
    folder = name if name != TEACHER and Path(name).is_dir() else None
    model = load_model(s.source, unet=folder, vae=s.vae, components=parts)
    if name != TEACHER and folder is None and "unet" in parts:  # a built-in plan name or a plan file
        from ..student import build_student

        model.unet, _ = build_student(model.unet, name)
    if lcm and "unet" in parts:
        from ..distill.config import LcmConfig
        from ..distill.lcm import as_lcm

        as_lcm(model, LcmConfig().time_cond_proj_dim)
        if model.scheduler is not None:
            # A timing stand-in whose U-Net was never distilled for LCM (random or epsilon weights): its x_0 estimate
            # at t ~ 999 divides by sqrt(alpha_bar) ~ 0.07, so the latents grow to std ~17 in 4 steps and int8
            # calibration/validation would see values no trained LCM produces. Clipping x_0 to [-4, 4] (LCMScheduler's
            # clip_sample, one elementwise op per step; a unit-variance latent's range) keeps them in a trained model's
            # range (std <= 3 over 4 steps, like the PNDM trajectory of the same weights); the cost is unchanged.
            model.scheduler.register_to_config(clip_sample=True, clip_sample_range=4.0)
    return model


def read_meta(path: Path) -> dict | None:
    f = path / ARTIFACT_META
    return json.loads(f.read_text()) if f.exists() else None


def build_module(s: Scenario):
    """The scenario's component wrapper (fp32, CPU) and its seeded example inputs (torch)."""
    from ..export.components import COMPONENTS, ShapeConfig

    spec = COMPONENTS[s.component]
    parts = {"unet": ("unet", "vae"), "text_encoder": ("text_encoder",),
             "vae": ("vae",)}[spec.needs]
    model = load_scenario_model(s, parts)
    shape = ShapeConfig(height=s.resolution, width=s.resolution, batch=s.batch)
    module = spec.module(model)
    inputs = spec.example_inputs(model, shape, seed=0)
    calibration = [{k: v.numpy() for k, v in spec.example_inputs(model, shape, seed=seed).items()}
                   for seed in range(1, 1 + s.calibration_samples)]
    return module, inputs, spec.output_names, calibration


def prepare_artifact(s: Scenario, cache: Path) -> dict:
    """Build the component and write its artifact (called in a worker process)."""
    backend = get_backend(s.backend)
    out = artifact_dir(cache, s, backend)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    build_s = 0.0
    if s.is_bundle:  # measured as it is: nothing to build or export
        info, inputs = backend.prepare_bundle(s, out)
    elif s.component == "generate":  # the backend builds and writes the whole pipeline
        info, inputs = backend.prepare_pipeline(s, out), {}
    else:
        if backend.NEEDS_MODULE:
            module, inputs, output_names, calibration = build_module(s)
        else:
            module, inputs, output_names, calibration = None, {}, (), []
        build_s = time.perf_counter() - t0
        from dataclasses import replace

        s2 = replace(s, options={**s.options, "_calibration": calibration})
        t0 = time.perf_counter()
        info = backend.prepare(s2, module, inputs, output_names, out)
    info["export_s"] = time.perf_counter() - t0
    info["build_s"] = build_s
    np.savez(out / INPUTS_FILE, **{k: np.asarray(v) for k, v in inputs.items()})
    info["size_bytes"] = sum((out / f).stat().st_size for f in info["files"])
    (out / ARTIFACT_META).write_text(json.dumps(info, indent=2, default=str))
    return info

