"""Turn what a user passes (a built-in name, a plan file, a student U-Net folder) into a ``Plan``.

A student folder is recognised from its ``config.json``: any ``UNet2DConditionModel`` whose topology is a
removal of the teacher's (nota-ai/bk-sdm-*, segmind small-sd/tiny-sd, our own builds) maps to exactly one
plan up to the weight map. The weight map is read from the folder's ``bksdm_edge.json`` when we built it;
otherwise the paper's (down stages keep their first pairs, up stages their first and last) is assumed.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BksdmError
from . import topology as T
from .builtin import BUILTIN_PLANS
from .plan import Block, Plan, PlanError, load_plan

STUDENT_META = "bksdm_edge.json"
PLAN_SUFFIXES = (".yaml", ".yml", ".json")
# Fields that may differ between a teacher and its student without changing what the plan decides: the latent
# size a pipeline defaults to, and an LCM student's guidance embedding (added on top of the removal).
IGNORED_FIELDS = ("sample_size", "time_cond_proj_dim")


class UnknownPlanError(PlanError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


def plan_choices() -> str:
    return ", ".join(BUILTIN_PLANS)


def resolve_plan(spec: str | Path | Plan, teacher_config: Any = None) -> Plan:
    """A ``Plan`` from a built-in name (``bk-small``), a plan file, or a student U-Net folder.

    Args:
        spec: the plan, a name, a ``.yaml``/``.json`` plan file, or a U-Net folder (recognised, see module doc).
        teacher_config: the teacher U-Net config; needed to recognise a folder.
    """
    if isinstance(spec, Plan):
        return spec
    text = str(spec)
    if text in BUILTIN_PLANS:
        return BUILTIN_PLANS[text]
    path = Path(text)
    if path.is_dir():
        if teacher_config is None:
            raise PlanError(f"{path} is a U-Net folder; recognising its plan needs the teacher's config")
        return describe_student(path, teacher_config).plan
    if path.is_file():
        return load_plan(path)
    if path.suffix in PLAN_SUFFIXES or "/" in text:
        raise PlanError(f"plan file {path} does not exist")
    raise UnknownPlanError(
        f"Unknown variant {text!r}: choose a built-in plan ({plan_choices()}), a plan file (.yaml/.json, "
        "docs/plans.md) or a student U-Net folder")


def builtin_match(plan: Plan) -> str | None:
    """The built-in plan with the same structure (weight map included), if any."""
    return next((name for name, p in BUILTIN_PLANS.items() if p.structure == plan.structure), None)


def full_unet_config(config: Any) -> dict[str, Any]:
    """A U-Net config with diffusers' defaults filled in and tuples as lists, for comparing configs."""
    from diffusers import UNet2DConditionModel

    params = inspect.signature(UNet2DConditionModel.__init__).parameters
    full = {k: p.default for k, p in params.items() if k != "self" and p.default is not inspect.Parameter.empty}
    full.update({k: v for k, v in dict(config).items() if k in full})
    return {k: list(v) if isinstance(v, tuple) else v for k, v in full.items()}


def config_differences(student_config: Any, expected_config: Any) -> list[str]:
    """Fields where a student config differs from the config a plan gives (ignoring ``IGNORED_FIELDS``)."""
    s, e = full_unet_config(student_config), full_unet_config(expected_config)
    return [f"{k}={s.get(k)!r} (the plan gives {e.get(k)!r})" for k in sorted(set(s) | set(e))
            if k not in IGNORED_FIELDS and s.get(k) != e.get(k)]


