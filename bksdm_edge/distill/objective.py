"""What a distillation objective contributes to the shared training loop, and the registry of objectives.

``train.distill`` owns everything objectives have in common (accelerate, data and cache, latents, optimizer,
LR schedule, EMA, checkpoints and exact resume, logging, validation images, final outputs). An objective
owns what differs: how the student is initialised, which frozen networks it needs, the loss of one
micro-batch, what happens after each optimizer step, and any extra outputs. ``kd`` (the BK-SDM paper) and
``lcm`` (latent consistency distillation) are the two registered here.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch

from ..errors import BksdmError
from ..student import StudentReport
from .config import DEFAULT_VALIDATION_STEPS, DistillConfig


class DistillError(BksdmError, ValueError):
    pass


@dataclass
class TrainContext:
    """What the loop has set up when an objective is asked to build its parts.

    Attributes:
        config: the run.
        model: the teacher pipeline (``SDModel``: ``unet`` is the frozen teacher; VAE / text encoder / tokenizer
            when loaded).
        noise_scheduler: a ``DDPMScheduler`` with the teacher's noise schedule and parameterisation.
        device / weight_dtype: where frozen networks run and their dtype (mixed precision).
        accelerator: the ``accelerate.Accelerator`` (autocast, process index).
    """

    config: DistillConfig
    model: Any
    noise_scheduler: Any
    device: torch.device
    weight_dtype: torch.dtype
    accelerator: Any


class Objective:
    """Base class. Subclasses set ``name`` and ``loss_names`` (the first is the optimised total, "loss") and
    implement ``build_student`` and ``losses``."""

    name: ClassVar[str]
    loss_names: ClassVar[tuple[str, ...]]
    # Model components loaded besides the U-Net and scheduler even when a latent cache makes them optional.
    always_needs: ClassVar[tuple[str, ...]] = ()
    # The run folders of the trained student and of its EMA copy.
    output_dirs: ClassVar[tuple[str, str]] = ("unet", "unet_ema")

    def __init__(self, config: DistillConfig):
        self.config = config
        self.check()

    def check(self) -> None:
        """Refuse bad options before anything is loaded (raise ``DistillError``)."""

    def teacher_unet_source(self) -> str | None:
        """A U-Net folder that replaces the teacher pipeline's own U-Net (None: keep it)."""
        return None

    def build_student(self, ctx: TrainContext) -> tuple[torch.nn.Module, StudentReport]:
        """The trainable student (float32, on the CPU) and the report saved with it."""
        raise NotImplementedError

    def setup(self, ctx: TrainContext, student: torch.nn.Module) -> None:
        """Build frozen helpers (target networks, solver tables) once the student exists, before ``prepare``."""

    def checkpoint_objects(self) -> list[Any]:
        """Objects with ``state_dict``/``load_state_dict`` saved in every checkpoint (after the loop's own)."""
        return []

    def session(self, ctx: TrainContext, inner: torch.nn.Module) -> contextlib.AbstractContextManager:
        """A context held around the whole loop (KD: its feature hooks); ``inner`` is the unwrapped student."""
        return contextlib.nullcontext()

    def losses(self, ctx: TrainContext, student: torch.nn.Module, latents: torch.Tensor, text: torch.Tensor,
               generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The loss terms of one micro-batch (``loss_names`` keys, float32 scalars).

        Args:
            student: the prepared (possibly DDP-wrapped) student; call it for gradients.
            latents: scaled clean latents (B, C, h, w), float32. text: text-encoder hidden states (B, L, D).
            generator: this micro-batch's generator; draw every random number from it (exact resume).
        """
        raise NotImplementedError

    def after_optimizer_step(self, inner: torch.nn.Module) -> None:
        """Called after every optimizer step with the unwrapped student."""

    def ema_model(self, student: torch.nn.Module) -> torch.nn.Module:
        """The diffusers model whose parameters ``--ema`` averages and ``save_student`` saves (default: the student)."""
        return student

    def save_student(self, inner: torch.nn.Module, out: Path, *, report: StudentReport, extra: dict[str, Any]) -> Path:
        """Write the student as a model folder at ``out`` (the loop makes it atomic); default: a U-Net folder
        with ``bksdm_edge.json``, decorated by ``decorate_unet_folder``."""
        from ..student import save_student

        save_student(inner, out, teacher=self.config.teacher, report=report, extra={**self.student_meta(), **extra})
        self.decorate_unet_folder(out)
        return out

    def save_outputs(self, run_dir: Path, inner: torch.nn.Module, save_unet: Callable[..., Path],
                     extra: dict[str, Any]) -> dict[str, str]:
        """Write objective-specific outputs; return {output name: folder relative to the run}."""
        return {}

    def decorate_unet_folder(self, folder: Path) -> None:
        """Add files to every saved U-Net folder (LCM: its scheduler config)."""

    def info(self) -> dict[str, Any]:
        """Facts about the objective recorded in ``run_config.json``."""
        return {}

    def student_meta(self) -> dict[str, Any]:
        """Facts recorded in each saved student's ``bksdm_edge.json``."""
        return {}

    @property
    def default_validation_steps(self) -> int:
        return DEFAULT_VALIDATION_STEPS[self.name]

    def validation_pipeline(self, model, student) -> Any:
        """A diffusers pipeline that renders validation prompts with ``student``."""
        pipe = model.to_pipeline()
        pipe.unet = student
        return pipe


OBJECTIVES: dict[str, type[Objective]] = {}


def register(cls: type[Objective]) -> type[Objective]:
    OBJECTIVES[cls.name] = cls
    return cls


def get_objective(config: DistillConfig) -> Objective:
    """The objective named by ``config.objective``, with its options checked."""
    from . import kd, lcm, vae  # noqa: F401  (register)

    if config.objective not in OBJECTIVES:
        raise DistillError(f"unknown --objective {config.objective!r}; choose from {', '.join(sorted(OBJECTIVES))}")
    return OBJECTIVES[config.objective](config)


def check_student_fits(student_config, teacher_config, what: str) -> None:
    """Refuse a student U-Net whose latent channels or text width differ from the teacher's."""
    problems = []
    for key in ("in_channels", "out_channels", "cross_attention_dim"):
        s, t = student_config.get(key) if isinstance(student_config, dict) else getattr(student_config, key), (
            teacher_config.get(key) if isinstance(teacher_config, dict) else getattr(teacher_config, key))
        if s != t:
            problems.append(f"{key} {s} (teacher {t})")
    if problems:
        raise DistillError(
            f"{what} does not fit the teacher: " + ", ".join(problems) + ". Pass a U-Net built from this teacher "
            "(`bksdm-edge build` or a `distill` run of it)."
        )
