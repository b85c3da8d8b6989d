"""The space of expressible plans, as groups of options that sensitivity measures and search combines.

A plain diffusers U-Net ties an up stage's pair count to its mirrored down stage's (see ``plan.py``), so the
unit of depth removal is a *level*: one pair of down stage L together with one pair of its mirror, up stage
3-L. The groups:

- ``depth.L`` (L = 0..3): keep both pairs (the teacher), or one down pair and two up pairs, with a weight map
  (which teacher pairs initialise them; the paper's is ``down[0] up[0,2]``);
- ``attn.down.i`` / ``attn.up.j``: keep or drop a stage's attentions (stages with attention in the teacher);
- ``stages+mid``: how many innermost stages are removed (0 or 1, BK-SDM-Tiny's) together with the mid block
  (whole, one resnet, none): the mid block runs one level up when the innermost stage is gone, so the two
  are measured together.

A ``Genome`` holds one choice per group and turns into a ``Plan``; every plan in the space has one genome
(``genome_of``), the BK-SDM presets included.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from dataclasses import dataclass
from typing import Iterable

from . import topology as T
from .plan import Block, Plan, PlanError

MID_CHOICES = {"whole": Block((0, 1), (0,)), "resnet0": Block((0,)), "resnet1": Block((1,)), "none": None}
FULL_DOWN = tuple(range(T.DOWN_PAIRS))
FULL_UP = tuple(range(T.UP_PAIRS))
PAPER_DEPTH = ((0,), (0, 2))
MAX_REMOVED = 1  # BK-SDM-Tiny's removal; two stages would leave a two-level U-Net


@dataclass(frozen=True)
class Genome:
    """One choice per group. ``depth[L]`` is (down pairs, up pairs) of level L (down stage L, up stage 3-L)."""

    removed: int = 0
    mid: str = "whole"
    depth: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...] = ((FULL_DOWN, FULL_UP),) * T.STAGES
    down_attention: tuple[bool, ...] = (True,) * T.STAGES
    up_attention: tuple[bool, ...] = (True,) * T.STAGES

    def __post_init__(self):
        # Genes of removed stages mean nothing: reset them, so equal genomes are equal plans.
        if self.removed:
            gone = range(T.STAGES - self.removed, T.STAGES)
            object.__setattr__(self, "depth", tuple((FULL_DOWN, FULL_UP) if k in gone else d
                                                    for k, d in enumerate(self.depth)))
            object.__setattr__(self, "down_attention", tuple(True if k in gone else a
                                                             for k, a in enumerate(self.down_attention)))
            object.__setattr__(self, "up_attention", tuple(True if T.STAGES - 1 - k in gone else a
                                                           for k, a in enumerate(self.up_attention)))

    def plan(self, name: str = "plan", description: str = "") -> Plan:
        down: list[Block | None] = []
        up: list[Block | None] = [None] * T.STAGES
        for level in range(T.STAGES):
            mirror = T.STAGES - 1 - level
            if level >= T.STAGES - self.removed:
                down.append(None)
                continue
            d, u = self.depth[level]
            down.append(Block(d, d if T.down_has_attention(level) and self.down_attention[level] else ()))
            up[mirror] = Block(u, u if T.up_has_attention(mirror) and self.up_attention[mirror] else ())
        return Plan(name=name, down=tuple(down), mid=MID_CHOICES[self.mid], up=tuple(up), description=description)

    def attention_kept(self) -> int:
        """Blocks of the plan that keep cross-attention (down stages, the mid block, up stages): the only places
        the prompt enters the U-Net."""
        plan = self.plan()
        return sum(1 for b in (*plan.down, plan.mid, *plan.up) if b is not None and b.attentions)

    def groups(self) -> dict[str, str]:
        """The option chosen in every group (``option_key`` values); defaults included."""
        out = {"stages+mid": stages_mid_key(self.removed, self.mid)}
        for level in range(T.STAGES - self.removed):
            out[f"depth.{level}"] = depth_key(*self.depth[level])
        for i in attention_stages("down"):
            if i < T.STAGES - self.removed:
                out[f"attn.down.{i}"] = "keep" if self.down_attention[i] else "drop"
        for j in attention_stages("up"):
            if j >= self.removed:
                out[f"attn.up.{j}"] = "keep" if self.up_attention[j] else "drop"
        return out


def attention_stages(kind: str) -> list[int]:
    has = T.down_has_attention if kind == "down" else T.up_has_attention
    return [i for i in range(T.STAGES) if has(i)]


def depth_key(down: tuple[int, ...], up: tuple[int, ...]) -> str:
    return "keep" if (down, up) == (FULL_DOWN, FULL_UP) else f"down{list(down)}+up{list(up)}".replace(" ", "")


def parse_depth_key(key: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The inverse of ``depth_key`` for a reduced level (``down[0]+up[0,2]``)."""
    m = re.fullmatch(r"down\[([0-9,]*)\]\+up\[([0-9,]*)\]", key)
    if not m:
        raise PlanError(f"not a depth option: {key!r}")
    return tuple(int(k) for k in m[1].split(",")), tuple(int(k) for k in m[2].split(","))


