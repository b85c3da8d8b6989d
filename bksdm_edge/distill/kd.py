"""The BK-SDM objective: λ_task·L_task + λ_out·L_outKD + λ_feat·L_featKD (arXiv 2305.15798, Eq. 1-3)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import torch

from ..loading import load_unet
from ..student import STUDENT_META, StudentReport, build_student
from ..variants import VARIANTS, get_variant
from .features import FeatureCapture
from .loss import LOSS_NAMES, distill_losses, training_target
from .objective import DistillError, Objective, TrainContext, check_student_fits, register


def load_start_unet(path: str, variant: str | None, teacher) -> tuple[Any, StudentReport]:
    """A ``--student`` U-Net folder, checked against ``variant`` (its ``bksdm_edge.json``) and the teacher."""
    student = load_unet(path)
    meta_path = Path(path) / STUDENT_META
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if variant is not None and meta.get("variant", variant) != variant:
        raise DistillError(f"--student {path} is a {meta['variant']} student, not {variant}")
    check_student_fits(student.config, teacher.config, f"--student {path}")
    report = StudentReport(
        variant=meta.get("variant", variant or "custom"),
        teacher_params=sum(p.numel() for p in teacher.parameters()),
        student_params=sum(p.numel() for p in student.parameters()),
        remapped=meta.get("remapped_keys", {}),
    )
    return student, report


@register
class KdObjective(Objective):
    """Task + output KD + feature KD, the student built from the teacher by the variant (or ``--student``)."""

    name = "kd"
    loss_names = LOSS_NAMES

    def check(self) -> None:
        if self.config.variant is None:
            raise DistillError("--objective kd needs --variant (" + ", ".join(sorted(VARIANTS)) + ")")
        self.variant = get_variant(self.config.variant)

    def build_student(self, ctx: TrainContext):
        if self.config.student is None:
            return build_student(ctx.model.unet, self.config.variant)
        return load_start_unet(self.config.student, self.config.variant, ctx.model.unet)

    @contextlib.contextmanager
    def session(self, ctx: TrainContext, inner):
        pairs = self.variant.feature_pairs
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
                              self.variant.feature_pairs)

    def info(self) -> dict[str, Any]:
        return {"feature_pairs": [list(p) for p in self.variant.feature_pairs]}