def plan_of_unet_config(student_config: Any, teacher_config: Any, name: str = "custom") -> Plan:
    """The plan whose student has ``student_config``, or ``PlanError`` saying why it is not a removal.

    The weight map returned is the paper's convention (first pairs of down stages, first and last of up
    stages); the topology alone cannot tell which teacher pairs the weights came from.
    """
    s = full_unet_config(student_config)
    problems: list[str] = []
    downs, ups = list(s["down_block_types"]), list(s["up_block_types"])
    n = len(downs)
    if not 1 <= n <= T.STAGES or len(ups) != n:
        raise PlanError(f"not a block removal of the teacher: {n} down and {len(ups)} up stages (the teacher has "
                        f"{T.STAGES} of each)")
    lpb = s["layers_per_block"]
    per = [lpb] * n if isinstance(lpb, int) else list(lpb)

    def kept_attention(kind: str, stage: int, block_type: str) -> bool:
        teacher_type = (T.SD_DOWN_BLOCKS if kind == "down" else T.SD_UP_BLOCKS)[stage]
        if block_type == teacher_type:
            return teacher_type in T.WITHOUT_ATTENTION
        if block_type == T.WITHOUT_ATTENTION.get(teacher_type):
            return False
        problems.append(f"{kind}_blocks.{stage} is a {block_type}; the teacher's is a {teacher_type}")
        return False

    down: list[Block | None] = []
    for i in range(T.STAGES):
        if i >= n:
            down.append(None)
            continue
        attn = kept_attention("down", i, downs[i])
        if not 1 <= per[i] <= T.DOWN_PAIRS:
            problems.append(f"down_blocks.{i} has {per[i]} pairs (the teacher has {T.DOWN_PAIRS})")
        kept = tuple(range(per[i]))
        down.append(Block(kept, kept if attn else ()))
    up: list[Block | None] = [None] * (T.STAGES - n)
    for s_idx in range(n):
        j = s_idx + T.STAGES - n
        attn = kept_attention("up", j, ups[s_idx])
        count = per[n - 1 - s_idx] + 1
        kept = tuple(range(count)) if count >= T.UP_PAIRS else tuple(range(count - 1)) + (T.UP_PAIRS - 1,)
        up.append(Block(kept, kept if attn else ()))
    mid_type = s["mid_block_type"]
    mid = {None: None, T.SD_MID_BLOCK: Block((0, 1), (0,)), T.MID_WITHOUT_ATTENTION: Block((0,))}.get(mid_type, "bad")
    if mid == "bad":
        problems.append(f"mid_block_type {mid_type!r} (a removal keeps {T.SD_MID_BLOCK}, {T.MID_WITHOUT_ATTENTION} "
                        "or none)")
        mid = None
    if problems:
        raise PlanError("not a block removal of the teacher: " + "; ".join(problems))
    plan = Plan(name=name, down=tuple(down), mid=mid, up=tuple(up), description="recognised from a U-Net config")
    problems = plan.problems() + config_differences(student_config, plan.student_config(teacher_config))
    if problems:
        raise PlanError("not a block removal of the teacher: " + "; ".join(problems))
    builtin = builtin_match(plan)
    return BUILTIN_PLANS[builtin] if builtin else plan


@dataclass(frozen=True)
class KnownStudent:
    """A student U-Net folder and the plan it corresponds to.

    ``how`` says where the plan came from: ``bksdm_edge.json`` (built here, exact weight map) or
    ``config.json`` (recognised from the topology, paper weight map assumed).
    """

    folder: str
    plan: Plan
    how: str

    @property
    def builtin(self) -> str | None:
        return builtin_match(self.plan)

    def describe(self) -> str:
        same = f" (same as built-in {self.builtin})" if self.builtin and self.builtin != self.plan.name else ""
        return f"{self.folder}: plan {self.plan.name}{same}, from {self.how}: {self.plan.summary()}"

    def to_json(self) -> dict[str, Any]:
        return {"folder": self.folder, "plan": self.plan.to_dict(), "how": self.how, "builtin": self.builtin}


def read_student_meta(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / STUDENT_META
    return json.loads(path.read_text()) if path.exists() else {}


def describe_student(folder: str | Path, teacher_config: Any) -> KnownStudent:
    """The plan of a student U-Net folder (see the module docstring); ``PlanError`` when it is no removal."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.exists():
        raise PlanError(f"{folder} is not a diffusers U-Net folder (no config.json)")
    config = json.loads(config_path.read_text())
    meta = read_student_meta(folder)
    recorded = None
    if isinstance(meta.get("plan"), dict):
        recorded = Plan.from_dict(meta["plan"], where=f"{folder / STUDENT_META}")
    elif meta.get("variant") in BUILTIN_PLANS:
        recorded = BUILTIN_PLANS[meta["variant"]]
    if recorded is not None:
        diffs = config_differences(config, recorded.student_config(teacher_config))
        if diffs:
            raise PlanError(f"{folder}: its {STUDENT_META} names plan {recorded.name!r} but config.json does not "
                            f"match it for this teacher: " + "; ".join(diffs[:4]))
        return KnownStudent(str(folder), recorded, STUDENT_META)
    try:
        plan = plan_of_unet_config(config, teacher_config, name=folder.name)
    except PlanError as err:
        raise PlanError(f"{folder}: {err}") from None
    return KnownStudent(str(folder), plan, "config.json")


def student_info(folder: str | Path, teacher_config: Any) -> dict[str, Any]:
    """What loaders record about a student folder: its ``bksdm_edge.json`` plus the plan it corresponds to.

    Never raises for a folder that is not a removal of the teacher (any U-Net can be exported); the
    reason is recorded instead.
    """
    info = dict(read_student_meta(folder))
    try:
        known = describe_student(folder, teacher_config)
    except BksdmError as err:
        info.setdefault("variant", None)
        info["plan_note"] = str(err)
        return info
    info["variant"] = known.plan.name
    info["plan"] = known.plan.to_dict()
    info["plan_from"] = known.how
    return info


def plan_label(spec: str, teacher_config: Any) -> str | None:
    """``name: pairs kept`` of what a benchmark or report names a student by: a built-in plan, a plan file, or a
    U-Net folder (its recognised plan). None for the teacher, a bundle, or a folder that is no removal."""
    path = Path(spec)
    if spec == "teacher" or (path / "manifest.json").is_file():
        return None
    try:
        plan = describe_student(path, teacher_config).plan if path.is_dir() else resolve_plan(spec)
    except BksdmError:
        return None
    return f"{plan.name}: {plan.summary()}"
