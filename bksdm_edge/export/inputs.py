"""The one place that prepares a component's inputs for an export: ``prepare_inputs``.

Per component it returns the seeded example that conversion traces, the validation sets (seeded,
plus real inputs from a recorded denoising trajectory) and, for targets that calibrate, calibration
samples. Real inputs come from ONE recording per export: the PyTorch pipeline runs the validation
prompt and the calibration prompts (``record_pipeline``), and the rows are split by run, so
calibration never sees the validation run (other prompts, other seeds), and batched to each
component's export shape. A real trajectory exercises value ranges that seeded random inputs miss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..loading import SDModel
from .components import COMPONENTS
from .request import Calibration, ShapeConfig, Validation


@dataclass
class InputSet:
    """One named set of canonical inputs (component input name -> array) for validation."""

    name: str
    inputs: dict[str, np.ndarray]


@dataclass
class ComponentInputs:
    """What an export feeds one component.

    Attributes:
        example: the seeded inputs conversion traces with (torch tensors; the same values as ``seeded:0``).
        validation: validation sets: seeded ones, then the recorded trajectory's (if recorded).
        calibration: calibration samples batched as exported (None when the target does not calibrate).
    """

    example: dict[str, torch.Tensor]
    validation: list[InputSet] = field(default_factory=list)
    calibration: list[dict[str, np.ndarray]] | None = None


@dataclass(frozen=True)
class PipelineRun:
    """One recorded pipeline run: a prompt, the seed of its initial latents, its steps, what to record."""

    prompt: str
    seed: int
    steps: int
    components: tuple[str, ...]


def seeded_input_sets(component: str, model: SDModel, shape: ShapeConfig, seeds=(0,)) -> list[InputSet]:
    """The component's seeded example inputs, one set per seed."""
    spec = COMPONENTS[component]
    return [
        InputSet(f"seeded:{seed}", {k: v.numpy() for k, v in spec.example_inputs(model, shape, seed).items()})
        for seed in seeds
    ]


def _rebatch(rows: list[dict[str, np.ndarray]], batch: int) -> list[dict[str, np.ndarray]]:
    """Group single-row inputs into batches of ``batch`` rows (cycling rows when there are too few)."""
    if len(rows) < batch:
        rows = [rows[i % len(rows)] for i in range(batch)]
    groups = [rows[i : i + batch] for i in range(0, len(rows) - batch + 1, batch)]
    return [{k: np.stack([r[k] for r in g]) for k in g[0]} for g in groups]


