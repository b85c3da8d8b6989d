"""Build a BK-SDM student U-Net from an SD teacher and initialise it from the teacher's weights."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .errors import BksdmError
from .variants import Variant, get_variant

SD_DOWN_BLOCKS = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
SD_UP_BLOCKS = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
SD_MID_BLOCK = "UNetMidBlock2DCrossAttn"

_UP_PAIR = re.compile(r"^up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$")
_UP_SAMPLER = re.compile(r"^up_blocks\.(\d+)\.(upsamplers\..+)$")


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


def check_teacher(unet: Any) -> None:
    """Raise ``UnsupportedTeacherError`` unless ``unet`` has the SD-v1/v2 U-Net topology."""
    from diffusers import UNet2DConditionModel

    if not isinstance(unet, UNet2DConditionModel):
        raise UnsupportedTeacherError(
            f"The teacher must be a diffusers UNet2DConditionModel, got {type(unet).__name__}."
        )
    c = unet.config
    problems = []
    if list(c.down_block_types) != SD_DOWN_BLOCKS:
        problems.append(f"down_block_types {list(c.down_block_types)} (SD has {SD_DOWN_BLOCKS})")
    if list(c.up_block_types) != SD_UP_BLOCKS:
        problems.append(f"up_block_types {list(c.up_block_types)} (SD has {SD_UP_BLOCKS})")
    if c.mid_block_type != SD_MID_BLOCK:
        problems.append(f"mid_block_type {c.mid_block_type!r} (SD has {SD_MID_BLOCK!r})")
    if c.layers_per_block != 2:
        problems.append(f"layers_per_block {c.layers_per_block} (SD has 2)")
    if c.cross_attention_dim is None:
        problems.append("no cross-attention (cross_attention_dim is None)")
    if c.addition_embed_type is not None or c.class_embed_type is not None:
        problems.append(f"extra conditioning (addition_embed_type={c.addition_embed_type!r}, as in SDXL)")
    tlpb = c.transformer_layers_per_block
    if (tlpb if isinstance(tlpb, int) else max(tlpb)) != 1:
        problems.append(f"transformer_layers_per_block {tlpb} (SD has 1, SDXL more)")
    if problems:
        raise UnsupportedTeacherError(
            "This U-Net is not an SD-v1/SD-v2 family U-Net, so the BK-SDM block removal does not apply: "
            + "; ".join(problems)
            + ". Use an SD-v1.x or SD-v2.x teacher (e.g. CompVis/stable-diffusion-v1-4, "
            "stabilityai/stable-diffusion-2-1-base, or builtin:sd-v1.4)."
        )


def teacher_key(student_key: str, variant: Variant) -> str:
    """The teacher tensor that initialises ``student_key`` under ``variant``'s weight map."""
    m = _UP_PAIR.match(student_key)
    if m:
        stage, kind, pair, rest = int(m[1]), m[2], int(m[3]), m[4]
        pair_map = dict(variant.up_pair_map)
        return f"up_blocks.{stage + variant.up_stage_offset}.{kind}.{pair_map[pair]}.{rest}"
    m = _UP_SAMPLER.match(student_key)
    if m:
        return f"up_blocks.{int(m[1]) + variant.up_stage_offset}.{m[2]}"
    # Down stages keep their first pair(s) and every other tensor keeps its name.
    return student_key


def build_student(teacher_unet: Any, variant: str | Variant) -> tuple[Any, StudentReport]:
    """Build a BK-SDM student from ``teacher_unet`` and copy the teacher's weights into it.

    Every student tensor is copied from its mapped teacher tensor after checking that
    the key exists and the shapes match; nothing is left at random init.

    Args:
        teacher_unet: a diffusers ``UNet2DConditionModel`` of the SD-v1 or SD-v2 family.
        variant: ``bk-base``, ``bk-small``, ``bk-tiny`` or a ``Variant``.

    Returns:
        (student U-Net in eval mode with the teacher's dtype, ``StudentReport``).
    """
    from diffusers import UNet2DConditionModel

    variant = get_variant(variant)
    check_teacher(teacher_unet)
    config = variant.student_config(teacher_unet.config)
    student = UNet2DConditionModel.from_config(config)
    teacher_state = teacher_unet.state_dict()
    student_state = student.state_dict()

    report = StudentReport(
        variant=variant.name,
        teacher_params=sum(p.numel() for p in teacher_unet.parameters()),
        student_params=sum(p.numel() for p in student.parameters()),
    )
    new_state, errors, used = {}, [], set()
    for key, tensor in student_state.items():
        source = teacher_key(key, variant)
        if source not in teacher_state:
            errors.append(f"{key} <- {source}: missing in teacher")
            continue
        if teacher_state[source].shape != tensor.shape:
            errors.append(f"{key} <- {source}: shape {tuple(teacher_state[source].shape)} != {tuple(tensor.shape)}")
            continue
        new_state[key] = teacher_state[source].detach().clone()
        used.add(source)
        if source == key:
            report.copied.append(key)
        else:
            report.remapped[key] = source
    if errors:
        raise UnsupportedTeacherError(
            f"Cannot initialise {variant.name} from this teacher ({len(errors)} tensors do not map): "
            + "; ".join(errors[:5])
        )
    student.load_state_dict(new_state, strict=True)
    report.unused_teacher_keys = sorted(set(teacher_state) - used)
    dtype = next(teacher_unet.parameters()).dtype
    if dtype != torch.float32:
        student.to(dtype)
    return student.eval(), report


STUDENT_META = "bksdm_edge.json"


def save_student(student: Any, out_dir: str | Path, *, teacher: str, report: StudentReport, extra=None) -> Path:
    """Save a student as a diffusers U-Net folder plus ``bksdm_edge.json`` (teacher, variant, version)."""
    out = Path(out_dir)
    student.save_pretrained(out)
    meta = {
        "teacher": teacher,
        "variant": report.variant,
        "bksdm_edge_version": __version__,
        "torch_version": torch.__version__,
        **report.summary(),
        "remapped_keys": report.remapped,
        **(extra or {}),
    }
    (out / STUDENT_META).write_text(json.dumps(meta, indent=2))
    return out


__all__ = ["build_student", "save_student", "check_teacher", "teacher_key", "StudentReport", "asdict"]
