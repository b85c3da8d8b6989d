"""Exact parameter and MAC counts of any plan without building it.

Every module of a student is a teacher module (the plan's weight map) at the same spatial resolution, except
when innermost stages are removed (the mid block then runs one level up). So the teacher is profiled once per
number of removed stages, per module (``profiler.module_costs`` on the meta device), and a plan's cost is the
sum over the teacher modules it keeps (``Plan.keeps``). Tests check this against profiling the built student.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from . import topology as T
from .plan import Plan, full_plan


@dataclass(frozen=True)
class Cost:
    """One U-Net step at the model's resolution, batch 1."""

    params: int
    macs_paper: int
    macs_full: int

    def ratios(self, teacher: Cost) -> dict[str, float]:
        return {"params": self.params / teacher.params, "macs": self.macs_paper / teacher.macs_paper,
                "macs_full": self.macs_full / teacher.macs_full}


def superset_plan(removed: int) -> Plan:
    """Everything kept except the ``removed`` innermost stages (the widest plan of that shape)."""
    full = full_plan()
    down = tuple(None if i >= T.STAGES - removed else b for i, b in enumerate(full.down))
    up = tuple(None if j < removed else b for j, b in enumerate(full.up))
    return dataclasses.replace(full, name=f"superset-r{removed}", down=down, up=up)


class CostModel:
    """Parameter and MAC counts of plans of one teacher at one resolution.

    Args:
        teacher_config: the teacher U-Net config.
        resolution: image size in pixels (default: the config's ``sample_size`` x ``vae_factor``).
        vae_factor: pixels per latent.
    """

    def __init__(self, teacher_config: Any, resolution: int | None = None, vae_factor: int = 8):
        self.teacher_config = {k: v for k, v in dict(teacher_config).items() if not k.startswith("_")}
        self.vae_factor = vae_factor
        self.resolution = resolution or int(self.teacher_config.get("sample_size", 64)) * vae_factor
        self._tables: dict[int, dict[str, list[int]]] = {}
        self.teacher = self.cost(full_plan())

    def table(self, removed: int) -> dict[str, list[int]]:
        """Teacher module name -> [params, paper MACs, attention MACs] with ``removed`` innermost stages gone."""
        if removed not in self._tables:
            import torch
            from diffusers import UNet2DConditionModel

            from ..profiler import module_costs

            plan = superset_plan(removed)
            config = plan.student_config(self.teacher_config)
            try:
                with torch.device("meta"):
                    unet = UNet2DConditionModel.from_config(config)
            except Exception:  # noqa: BLE001 - a mid block that does not fit one level up: cost it without
                plan = dataclasses.replace(plan, mid=None)
                with torch.device("meta"):
                    unet = UNet2DConditionModel.from_config(plan.student_config(self.teacher_config))
            costs = module_costs(unet, resolution=self.resolution, vae_factor=self.vae_factor)
            self._tables[removed] = {plan.teacher_name(name): c for name, c in costs.items() if name}
            self._tables[removed][""] = costs.get("", [0, 0, 0])
        return self._tables[removed]

    def part_costs(self, plan: Plan) -> dict[str, Cost]:
        """The plan's cost split by part (``down.i``, ``up.j``, ``mid``, ``other``); the parts sum to ``cost``."""
        sums: dict[str, list[int]] = {}
        for name, (p, m, a) in self.table(plan.removed_stages).items():
            if plan.keeps(name):
                acc = sums.setdefault(part_of(name), [0, 0, 0])
                acc[0], acc[1], acc[2] = acc[0] + p, acc[1] + m, acc[2] + a
        return {k: Cost(params=p, macs_paper=m, macs_full=m + a) for k, (p, m, a) in sums.items()}

    def cost(self, plan: Plan) -> Cost:
        """The plan's exact params and MACs (paper convention, and with the attention matmuls)."""
        return total(self.part_costs(plan).values())


def part_of(name: str) -> str:
    """``down.i``, ``up.j``, ``mid`` or ``other`` for a teacher module name."""
    head = name.split(".")
    if head[0] in ("down_blocks", "up_blocks") and len(head) > 1:
        return f"{head[0][:-7]}.{head[1]}"
    return "mid" if head[0] == "mid_block" else "other"


def total(costs) -> Cost:
    costs = list(costs)
    return Cost(params=sum(c.params for c in costs), macs_paper=sum(c.macs_paper for c in costs),
                macs_full=sum(c.macs_full for c in costs))
