"""The BK-SDM variants: the paper's three removal plans by name.

A variant is a ``bksdm_edge.plans.Plan`` (config removals, teacher-to-student weight map, feature-KD
pairs, all derived from one data structure); the three built-ins live in ``plans/builtin.py``. This
module keeps the names older code imports.
"""

from __future__ import annotations

from .plans.builtin import BUILTIN_PLANS
from .plans.plan import Plan
from .plans.resolve import UnknownPlanError, resolve_plan

Variant = Plan
UnknownVariantError = UnknownPlanError
VARIANTS: dict[str, Plan] = BUILTIN_PLANS


def get_variant(name) -> Plan:
    """A built-in plan by name, or a plan file / ``Plan`` (see ``plans.resolve_plan``)."""
    return resolve_plan(name)
