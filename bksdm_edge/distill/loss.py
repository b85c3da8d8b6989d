"""The BK-SDM objective: λ_task·L_task + λ_out·L_outKD + λ_feat·L_featKD (arXiv 2305.15798, Eq. 1-3)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import BksdmError
from .config import LossConfig

LOSS_NAMES = ("loss", "loss_task", "loss_out", "loss_feat")


def check_prediction_type(noise_scheduler) -> str:
    """The teacher's parameterisation ("epsilon" or "v_prediction") from its scheduler config."""
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type not in ("epsilon", "v_prediction"):
        raise BksdmError(
            f"Teacher scheduler prediction_type {prediction_type!r} is not supported; SD teachers use 'epsilon' "
            "(SD-v1, SD-v2-base) or 'v_prediction' (SD-v2 768 px)"
        )
    return prediction_type


def training_target(noise_scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor):
    """The task-loss target for the teacher's parameterisation: the noise, or the velocity for v-prediction."""
    if check_prediction_type(noise_scheduler) == "epsilon":
        return noise
    return noise_scheduler.get_velocity(latents, noise, timesteps)


def _mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(a.float(), b.float(), reduction="mean")


def distill_losses(
    student_pred: torch.Tensor,
    teacher_pred: torch.Tensor,
    target: torch.Tensor,
    student_features: Sequence[torch.Tensor],
    teacher_features: Sequence[torch.Tensor],
    weights: LossConfig,
    pair_names: Sequence[tuple[str, str]] = (),
) -> dict[str, torch.Tensor]:
    """All terms of the objective, in float32.

    Args:
        student_pred / teacher_pred: U-Net outputs for the same noisy latents.
        target: noise or velocity (``training_target``).
        student_features / teacher_features: outputs of the paired layers, in pair order.
        weights: λ_task, λ_out, λ_feat.
        pair_names: (teacher, student) module names, for error messages.

    Returns:
        {"loss": weighted sum, "loss_task", "loss_out", "loss_feat" (sum over pairs)}.
    """
    if len(student_features) != len(teacher_features):
        raise BksdmError(f"{len(student_features)} student features vs {len(teacher_features)} teacher features")
    task = _mse(student_pred, target)
    out = _mse(student_pred, teacher_pred.detach())
    feat = student_pred.new_zeros((), dtype=torch.float32)
    for k, (s, t) in enumerate(zip(student_features, teacher_features)):
        if s.shape != t.shape:
            pair = pair_names[k] if k < len(pair_names) else k
            raise BksdmError(f"feature pair {pair}: student shape {tuple(s.shape)} != teacher {tuple(t.shape)}")
        feat = feat + _mse(s, t.detach())
    total = weights.lambda_task * task + weights.lambda_out * out + weights.lambda_feat * feat
    return {"loss": total, "loss_task": task, "loss_out": out, "loss_feat": feat}