@torch.no_grad()
def record_pipeline(
    model: SDModel, height: int, width: int, runs: Sequence[PipelineRun], *, guidance_scale: float = 7.5,
    max_length: int = 77,
) -> list[dict[str, list]]:
    """Run the diffusers pipeline (classifier-free guidance) once per run and record component inputs.

    Returns, per run, a dict component -> rows (no batch axis), in the order the pipeline produced them:
    for the U-Net one list of rows per call (a scheduler may call it more often than ``steps``: PNDM
    makes steps + 1 calls), for the others a flat list. The U-Net and text encoder get an unconditional
    and a conditional row per call / prompt; the VAE decoder gets the final latents divided by the
    scaling factor; the VAE encoder gets the decoded image. A latent consistency model runs in diffusers'
    ``LatentConsistencyModelPipeline`` (``SDModel.to_pipeline``): one conditional U-Net row per call, with
    its ``timestep_cond`` (the embedded guidance scale).
    """
    pipe = model.to_pipeline()
    pipe.set_progress_bar_config(disable=True)
    calls: list[list[dict[str, np.ndarray]]] = []

    def hook(_module, args, kwargs):
        names = ("sample", "timestep", "encoder_hidden_states")
        values = dict(zip(names, args)) | {k: kwargs[k] for k in names if k in kwargs}
        x, t, ehs = (values[k] for k in names)
        t = torch.as_tensor(t, dtype=torch.float32).reshape(-1).expand(x.shape[0])
        cond = kwargs.get("timestep_cond")  # an LCM U-Net's guidance embedding (LatentConsistencyModelPipeline)
        calls.append([{"sample": x[i].float().numpy(), "timestep": np.float32(t[i]),
                       "encoder_hidden_states": ehs[i].float().numpy(),
                       **({"timestep_cond": cond[i].float().numpy()} if cond is not None else {})}
                      for i in range(x.shape[0])])

    recordings = []
    scale = model.vae.config.scaling_factor
    for run in runs:
        calls.clear()
        handle = pipe.unet.register_forward_pre_hook(hook, with_kwargs=True) if "unet" in run.components else None
        try:
            out = pipe(run.prompt, height=height, width=width, num_inference_steps=run.steps,
                       guidance_scale=guidance_scale, generator=torch.Generator().manual_seed(run.seed),
                       output_type="latent")
        finally:
            if handle is not None:
                handle.remove()
        rows: dict[str, list] = {}
        if "text_encoder" in run.components:
            rows["text_encoder"] = [
                {"input_ids": model.tokenizer(text, padding="max_length", max_length=max_length, truncation=True,
                                              return_tensors="np").input_ids[0].astype(np.int32)}
                for text in ("", run.prompt)
            ]
        if "unet" in run.components:
            rows["unet"] = list(calls)
        latent = {"latent_sample": (out.images[0] / scale).float().numpy()}
        if "vae_decoder" in run.components:
            rows["vae_decoder"] = [latent]
        if "vae_encoder" in run.components:
            image = model.vae.decode(torch.from_numpy(latent["latent_sample"])[None]).sample[0].clamp(-1, 1)
            rows["vae_encoder"] = [{"sample": image.numpy()}]
        recordings.append(rows)
    return recordings