def stages_mid_key(removed: int, mid: str) -> str:
    return f"removed{removed}+mid-{mid}"


@dataclass(frozen=True)
class Option:
    """One choice of one group, applied alone to the teacher (``genome``) for the sensitivity analysis."""

    group: str
    key: str
    label: str
    genome: Genome

    @property
    def name(self) -> str:
        return f"{self.group}={self.key}"

    @property
    def is_default(self) -> bool:
        return self.genome == Genome()


def depth_choices(maps: str = "all") -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Reduced (down pairs, up pairs) of a level: the paper's map only, or every map of one down and two up pairs."""
    if maps == "paper":
        return [PAPER_DEPTH]
    downs = [(k,) for k in FULL_DOWN]
    ups = list(itertools.combinations(FULL_UP, T.UP_PAIRS - 1))
    return [PAPER_DEPTH] + [(d, u) for d in downs for u in ups if (d, u) != PAPER_DEPTH]


def options(maps: str = "all") -> list[Option]:
    """Every single-group change from the teacher (not yet checked against a teacher's shapes)."""
    out: list[Option] = []
    base = Genome()
    for removed in range(MAX_REMOVED + 1):
        for mid in MID_CHOICES:
            if (removed, mid) == (0, "whole"):
                continue
            label = (f"remove the innermost stage{'s' if removed > 1 else ''} (down_blocks.{T.STAGES - 1}, "
                     f"up_blocks.0), " if removed else "") + {
                "whole": "keep the whole mid block", "resnet0": "mid block: resnet 0 only",
                "resnet1": "mid block: resnet 1 only", "none": "remove the mid block"}[mid]
            out.append(Option("stages+mid", stages_mid_key(removed, mid), label,
                              dataclasses.replace(base, removed=removed, mid=mid)))
    for level in range(T.STAGES):
        for d, u in depth_choices(maps):
            depth = tuple((d, u) if k == level else base.depth[k] for k in range(T.STAGES))
            label = (f"one pair fewer in down_blocks.{level} (keep {list(d)}) and up_blocks.{T.STAGES - 1 - level} "
                     f"(keep {list(u)})")
            out.append(Option(f"depth.{level}", depth_key(d, u), label, dataclasses.replace(base, depth=depth)))
    for i in attention_stages("down"):
        flags = tuple(k != i for k in range(T.STAGES))
        out.append(Option(f"attn.down.{i}", "drop", f"drop the attentions of down_blocks.{i}",
                          dataclasses.replace(base, down_attention=flags)))
    for j in attention_stages("up"):
        flags = tuple(k != j for k in range(T.STAGES))
        out.append(Option(f"attn.up.{j}", "drop", f"drop the attentions of up_blocks.{j}",
                          dataclasses.replace(base, up_attention=flags)))
    return out


def genome_of(plan: Plan) -> Genome:
    """The genome of a plan in the space (``PlanError`` for one outside it, e.g. stages with other maps)."""
    removed = plan.removed_stages
    if removed > MAX_REMOVED:
        raise PlanError(f"plan {plan.name!r} removes {removed} stages; the search space removes at most {MAX_REMOVED}")
    mid = next((k for k, v in MID_CHOICES.items() if v == plan.mid), None)
    if mid is None:
        raise PlanError(f"plan {plan.name!r}: mid block {plan.mid} is not one of the searched choices")
    depth, down_attn, up_attn = list(Genome().depth), [True] * T.STAGES, [True] * T.STAGES
    for level in range(T.STAGES - removed):
        mirror = T.STAGES - 1 - level
        d, u = plan.down[level], plan.up[mirror]
        depth[level] = (d.resnets, u.resnets)
        down_attn[level] = bool(d.attentions) or not T.down_has_attention(level)
        up_attn[mirror] = bool(u.attentions) or not T.up_has_attention(mirror)
    return Genome(removed=removed, mid=mid, depth=tuple(depth), down_attention=tuple(down_attn),
                  up_attention=tuple(up_attn))


def group_names(removed: int = 0) -> list[str]:
    return list(Genome(removed=removed).groups())


def unique(plans: Iterable[Plan]) -> list[Plan]:
    seen, out = set(), []
    for p in plans:
        if p.structure not in seen:
            seen.add(p.structure)
            out.append(p)
    return out
