"""The BK-SDM objective: λ_task·L_task + λ_out·L_outKD + λ_feat·L_featKD (arXiv 2305.15798, Eq. 1-3)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import torch

from ..errors import BksdmError
from ..loading import load_unet, teacher_unet_config
from ..plans.plan import Plan
from ..plans.resolve import describe_student, resolve_plan
from ..student import STUDENT_META, StudentReport, build_student, validate_plan
from .features import FeatureCapture
from .loss import LOSS_NAMES, distill_losses, training_target
from .objective import DistillError, Objective, TrainContext, check_student_fits, register


def run_plan(config) -> Plan | None:
    """The run's removal plan (``variant``, else the ``student`` folder's), checked against the teacher's config
    before anything is loaded or written; None when neither is given."""
    spec = config.variant or config.student
    if spec is None:
        return None
    teacher_config = teacher_unet_config(config.teacher)
    try:
        if teacher_config is None:  # unreadable without loading: structural checks now, the shapes at build time
            return resolve_plan(spec).check()
        return validate_plan(spec, teacher_config)
    except BksdmError as err:
        raise DistillError(f"{err}") from None


def load_start_unet(path: str, plan: Plan | None, teacher) -> tuple[Any, StudentReport]:
    """A ``--student`` U-Net folder, checked against the teacher and (when given) the run's plan."""
    student = load_unet(path)
    meta_path = Path(path) / STUDENT_META
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    check_student_fits(student.config, teacher.config, f"--student {path}")
    if plan is not None:
        known = describe_student(path, teacher.config)
        if known.plan.student_config(teacher.config) != plan.student_config(teacher.config):
            raise DistillError(f"--student {path} is a {known.plan.name} student ({known.plan.summary()}), not "
                               f"{plan.name} ({plan.summary()})")
    report = StudentReport(
        variant=plan.name if plan else meta.get("variant", "custom"),
        teacher_params=sum(p.numel() for p in teacher.parameters()),
        student_params=sum(p.numel() for p in student.parameters()),
        remapped=meta.get("remapped_keys", {}),
        plan=plan.to_dict() if plan else meta.get("plan"),
    )
    return student, report


@register
class KdObjective(Objective):
    """Task + output KD + feature KD, the student built from the teacher by the plan (or ``--student``); the
    feature pairs come from the plan."""

    name = "kd"
    loss_names = LOSS_NAMES

    def check(self) -> None:
        self.plan = run_plan(self.config)
        if self.plan is None:
            raise DistillError("--objective kd needs --variant NAME, --plan FILE|FOLDER or --student FOLDER")

    def build_student(self, ctx: TrainContext):
        if self.config.student is None:
            return build_student(ctx.model.unet, self.plan)
        return load_start_unet(self.config.student, self.plan, ctx.model.unet)

    @contextlib.contextmanager
    def session(self, ctx: TrainContext, inner):
        pairs = self.plan.feature_pairs
        with FeatureCapture(ctx.model.unet, [t for t, _ in pairs]) as self._teacher_cap, \
                FeatureCapture(inner, [s for _, s in pairs]) as self._student_cap:
            yield

    def losses(self, ctx: TrainContext, student, latents, text, generator):
        sched, device = ctx.noise_scheduler, latents.device
        noise = torch.randn(latents.shape, generator=generator, device=device)
        timesteps = torch.randint(0, sched.config.num_train_timesteps, (latents.shape[0],), generator=generator,
                                  device=device)
        noisy = sched.add_noise(latents, noise, timesteps)
        target = training_target(sched, latents, noise, timesteps)
        with torch.no_grad(), ctx.accelerator.autocast():
            teacher_pred = ctx.model.unet(noisy, timesteps, text, return_dict=False)[0]
        teacher_feats = self._teacher_cap.take()
        student_pred = student(noisy, timesteps, text, return_dict=False)[0]
        student_feats = self._student_cap.take()
        return distill_losses(student_pred, teacher_pred, target, student_feats, teacher_feats, self.config.loss,
                              self.plan.feature_pairs)

    def info(self) -> dict[str, Any]:
        return {"plan": self.plan.to_dict(), "feature_pairs": [list(p) for p in self.plan.feature_pairs]}
