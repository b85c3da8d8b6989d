"""Build a student U-Net from an SD teacher by a removal plan and initialise it from the teacher's weights."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .errors import BksdmError
from .plans.plan import Plan, PlanError
from .plans.resolve import STUDENT_META, resolve_plan
from .plans.topology import SD_DOWN_BLOCKS, SD_MID_BLOCK, SD_UP_BLOCKS, TEACHER_LAYERS_PER_BLOCK


class UnsupportedTeacherError(BksdmError, ValueError):
    """The teacher is not an SD-v1/SD-v2 family U-Net, so the BK-SDM removals do not apply."""


@dataclass
class StudentReport:
    """What ``build_student`` did: which tensors were copied as-is and which were remapped."""

    variant: str
    teacher_params: int
    student_params: int
    copied: list[str] = field(default_factory=list)
    remapped: dict[str, str] = field(default_factory=dict)  # student key -> teacher key
    unused_teacher_keys: list[str] = field(default_factory=list)
    plan: dict[str, Any] | None = None  # the plan file contents (docs/plans.md)

    def summary(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "teacher_params": self.teacher_params,
            "student_params": self.student_params,
            "params_ratio": self.student_params / self.teacher_params,
            "copied": len(self.copied),
            "remapped": len(self.remapped),
            "unused_teacher_keys": len(self.unused_teacher_keys),
        }


def teacher_config_problems(c: Any) -> list[str]:
    """Why a U-Net config is not an SD-v1/SD-v2 family U-Net (empty when it is)."""
    get = (lambda k: c.get(k)) if isinstance(c, dict) else (lambda k: getattr(c, k, None))
    problems = []
    if list(get("down_block_types") or []) != list(SD_DOWN_BLOCKS):
        problems.append(f"down_block_types {list(get('down_block_types') or [])} (SD has {list(SD_DOWN_BLOCKS)})")
    if list(get("up_block_types") or []) != list(SD_UP_BLOCKS):
        problems.append(f"up_block_types {list(get('up_block_types') or [])} (SD has {list(SD_UP_BLOCKS)})")
    if get("mid_block_type") != SD_MID_BLOCK:
        problems.append(f"mid_block_type {get('mid_block_type')!r} (SD has {SD_MID_BLOCK!r})")
    if get("layers_per_block") != TEACHER_LAYERS_PER_BLOCK:
        problems.append(f"layers_per_block {get('layers_per_block')} (SD has {TEACHER_LAYERS_PER_BLOCK})")
    if get("cross_attention_dim") is None:
        problems.append("no cross-attention (cross_attention_dim is None)")
    if get("addition_embed_type") is not None or get("class_embed_type") is not None:
        problems.append(f"extra conditioning (addition_embed_type={get('addition_embed_type')!r}, as in SDXL)")
    tlpb = get("transformer_layers_per_block") or 1
    if (tlpb if isinstance(tlpb, int) else max(tlpb)) != 1:
        problems.append(f"transformer_layers_per_block {tlpb} (SD has 1, SDXL more)")
    return problems


def check_teacher(unet: Any) -> None:
    """Raise ``UnsupportedTeacherError`` unless ``unet`` has the SD-v1/v2 U-Net topology."""
    from diffusers import UNet2DConditionModel

    if not isinstance(unet, UNet2DConditionModel):
        raise UnsupportedTeacherError(
            f"The teacher must be a diffusers UNet2DConditionModel, got {type(unet).__name__}."
        )
    problems = teacher_config_problems(unet.config)
    if problems:
        raise UnsupportedTeacherError(
            "This U-Net is not an SD-v1/SD-v2 family U-Net, so the BK-SDM block removal does not apply: "
            + "; ".join(problems)
            + ". Use an SD-v1.x or SD-v2.x teacher (e.g. CompVis/stable-diffusion-v1-4, "
            "stabilityai/stable-diffusion-2-1-base, or builtin:sd-v1.4)."
        )


def teacher_key(student_key: str, plan: str | Plan) -> str:
    """The teacher tensor that initialises ``student_key`` under the plan's weight map."""
    return resolve_plan(plan).teacher_name(student_key)


def _map_tensors(student_shapes: dict[str, tuple], teacher_shapes: dict[str, tuple], plan: Plan):
    """(student key -> teacher key, problems): every student tensor must map to a teacher tensor of its shape."""
    mapping, errors = {}, []
    for key, shape in student_shapes.items():
        source = plan.teacher_name(key)
        if source not in teacher_shapes:
            errors.append(f"{key} <- {source}: missing in teacher")
        elif tuple(teacher_shapes[source]) != tuple(shape):
            errors.append(f"{key} <- {source}: shape {tuple(teacher_shapes[source])} != {tuple(shape)}")
        else:
            mapping[key] = source
    return mapping, errors