def trajectory_sets(component: str, rows: list, batch: int, max_unet_steps: int = 3) -> list[InputSet]:
    """Validation sets from one recorded run: the U-Net at its first, middle and last call."""
    if component == "unet":
        picked = sorted({0, len(rows) // 2, len(rows) - 1})[:max_unet_steps]
        return [InputSet(f"trajectory:step{s}" + (f":{j}" if j else ""), b)
                for s in picked for j, b in enumerate(_rebatch(rows[s], batch))]
    return [InputSet("trajectory" + (f":{j}" if j else ""), b) for j, b in enumerate(_rebatch(rows, batch))]


def calibration_samples(component: str, recordings: list[dict[str, list]], batch: int) -> list[dict[str, np.ndarray]]:
    """Every recorded row of ``component`` over the calibration runs, batched as exported."""
    if component == "unet":  # call by call across the runs (every run's first call, then every second ...)
        calls = [rows.get("unet", []) for rows in recordings]
        flat = [r for k in range(max(map(len, calls), default=0)) for run in calls if k < len(run) for r in run[k]]
    else:
        flat = [r for rows in recordings for r in rows.get(component, [])]
    return _rebatch(flat, batch)


def prepare_inputs(
    model: SDModel,
    shapes: Mapping[str, ShapeConfig],
    *,
    validation: Validation | None = None,
    calibration: Calibration | None = None,
    calibrate: Sequence[str] = (),
    seeds: Sequence[int] = (0,),
    progress: bool = False,
) -> dict[str, ComponentInputs]:
    """Inputs of every component in ``shapes`` for one export (or re-validation).

    Args:
        model: the loaded source model.
        shapes: component -> its export shape (``ExportRequest.component_shape``); all share height/width.
        validation: record this run for validation (None: seeded validation sets only, e.g. when the
            exported model cannot run here and only declared shapes are checked).
        calibration: prompts/steps/seed of the calibration runs, used for the ``calibrate`` components.
        calibrate: components whose target needs calibration samples.
        seeds: seeds of the seeded validation sets (the first one is also the conversion example).
        progress: a progress bar over the recorded runs.
    """
    components = tuple(shapes)
    first = next(iter(shapes.values()))
    calibrate = tuple(c for c in calibrate if c in shapes)
    runs = []
    if validation is not None:
        runs.append(PipelineRun(validation.prompt, validation.seed, validation.steps, components))
    if calibrate:
        prompts = calibration_prompts(calibration, validation)
        runs += [PipelineRun(p, calibration.seed + i, calibration.steps, calibrate) for i, p in enumerate(prompts)]
    recordings = record_pipeline(model, first.height, first.width, _progress(runs, progress),
                                 max_length=first.max_length) if runs else []
    validation_rows = recordings[0] if validation is not None else {}
    calibration_rows = recordings[1:] if validation is not None else recordings

    prepared = {}
    for name, shape in shapes.items():
        spec = COMPONENTS[name]
        sets = seeded_input_sets(name, model, shape, seeds)
        if name in validation_rows:
            sets += trajectory_sets(name, validation_rows[name], shape.batch)
        samples = None
        if name in calibrate:
            samples = calibration_samples(name, calibration_rows, shape.batch)
            if name == "vae_decoder":
                samples += latent_prior_samples(model, shape, len(samples), seed=calibration.seed)
        prepared[name] = ComponentInputs(
            example=spec.example_inputs(model, shape, seeds[0]), validation=sets, calibration=samples,
        )
    return prepared


# Seeds of the latent-prior draws start here (+ the calibration seed): far from the validation seeds (0, 1, ...).
PRIOR_SEED_OFFSET = 500_000


def latent_prior_samples(model: SDModel, shape: ShapeConfig, count: int, *, seed: int) -> list[dict[str, np.ndarray]]:
    """``count`` VAE-decoder inputs drawn from the VAE's latent prior, N(0, 1) / scaling_factor.

    The decoder is calibrated on these AND on the final latents of the calibration runs. The
    scaling factor is defined so that a trained SD U-Net's latents have unit variance, so the prior
    is the distribution the decoder meets in practice; the latents of the model being exported can
    sit far from it (a random-weight or undertrained U-Net under classifier-free guidance drifts:
    builtin:mini-sd's final latents have 4.7x the prior's scale). Static int8 ranges taken from one
    distribution clip the other: the decoder's GroupNorm statistics scale with 1/std of its input,
    so ranges calibrated on the drifted latents clipped every rsqrt(variance) for prior latents
    (TFLite w8a8 decoder cosine 0.57 on builtin:mini-sd; 0.95 calibrated on both, 0.996 unchanged on
    the recorded trajectory). Seeds differ from the validation's seeded inputs.
    """
    spec = COMPONENTS["vae_decoder"]
    return [{k: v.numpy() for k, v in spec.example_inputs(model, shape, PRIOR_SEED_OFFSET + seed + i).items()}
            for i in range(count)]


def _progress(runs: list, enabled: bool) -> Any:
    if not enabled or not runs:
        return runs
    import sys

    from tqdm.auto import tqdm

    return tqdm(runs, desc="recording pipeline inputs", leave=False, file=sys.stderr)


def calibration_prompts(calibration: Calibration, validation: Validation | None = None) -> list[str]:
    """The prompts calibration records: the list's first ``calibration.count``, never the validation prompt
    (calibration must not see the text embedding it is validated on)."""
    prompts = [p for p in read_prompts(calibration.prompts) if validation is None or p != validation.prompt]
    if not prompts:
        from ..errors import BksdmError

        raise BksdmError(f"no calibration prompts left in {calibration.prompts or 'the default list'} besides the "
                         "validation prompt; add other prompts")
    return prompts[: calibration.count] if calibration.count else prompts


def read_prompts(path=None) -> list[str]:
    """Prompts from a text file (one per line, '#' comments), or the packaged default list."""
    from importlib import resources
    from pathlib import Path

    text = Path(path).read_text() if path else (resources.files("bksdm_edge") / "data" / "calibration_prompts.txt").read_text()
    prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if not prompts:
        from ..errors import BksdmError

        raise BksdmError(f"no prompts in {path or 'the default calibration list'}")
    return prompts
