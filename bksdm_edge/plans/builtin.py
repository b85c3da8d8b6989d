"""The BK-SDM paper's three compact U-Nets (arXiv 2305.15798, Sec. 3.1) as built-in plans.

Base drops the second pair of each down stage and the middle pair of each up stage (up stages keep the
teacher's first and last pair); Small also drops the mid block; Tiny also drops the innermost stage
(``down_blocks.3`` and its mirror ``up_blocks.0``). Their configs, weight maps and feature-KD pairs come
from the same ``Plan`` code as any plan file.
"""

from __future__ import annotations

import dataclasses

from . import topology as T
from .plan import Block, Plan


def _down(i: int) -> Block:
    return Block((0,), (0,) if T.down_has_attention(i) else ())


def _up(j: int) -> Block:
    return Block((0, 2), (0, 2) if T.up_has_attention(j) else ())


BK_BASE = Plan(
    name="bk-base",
    description="fewer blocks: one resnet/attention pair per down stage, two per up stage",
    down=tuple(_down(i) for i in range(T.STAGES)),
    mid=Block((0, 1), (0,)),
    up=tuple(_up(j) for j in range(T.STAGES)),
)
BK_SMALL = dataclasses.replace(BK_BASE, name="bk-small", description="bk-base without the mid block", mid=None)
BK_TINY = dataclasses.replace(
    BK_SMALL,
    name="bk-tiny",
    description="bk-small without the innermost down stage and the first up stage",
    down=BK_SMALL.down[:-1] + (None,),
    up=(None,) + BK_SMALL.up[1:],
)

BUILTIN_PLANS: dict[str, Plan] = {p.name: p.check() for p in (BK_BASE, BK_SMALL, BK_TINY)}