def _fit_error(plan: Plan, errors: list[str]) -> PlanError:
    return PlanError(
        f"plan {plan.name!r} does not fit this teacher ({len(errors)} student tensors have no teacher tensor of "
        "their shape): " + "; ".join(errors[:5]) + (" ..." if len(errors) > 5 else "")
        + ". An up stage's last pair takes the skip of the stage below, whose channels differ: keep the teacher's "
        "last up pair where channels change.")


def validate_plan(plan: str | Path | Plan, teacher_config: Any) -> Plan:
    """Resolve ``plan`` and check it against the teacher config without building weights.

    Raises ``UnsupportedTeacherError`` for a non-SD teacher and ``PlanError`` (every reason listed) for a plan
    that cannot be built from it; commands call this before writing anything.
    """
    from diffusers import UNet2DConditionModel

    problems = teacher_config_problems(teacher_config)
    if problems:
        raise UnsupportedTeacherError("This U-Net is not an SD-v1/SD-v2 family U-Net, so block removal does not "
                                      "apply: " + "; ".join(problems))
    plan = resolve_plan(plan, teacher_config).check()
    config = {k: v for k, v in dict(teacher_config).items() if not k.startswith("_")}
    with torch.device("meta"):
        teacher = UNet2DConditionModel.from_config(config)
        student = UNet2DConditionModel.from_config(plan.student_config(config))
    _, errors = _map_tensors({k: v.shape for k, v in student.state_dict().items()},
                             {k: v.shape for k, v in teacher.state_dict().items()}, plan)
    if errors:
        raise _fit_error(plan, errors)
    return plan


def build_student(teacher_unet: Any, plan: str | Path | Plan) -> tuple[Any, StudentReport]:
    """Build a student from ``teacher_unet`` by a removal plan and copy the teacher's weights into it.

    Every student tensor is copied from its mapped teacher tensor after checking that
    the key exists and the shapes match; nothing is left at random init.

    Args:
        teacher_unet: a diffusers ``UNet2DConditionModel`` of the SD-v1 or SD-v2 family.
        plan: ``bk-base``, ``bk-small``, ``bk-tiny``, a plan file, a student U-Net folder (its plan) or a ``Plan``.

    Returns:
        (student U-Net in eval mode with the teacher's dtype, ``StudentReport``).
    """
    from diffusers import UNet2DConditionModel

    check_teacher(teacher_unet)
    plan = resolve_plan(plan, teacher_unet.config).check()
    config = plan.student_config(teacher_unet.config)
    student = UNet2DConditionModel.from_config(config)
    teacher_state = teacher_unet.state_dict()
    student_state = student.state_dict()
    mapping, errors = _map_tensors({k: v.shape for k, v in student_state.items()},
                                   {k: v.shape for k, v in teacher_state.items()}, plan)
    if errors:
        raise _fit_error(plan, errors)
    report = StudentReport(
        variant=plan.name,
        teacher_params=sum(p.numel() for p in teacher_unet.parameters()),
        student_params=sum(p.numel() for p in student.parameters()),
        plan=plan.to_dict(),
    )
    new_state = {}
    for key, source in mapping.items():
        new_state[key] = teacher_state[source].detach().clone()
        if source == key:
            report.copied.append(key)
        else:
            report.remapped[key] = source
    student.load_state_dict(new_state, strict=True)
    report.unused_teacher_keys = sorted(set(teacher_state) - set(mapping.values()))
    dtype = next(teacher_unet.parameters()).dtype
    if dtype != torch.float32:
        student.to(dtype)
    return student.eval(), report


def save_student(student: Any, out_dir: str | Path, *, teacher: str, report: StudentReport, extra=None) -> Path:
    """Save a student as a diffusers U-Net folder plus ``bksdm_edge.json`` (teacher, plan, version)."""
    out = Path(out_dir)
    student.save_pretrained(out)
    meta = {
        "teacher": teacher,
        "variant": report.variant,
        "bksdm_edge_version": __version__,
        "torch_version": torch.__version__,
        **report.summary(),
        "plan": report.plan,
        "remapped_keys": report.remapped,
        **(extra or {}),
    }
    (out / STUDENT_META).write_text(json.dumps(meta, indent=2))
    return out


__all__ = ["build_student", "save_student", "check_teacher", "teacher_key", "validate_plan", "StudentReport",
           "STUDENT_META", "SD_DOWN_BLOCKS", "SD_UP_BLOCKS", "SD_MID_BLOCK", "asdict"]
