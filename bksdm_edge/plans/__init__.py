"""Block-removal plans: plans as data, recognising existing students, sensitivity and budgeted search.

See docs/plans.md. ``Plan`` (plan.py) is the data; ``resolve_plan`` (resolve.py) reads a name, file or
student folder; ``cost`` accounts params/MACs exactly; ``sensitivity`` and ``search`` do the analysis.
"""

from .builtin import BUILTIN_PLANS
from .plan import Block, Plan, PlanError, full_plan, load_plan
from .resolve import KnownStudent, describe_student, plan_of_unet_config, resolve_plan

__all__ = ["BUILTIN_PLANS", "Block", "Plan", "PlanError", "KnownStudent", "describe_student", "full_plan",
           "load_plan", "plan_of_unet_config", "resolve_plan"]
