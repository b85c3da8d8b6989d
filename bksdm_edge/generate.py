"""Text-to-image from an exported bundle, without PyTorch.

The bundle is verified (hashes, completeness) before anything is loaded; runners come
from the export registry, so every format whose back-end can run here works (ONNX via
onnxruntime, TFLite via LiteRT). Tokenizer, schedulers and image helpers are the numpy
ones of ``bksdm_edge.runtime``; the loop mirrors diffusers' ``StableDiffusionPipeline``
so that the same initial latents give the same image.

A bundle whose U-Net embeds the guidance scale (an LCM student: the manifest's
``guidance_embedding``) runs as diffusers' ``LatentConsistencyModelPipeline`` does: one
U-Net row per step (no negative branch), ``timestep_cond`` = the embedding of
guidance - 1. Every random number (initial latents, a stochastic scheduler's noise)
comes from one ``NoiseStream`` of the seed, as the Kotlin engine draws them.

A format with several run-time settings (OpenVINO: f32 and the bf16 hint) runs with the one asked for, or by
default (``auto``) with the fastest of those that passed the bundle's validation and run on this CPU, measured
on the bundle's U-Net once and cached (``choose_runtime``, ``runtime_speed``).
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import BksdmError, InputError, first_line
from .export.bundle import verify_bundle
from .export.registry import ExportTarget, get_target, runner_kwargs
from .export.tensor_io import from_runner_outputs, tensor_info_from_json, to_runner_inputs
from .runtime import (
    ClipTokenizer,
    NoiseStream,
    classifier_free_guidance,
    decoder_output_to_rgb,
    embedded_guidance,
    latents_for_decoder,
    scheduler_from_config,
    vae_decoder_kind,
)


@dataclass
class _Component:
    """A loaded bundle component that takes and returns canonical arrays, splitting rows to its batch."""

    name: str
    run_raw: Callable
    inputs: list
    outputs: list
    seconds: float = 0.0  # time spent in this component since the pipeline call began

    @property
    def batch(self) -> int | None:
        b = self.inputs[0].shape[0]
        return b if isinstance(b, int) else None

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        try:
            return self._run(*arrays)
        finally:
            self.seconds += time.perf_counter() - started

    def _run(self, *arrays: np.ndarray) -> np.ndarray:
        rows = arrays[0].shape[0]
        step = self.batch or rows
        padded = -rows % step  # e.g. one latent through a batch-2 decoder: repeat the last row, drop its output
        if padded:
            arrays = tuple(np.concatenate([a, np.repeat(a[-1:], padded, axis=0)]) for a in arrays)
        parts = []
        for i in range(0, rows + padded, step):
            feeds = to_runner_inputs(self.inputs, [a[i : i + step] for a in arrays])
            parts.append(from_runner_outputs(self.outputs, self.run_raw(feeds))[0])
        return np.concatenate(parts)[:rows]


PIPELINE_COMPONENTS = ("text_encoder", "unet", "vae_decoder")


@dataclass(frozen=True)
class RuntimeChoice:
    """The run-time setting a bundle is loaded with: its name (None for formats with one setting), the
    ``load_runner`` options, and why it was chosen (what ``generate`` prints)."""

    name: str | None
    options: dict[str, Any]
    reason: str = ""


def runtime_options(target: type[ExportTarget], name: str | None) -> dict[str, Any]:
    """``load_runner`` options of a run-time setting (the default: none)."""
    return {} if name == target.DEFAULT_RUNTIME else dict(target.RUNTIME_VARIANTS[name].runner_options)


def eligible_runtimes(target: type[ExportTarget], components: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """The run-time settings ``auto`` may choose (the default first, then every ``RUNTIME_VARIANTS`` entry that
    passed the bundle's validation for every component and that this machine can run) and, for the others, why
    not. Both empty for formats with one setting."""
    if target.DEFAULT_RUNTIME is None:
        return [], {}
    eligible, excluded = [target.DEFAULT_RUNTIME], {}
    for variant in target.RUNTIME_VARIANTS:
        outcomes = _validation_outcomes(components, variant)
        why = target.runtime_variant_unavailable(variant)
        if why is None and not all(r.get("checked") for r in outcomes):
            why = "not validated when this bundle was exported"
        elif why is None and not all(r.get("passed") for r in outcomes):
            why = "failed this bundle's validation"
        if why:
            excluded[variant] = why
        else:
            eligible.append(variant)
    return eligible, excluded


def _validation_outcomes(components: dict[str, Any], variant: str) -> list[dict]:
    return [(components[c].get("extra") or {}).get("runtime_validation", {}).get(variant, {"checked": False})
            for c in PIPELINE_COMPONENTS if c in components]


def choose_runtime(target: type[ExportTarget], components: dict[str, Any], requested: str | None = None, *,
                   fastest: Callable[[list[str]], tuple[str, str]] | None = None) -> RuntimeChoice:
    """The run-time setting to load a bundle with.

    Args:
        target: the bundle's export target.
        components: the manifest's ``components`` (their ``extra.runtime_validation`` outcomes).
        requested: None or ``"auto"``: the fastest of ``eligible_runtimes``; with one eligible setting that one,
            with several ``fastest(eligible)`` decides (``BundlePipeline`` measures them on the U-Net,
            ``runtime_speed.fastest``). A named setting is used if this machine can run it and the bundle's
            validation did not fail it (a bundle exported on a CPU without it has it unchecked: allowed).
        fastest: ``(eligible settings) -> (the fastest, why)``; needed when several are eligible.
    """
    names = [n for n in (target.DEFAULT_RUNTIME, *target.RUNTIME_VARIANTS) if n]
    if requested not in (None, "auto"):
        if requested not in names:
            raise BksdmError(f"{target.name()} bundles have no inference precision {requested!r}; choose from "
                             f"{', '.join(['auto', *names]) if names else 'auto (the format has one setting)'}")
        if requested != target.DEFAULT_RUNTIME:
            why = target.runtime_variant_unavailable(requested)
            if why:
                raise BksdmError(f"cannot run with inference precision {requested} here: {why}; use "
                                 f"{target.DEFAULT_RUNTIME} (or auto)")
            outcomes = _validation_outcomes(components, requested)
            failed = [r for r in outcomes if r.get("checked") and not r.get("passed")]
            if failed:
                raise BksdmError(f"this bundle failed its {requested} validation ({failed[0]['failures'][:1]}); "
                                 f"use {target.DEFAULT_RUNTIME} (or auto)")
        return RuntimeChoice(requested, runtime_options(target, requested), "as asked")
    eligible, excluded = eligible_runtimes(target, components)
    if not eligible:
        return RuntimeChoice(None, {})
    if len(eligible) == 1:
        others = "; ".join(f"{name}: {why}" for name, why in excluded.items())
        return RuntimeChoice(eligible[0], {}, f"auto: the only one eligible; {others}" if others else "auto")
    if fastest is None:
        raise TypeError(f"choose_runtime: {', '.join(eligible)} are all eligible; pass fastest= to decide")
    name, reason = fastest(eligible)
    return RuntimeChoice(name, runtime_options(target, name), reason)


class BundlePipeline:
    """A verified bundle, loaded: ``pipe(prompt, ...) -> (RGB uint8 HWC image, initial latents)``.

    Args:
        bundle: bundle folder (verified before anything is loaded).
        threads: CPU threads of the runtime (None: the runtime's default).
        inference_precision: run-time precision for formats that have several (OpenVINO: ``f32``/``bf16``);
            None/``auto`` = the fastest, measured on this bundle's U-Net, of those that passed the bundle's
            validation and run on this CPU (``choose_runtime``; the measurement is cached, ``runtime_speed``).
            The choice is in ``self.runtime``, why in ``self.runtime_reason``.

    After each call ``last_timings`` holds the seconds spent in each component (``text_encoder``, ``unet``,
    ``vae_decoder``), in the rest (``other``: tokenizer, scheduler, guidance, conversions) and in all (``total``).
    """

    def __init__(self, bundle: str | Path, *, threads: int | None = None, inference_precision: str | None = None):
        self.root = Path(bundle)
        self.manifest = verify_bundle(self.root)
        target = get_target(self.manifest["format"], self.manifest["precision"])
        why = target.runtime_unavailable()
        if why:
            raise BksdmError(f"cannot run a {target.name()} bundle here: {why}")
        try:
            self.vae_kind = vae_decoder_kind(self.manifest)
        except ValueError as err:
            raise BksdmError(f"{self.root}: {err}") from err
        missing = [c for c in PIPELINE_COMPONENTS if c not in self.manifest["components"]]
        if missing:
            raise BksdmError(f"{self.root} has no {', '.join(missing)}; text-to-image needs text_encoder, unet and "
                             "vae_decoder")
        # LCM students take the guidance scale as an input instead of a second (negative) U-Net row.
        self.guidance_embedding = self.manifest.get("guidance_embedding")
        choice = choose_runtime(target, self.manifest["components"], inference_precision,
                                fastest=lambda settings: self._fastest(target, settings, threads))
        self.runtime, self.runtime_reason = choice.name, choice.reason
        options = {**choice.options, **runner_kwargs(target, threads=threads)}
        self.components: dict[str, _Component] = {
            name: self._load(target, name, options) for name in PIPELINE_COMPONENTS}
        self.tokenizer = ClipTokenizer.from_bundle(self.root, self.manifest["tokenizer"])
        self.last_timings: dict[str, float] = {}

    def _load(self, target: type[ExportTarget], name: str, options: dict[str, Any]) -> _Component:
        entry = self.manifest["components"][name]
        return _Component(name, target.load_runner(self.root / entry["file"], **options),
                          [tensor_info_from_json(t) for t in entry["inputs"]],
                          [tensor_info_from_json(t) for t in entry["outputs"]])

    def _fastest(self, target: type[ExportTarget], settings: list[str], threads: int | None) -> tuple[str, str]:
        """The fastest of ``settings`` for this bundle's U-Net here, cached (``runtime_speed.fastest``)."""
        from . import runtime_speed

        inputs = self.unet_step_inputs()

        def load(setting: str) -> Callable[[], Any]:
            unet = self._load(target, "unet", {**runtime_options(target, setting),
                                                **runner_kwargs(target, threads=threads)})
            return lambda: unet(*inputs)

        return runtime_speed.fastest(settings, target.DEFAULT_RUNTIME, load,
                                     runtime_speed.identity(self.root / "manifest.json", threads))

    def unet_step_inputs(self, seed: int = 0) -> tuple[np.ndarray, ...]:
        """Seeded inputs of one U-Net row as a denoising step feeds it: latents, a mid-schedule timestep, text
        embeddings (and an LCM U-Net's guidance embedding). What ``auto`` times the run-time settings on."""
        noise = NoiseStream(seed)
        hidden = self.manifest["components"]["unet"]["inputs"][2]["shape"][-1]  # encoder_hidden_states' width
        arrays = (noise.normal(self.latent_shape()), np.full((1,), 500, dtype=np.float32),
                  noise.normal((1, self.manifest["tokenizer"]["max_length"], hidden)))
        if self.guidance_embedding is not None:
            arrays += (embedded_guidance(self.guidance_embedding, 7.5),)
        return arrays

    def latent_shape(self) -> tuple[int, ...]:
        img = self.manifest["image"]
        f = img["vae_scale_factor"]
        return (1, img["latent_channels"], img["height"] // f, img["width"] // f)

    def __call__(
        self,
        prompt: str,
        *,
        negative_prompt: str = "",
        steps: int | None = None,
        guidance: float = 7.5,
        seed: int = 0,
        scheduler: str | None = None,
        latents: np.ndarray | None = None,
        progress: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Generate one image.

        Args:
            prompt, negative_prompt: text (the negative prompt is the unconditional branch of CFG; an LCM bundle
                has none and refuses one).
            steps: denoising steps (None: the scheduler's default, 25; LCM 4). guidance: CFG scale (<= 1 disables CFG, as in diffusers); for an LCM bundle
                the guidance scale its U-Net embeds (as ``LatentConsistencyModelPipeline``'s ``guidance_scale``).
            seed: seed of the portable noise stream (``runtime.noise``): the initial latents when ``latents`` is
                None, then the noise a stochastic scheduler (``lcm``) draws between steps.
            scheduler: ``pndm``, ``ddim``, ``euler``, ``dpm++``, ``lcm`` or None for the bundle's own.
            latents: initial noise (1, C, h, w), before multiplying by the scheduler's init sigma
                (diffusers' ``latents=`` argument).
        Returns (image HWC uint8, the initial latents used).
        """
        from .checks import at_least

        at_least(steps, 1, "--steps")
        started = time.perf_counter()
        for c in self.components.values():
            c.seconds = 0.0
        image, latents = self._generate(prompt, negative_prompt, steps, guidance, seed, scheduler, latents, progress)
        total = time.perf_counter() - started
        self.last_timings = {name: c.seconds for name, c in self.components.items()}
        self.last_timings["other"] = total - sum(self.last_timings.values())
        self.last_timings["total"] = total
        return image, latents

    def _generate(self, prompt, negative_prompt, steps, guidance, seed, scheduler, latents, progress):
        m = self.manifest
        te, unet, dec = (self.components[c] for c in ("text_encoder", "unet", "vae_decoder"))
        embedded = self.guidance_embedding is not None
        if embedded and negative_prompt:
            raise BksdmError("this bundle's U-Net embeds the guidance scale (a latent consistency model): it has no "
                             "negative branch, so a negative prompt cannot be used; drop --negative-prompt")
        cfg = guidance > 1.0 and not embedded
        # 1. Text embeddings: [negative, prompt] rows, as diffusers concatenates them.
        texts = [negative_prompt, prompt] if cfg else [prompt]
        ids = np.array([self.tokenizer.encode(t) for t in texts], dtype=np.int64)
        embeds = te(ids)
        extra = (np.repeat(embedded_guidance(self.guidance_embedding, guidance), len(texts), axis=0),) if embedded else ()
        # 2. Initial latents, then the scheduler's noise, from one stream (diffusers: one generator).
        noise = NoiseStream(seed)
        if latents is None:
            latents = noise.normal(self.latent_shape())
        latents = np.asarray(latents, dtype=np.float32)
        if latents.shape != self.latent_shape():
            raise BksdmError(f"initial latents have shape {latents.shape}, this bundle needs {self.latent_shape()}")
        sched = scheduler_from_config(m["scheduler"], scheduler)
        try:
            sched.set_timesteps(steps or sched.default_steps)
        except ValueError as err:
            raise BksdmError(f"--steps {steps}: {err}") from err
        x = latents * np.float32(sched.init_noise_sigma)
        # 3. Denoising loop.
        timesteps = list(sched.timesteps)
        if progress:
            from tqdm.auto import tqdm

            timesteps = tqdm(timesteps, desc="denoising", leave=False)
        for t in timesteps:
            model_in = np.concatenate([x] * len(texts))
            model_in = sched.scale_model_input(model_in, t)
            tt = np.full((len(texts),), t, dtype=np.float32)
            pred = unet(model_in, tt, embeds, *extra)
            pred = classifier_free_guidance(pred[:1], pred[1:], guidance) if cfg else pred
            x = sched.step(pred, t, x, generator=noise)
        # 4. Decode.
        z = latents_for_decoder(x, m["latent_scaling_factor"], m.get("vae_decoder_input_scaled", False))
        image = dec(z)
        return decoder_output_to_rgb(image, m.get("vae_decoder_output_range", (-1, 1))), latents


def generate(
    bundle: str | Path,
    prompt: str,
    out: str | Path | None = None,
    *,
    latents_in: str | Path | None = None,
    latents_out: str | Path | None = None,
    threads: int | None = None,
    inference_precision: str | None = None,
    log: Callable[[str], None] | None = None,
    **kwargs: Any,
) -> np.ndarray:
    """Generate one image from a bundle; save it as PNG to ``out`` when given.

    Args:
        bundle: bundle folder (verified before loading).
        prompt: the text prompt.
        out: PNG path to write.
        latents_in / latents_out: .npy file to read / write the initial latents.
        threads, inference_precision: see ``BundlePipeline``.
        log: receives a line saying which run-time setting was chosen (formats with several).
        kwargs: ``BundlePipeline.__call__`` options (negative_prompt, steps, guidance, seed, scheduler).
    Returns the image as an HWC uint8 array.
    """
    from . import checks
    from .outputs import write_bytes_atomic

    # Everything named is checked before the bundle is loaded: a typo in --out never costs the denoising work.
    checks.bundle_folder(bundle)
    checks.at_least(kwargs.get("steps"), 1, "--steps")
    checks.finite(kwargs.get("guidance"), "--guidance")
    checks.existing_file(latents_in, "--latents-in", suffixes=(".npy",), what="latents file")
    checks.output_file(latents_out, "--latents-out", suffixes=(".npy",), what="latents file")
    checks.output_file(out, "--out", suffixes=checks.IMAGE_SUFFIXES, what="image")
    latents = _load_latents(latents_in) if latents_in else None
    checks.at_least(threads, 1, "--threads")
    pipe = BundlePipeline(bundle, threads=threads, inference_precision=inference_precision)
    if log and pipe.runtime:
        log(f"{pipe.manifest['format']} {pipe.manifest['precision']} bundle, inference precision {pipe.runtime} "
            f"({pipe.runtime_reason})")
    image, used = pipe(prompt, latents=latents, **kwargs)
    if latents_out:
        buf = io.BytesIO()
        np.save(buf, used)
        write_bytes_atomic(latents_out, buf.getvalue())
    if out:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format=Image.registered_extensions()[Path(out).suffix.lower()])
        write_bytes_atomic(out, buf.getvalue())
    return image


def _load_latents(path: str | Path) -> np.ndarray:
    """Initial latents from a .npy file (numbers only: pickled objects are refused)."""
    try:
        latents = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise InputError(f"--latents-in {path} is not a readable .npy array ({first_line(err)}); pass a file "
                         "written by --latents-out or numpy.save") from err
    if not isinstance(latents, np.ndarray) or latents.dtype.kind not in "fiu":
        raise InputError(f"--latents-in {path} holds {getattr(latents, 'dtype', type(latents))}, not numbers")
    return latents
