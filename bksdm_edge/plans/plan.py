"""A block-removal plan: which parts of an SD-v1/SD-v2 U-Net a student keeps, and where its weights come from.

A plan names, per teacher stage, the teacher's resnet and attention indices the student keeps, in
student order. That list *is* the weight map: student ``down_blocks.1.resnets.0`` is initialised from
teacher ``down_blocks.1.resnets.{plan.down[1].resnets[0]}``. A removed stage is ``None`` (only the
innermost stages, down and up together, as BK-SDM-Tiny does). The plan also derives the student's
diffusers config and the feature-distillation pairs, so BK-SDM Base/Small/Tiny and any searched plan
go through the same code. File format: docs/plans.md.

Which plans a plain diffusers ``UNet2DConditionModel`` can express (``Plan.problems`` refuses the rest):

- an up stage keeps exactly one pair more than its mirrored down stage (each kept down pair feeds one
  skip connection that one up resnet consumes; diffusers builds ``layers_per_block[i] + 1`` up resnets);
- a stage keeps the attentions of all its kept pairs or of none (a cross-attention block has one
  attention per resnet; without them it is a ``DownBlock2D``/``UpBlock2D``);
- the mid block is whole, one resnet without attention (``UNetMidBlock2D``) or removed;
- only the innermost stages can be removed, each with its mirrored up stage.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..errors import BksdmError
from . import topology as T

PLAN_FORMAT_VERSION = 1
_STAGE_KEYS = {"resnets", "attentions"}
_TOP_KEYS = {"name", "description", "down", "mid", "up", "meta", "version"}
_PAIR = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions)\.(\d+)(\..*)?$")
_STAGE = re.compile(r"^(down_blocks|up_blocks)\.(\d+)(\..*)?$")
_MID = re.compile(r"^mid_block\.(resnets|attentions)\.(\d+)(\..*)?$")


class PlanError(BksdmError, ValueError):
    """A plan that cannot be read or built; the message lists every reason."""


@dataclass(frozen=True)
class Block:
    """What a student keeps of one teacher stage: teacher resnet and attention indices, in student order."""

    resnets: tuple[int, ...]
    attentions: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, list[int]]:
        return {"resnets": list(self.resnets), "attentions": list(self.attentions)}


def _where(kind: str, stage: int | None = None) -> str:
    return "mid_block" if kind == "mid" else f"{kind}_blocks.{stage}"


@dataclass(frozen=True)
class Plan:
    """One removal plan (see the module docstring).

    Attributes:
        name: what reports call it (``bk-small``, ``searched-macs0.55-1``, a file stem).
        down: one entry per teacher down stage: the ``Block`` kept, or None when the stage is removed.
        mid: the mid block kept (``Block((0, 1), (0,))`` whole, ``Block((0,))`` one resnet) or None.
        up: one entry per teacher up stage, as ``down``.
        description: one line for humans.
        meta: provenance written by the tools (search budget, estimated cost); not part of the structure.
    """

    name: str
    down: tuple[Block | None, ...]
    mid: Block | None
    up: tuple[Block | None, ...]
    description: str = ""
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    # ------------------------------------------------------------------ structure

    @property
    def structure(self) -> tuple:
        """Everything that decides the student and its initialisation (not the name)."""
        return (self.down, self.mid, self.up)

    @property
    def kept_down(self) -> list[int]:
        """Teacher indices of the kept down stages; student down stage s is teacher stage ``kept_down[s]``."""
        return [i for i, b in enumerate(self.down) if b is not None]

    @property
    def kept_up(self) -> list[int]:
        """Teacher indices of the kept up stages; student up stage s is teacher stage ``kept_up[s]``."""
        return [i for i, b in enumerate(self.up) if b is not None]

    @property
    def removed_stages(self) -> int:
        return len(self.down) - len(self.kept_down)

    def problems(self) -> list[str]:
        """Every reason this plan cannot be built as a plain diffusers U-Net from an SD teacher (empty: fine)."""
        out: list[str] = []
        if len(self.down) != T.STAGES or len(self.up) != T.STAGES:
            return [f"a plan lists {T.STAGES} down and {T.STAGES} up stages (SD-v1/v2 U-Nets have {T.STAGES}); "
                    f"this one lists {len(self.down)} and {len(self.up)}"]
        for i, b in enumerate(self.down):
            if b is not None:
                out += _block_problems(b, _where("down", i), T.DOWN_PAIRS, T.down_has_attention(i))
        for j, b in enumerate(self.up):
            if b is not None:
                out += _block_problems(b, _where("up", j), T.UP_PAIRS, T.up_has_attention(j))
        out += _mid_problems(self.mid)
        # Removed stages: the innermost ones, each with its mirror.
        removed = [i for i, b in enumerate(self.down) if b is None]
        if removed and removed != list(range(T.STAGES - len(removed), T.STAGES)):
            out.append(f"down stages {removed} are removed; only the innermost stages can be removed (a removed "
                       f"stage {T.STAGES - 1} first, then {T.STAGES - 2}, ...): the channels of the stages around "
                       "a hole would not match")
        if 0 in removed:
            out.append("every stage is removed; a student keeps at least down_blocks.0 and its mirror")
        for i in range(T.STAGES):
            mirror = T.STAGES - 1 - i
            d, u = self.down[i], self.up[mirror]
            if (d is None) != (u is None):
                gone, kept = (_where("down", i), _where("up", mirror)) if d is None else (
                    _where("up", mirror), _where("down", i))
                out.append(f"{gone} is removed but its mirror {kept} is kept; remove both or neither (the up stage "
                           "consumes the down stage's skip connections)")
            elif d is not None and d.resnets and u.resnets and len(u.resnets) != len(d.resnets) + 1:
                out.append(
                    f"{_where('up', mirror)} keeps {len(u.resnets)} pair(s) but its mirror {_where('down', i)} keeps "
                    f"{len(d.resnets)}: every kept down pair feeds one skip connection that one up resnet consumes, "
                    f"so the up stage must keep {len(d.resnets) + 1} (diffusers builds layers_per_block + 1 up "
                    "resnets); drop or keep a down pair together with an up pair")
        return out

    def check(self, where: str = "") -> Plan:
        """Raise ``PlanError`` listing every problem; returns the plan when it is fine."""
        problems = self.problems()
        if problems:
            raise PlanError(f"plan {self.name!r}{' (' + where + ')' if where else ''} cannot be built: "
                            + "; ".join(problems))
        return self

    # ------------------------------------------------------------------ student config and weight map

    def student_config(self, teacher_config: Any) -> dict[str, Any]:
        """The student's ``UNet2DConditionModel`` config: the teacher's with this plan's removals applied."""
        config = {k: v for k, v in dict(teacher_config).items() if not k.startswith("_")}
        n = len(self.kept_down)
        config["down_block_types"] = [
            t if self.down[i].attentions else T.WITHOUT_ATTENTION.get(t, t)
            for i, t in enumerate(list(config["down_block_types"])[:n])
        ]
        config["up_block_types"] = [
            t if self.up[j].attentions else T.WITHOUT_ATTENTION.get(t, t)
            for j, t in enumerate(config["up_block_types"]) if self.up[j] is not None
        ]
        per_stage = [len(self.down[i].resnets) for i in self.kept_down]
        config["layers_per_block"] = per_stage[0] if len(set(per_stage)) == 1 else per_stage
        if self.mid is None:
            config["mid_block_type"] = None
        elif not self.mid.attentions:
            config["mid_block_type"] = T.MID_WITHOUT_ATTENTION
        for key in T.PER_STAGE_FIELDS:
            if isinstance(config.get(key), (list, tuple)):
                config[key] = list(config[key])[:n]
        return config

    def teacher_name(self, student_name: str) -> str:
        """The teacher module/tensor that initialises ``student_name`` (a module or parameter name)."""
        m = _PAIR.match(student_name)
        if m:
            kind, s, sub, k, rest = m[1], int(m[2]), m[3], int(m[4]), m[5] or ""
            stages, blocks = (self.kept_down, self.down) if kind == "down_blocks" else (self.kept_up, self.up)
            t = stages[s]
            kept = blocks[t].resnets if sub == "resnets" else blocks[t].attentions
            return f"{kind}.{t}.{sub}.{kept[k]}{rest}"
        m = _STAGE.match(student_name)
        if m:  # a stage itself, or its down/upsampler
            stages = self.kept_down if m[1] == "down_blocks" else self.kept_up
            return f"{m[1]}.{stages[int(m[2])]}{m[3] or ''}"
        m = _MID.match(student_name)
        if m and self.mid is not None:
            kept = self.mid.resnets if m[1] == "resnets" else self.mid.attentions
            return f"mid_block.{m[1]}.{kept[int(m[2])]}{m[3] or ''}"
        return student_name

    def keeps(self, teacher_name: str) -> bool:
        """Whether the student keeps the teacher module or tensor ``teacher_name`` (some student part maps to it)."""
        m = _PAIR.match(teacher_name)
        if m:
            block = (self.down if m[1] == "down_blocks" else self.up)[int(m[2])]
            return block is not None and int(m[4]) in (block.resnets if m[3] == "resnets" else block.attentions)
        m = _STAGE.match(teacher_name)
        if m:
            stage = int(m[2])
            if m[1] == "down_blocks":
                # the student's innermost stage has no downsampler
                if self.down[stage] is None:
                    return False
                return not ((m[3] or "").startswith(".downsamplers") and stage == self.kept_down[-1])
            return self.up[stage] is not None
        m = _MID.match(teacher_name)
        if m:
            return self.mid is not None and int(m[2]) in (self.mid.resnets if m[1] == "resnets" else self.mid.attentions)
        if teacher_name == "mid_block" or teacher_name.startswith("mid_block."):
            return self.mid is not None
        return True

    @property
    def feature_pairs(self) -> tuple[tuple[str, str], ...]:
        """(teacher module, student module) pairs whose outputs the feature-KD loss matches.

        The output of every kept down and up stage is matched with the teacher stage it comes from. A down
        stage that lost its downsampler (the new innermost stage when stages are removed) is matched before
        the downsampler: the teacher's last attention's ``proj_out`` with the student's (BK-SDM-Tiny's pair),
        or, when the student dropped that stage's attentions, the teacher's last pair with the student's last
        resnet. The mid block is not matched (as in the paper).
        """
        pairs: list[tuple[str, str]] = []
        kept = self.kept_down
        for s, t in enumerate(kept):
            block = self.down[t]
            if s == len(kept) - 1 and t != T.STAGES - 1:
                last = T.DOWN_PAIRS - 1
                if T.down_has_attention(t) and block.attentions:
                    pairs.append((f"down_blocks.{t}.attentions.{last}.proj_out",
                                  f"down_blocks.{s}.attentions.{len(block.attentions) - 1}.proj_out"))
                else:
                    teacher_last = f"attentions.{last}" if T.down_has_attention(t) else f"resnets.{last}"
                    pairs.append((f"down_blocks.{t}.{teacher_last}", f"down_blocks.{s}.resnets.{len(block.resnets) - 1}"))
            else:
                pairs.append((f"down_blocks.{t}", f"down_blocks.{s}"))
        pairs += [(f"up_blocks.{t}", f"up_blocks.{s}") for s, t in enumerate(self.kept_up)]
        return tuple(pairs)

    # ------------------------------------------------------------------ text

    def summary(self) -> str:
        """One line: pairs per stage, attentions, mid block."""
        def stage(b: Block | None, has_attention: bool) -> str:
            if b is None:
                return "removed"
            return f"{len(b.resnets)}{'' if b.attentions or not has_attention else '-attn'}"

        down = "/".join(stage(b, T.down_has_attention(i)) for i, b in enumerate(self.down))
        up = "/".join(stage(b, T.up_has_attention(j)) for j, b in enumerate(self.up))
        mid = "none" if self.mid is None else ("full" if self.mid.attentions else f"resnet{self.mid.resnets[0]}")
        return f"down {down} | mid {mid} | up {up}"

    # ------------------------------------------------------------------ files

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"version": PLAN_FORMAT_VERSION, "name": self.name}
        if self.description:
            d["description"] = self.description
        d["down"] = [b.to_dict() if b else None for b in self.down]
        d["mid"] = self.mid.to_dict() if self.mid else None
        d["up"] = [b.to_dict() if b else None for b in self.up]
        if self.meta:
            d["meta"] = self.meta
        return d

    def save(self, path: str | Path) -> Path:
        """Write the plan as YAML (``.yaml``/``.yml``) or JSON (anything else)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix in (".yaml", ".yml"):
            import yaml

            header = ("# bksdm-edge removal plan (docs/plans.md). Per teacher stage: the teacher resnet/attention\n"
                      "# indices the student keeps, in student order (this is the weight map); null removes a stage.\n")
            path.write_text(header + yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None))
        else:
            path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def from_dict(cls, d: Any, *, name: str = "", where: str = "") -> Plan:
        """Read a plan dict (file format in docs/plans.md); every problem is reported at once."""
        where = where or "plan"
        if not isinstance(d, dict):
            raise PlanError(f"{where}: a plan is a mapping with keys down, mid, up (docs/plans.md), got "
                            f"{type(d).__name__}")
        problems = [f"unknown key {k!r} (known: {', '.join(sorted(_TOP_KEYS))})" for k in d if k not in _TOP_KEYS]
        if d.get("version", PLAN_FORMAT_VERSION) != PLAN_FORMAT_VERSION:
            problems.append(f"version {d['version']!r} (this bksdm-edge reads version {PLAN_FORMAT_VERSION})")
        for key in ("down", "up"):
            if key not in d:
                problems.append(f"missing {key!r}: a list of {T.STAGES} stages")
            elif not isinstance(d[key], list):
                problems.append(f"{key!r} must be a list of {T.STAGES} stages, got {type(d[key]).__name__}")
        if "mid" not in d:
            problems.append("missing 'mid' (a stage mapping, or null to remove the mid block)")
        if problems:
            raise PlanError(f"{where}: " + "; ".join(problems))

        def stage(value: Any, label: str, has_attention: bool, default_attention: bool = True) -> Block | None:
            if value is None:
                return None
            if not isinstance(value, dict):
                problems.append(f"{label}: a stage is a mapping {{resnets: [...], attentions: [...]}} or null, "
                                f"got {value!r}")
                return None
            problems.extend(f"{label}: unknown key {k!r} (known: resnets, attentions)" for k in value
                            if k not in _STAGE_KEYS)
            resnets = _int_list(value.get("resnets"), f"{label}.resnets", problems)
            if "attentions" in value:
                attentions = _int_list(value["attentions"], f"{label}.attentions", problems)
            else:  # default: the attentions of the kept pairs, where the teacher has them
                attentions = resnets if has_attention and default_attention else ()
            return Block(resnets, attentions)

        down = tuple(stage(v, f"down_blocks.{i}", i < T.STAGES and T.down_has_attention(i))
                     for i, v in enumerate(d["down"]))
        up = tuple(stage(v, f"up_blocks.{j}", j < T.STAGES and T.up_has_attention(j)) for j, v in enumerate(d["up"]))
        mid_value = d["mid"]
        whole_mid = isinstance(mid_value, dict) and len(mid_value.get("resnets") or []) == T.MID_RESNETS
        mid = stage(mid_value, "mid_block", True, default_attention=whole_mid)
        if problems:
            raise PlanError(f"{where}: " + "; ".join(problems))
        plan_name = d.get("name") or name or "custom"
        meta = d.get("meta") or {}
        return cls(name=str(plan_name), down=down, mid=mid, up=up, description=str(d.get("description") or ""),
                   meta=dict(meta) if isinstance(meta, dict) else {"note": meta}).check(where)


def _int_list(value: Any, label: str, problems: list[str]) -> tuple[int, ...]:
    if value is None:
        problems.append(f"{label} is missing (a list of teacher indices)")
        return ()
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        problems.append(f"{label} must be a list of integers, got {value!r}")
        return ()
    return tuple(value)


def _block_problems(b: Block, where: str, pairs: int, has_attention: bool) -> list[str]:
    out = []
    if not b.resnets:
        out.append(f"{where} keeps no resnet/attention pair: a stage cannot be emptied (only the innermost stages "
                   "can be removed, with null, together with their mirrored up stage)")
    bad = sorted({k for k in b.resnets + b.attentions if not 0 <= k < pairs})
    if bad:
        out.append(f"{where}: indices {bad} do not exist (the teacher stage has pairs 0-{pairs - 1})")
    for label, idx in (("resnets", b.resnets), ("attentions", b.attentions)):
        if list(idx) != sorted(set(idx)):
            out.append(f"{where}.{label} {list(idx)} must be increasing without repeats (the student keeps the "
                       "teacher's order)")
    if b.attentions and not has_attention:
        out.append(f"{where} has no attentions in the teacher; remove attentions {list(b.attentions)}")
    orphans = [k for k in b.attentions if k not in b.resnets]
    if orphans:
        out.append(f"{where} keeps attention(s) {orphans} without their resnet(s): an attention sits on the resnet "
                   "of its pair; keep the resnet too or drop the attention")
    elif b.attentions and b.attentions != b.resnets:
        out.append(f"{where} keeps attentions {list(b.attentions)} of pairs {list(b.resnets)}: a diffusers "
                   "cross-attention block has one attention per resnet, so keep the attentions of all kept pairs "
                   "or of none (attentions: [])")
    return out


def _mid_problems(mid: Block | None) -> list[str]:
    if mid is None:
        return []
    where = "mid_block"
    if not mid.resnets:
        return [f"{where} keeps no resnet; write mid: null to remove the mid block"]
    out = []
    bad = [k for k in mid.resnets if not 0 <= k < T.MID_RESNETS] + [k for k in mid.attentions
                                                                     if not 0 <= k < T.MID_ATTENTIONS]
    if bad:
        out.append(f"{where}: indices {bad} do not exist (the teacher's mid block has resnets 0-1 and attention 0)")
    elif mid.attentions and len(mid.resnets) < T.MID_RESNETS:
        out.append(f"{where} keeps its attention without both resnets: the cross-attention mid block is "
                   "resnet-attention-resnet; keep resnets [0, 1] or drop the attention")
    elif not mid.attentions and len(mid.resnets) != 1:
        out.append(f"{where} keeps resnets {list(mid.resnets)} without the attention: diffusers' attention-free mid "
                   "block (UNetMidBlock2D) has one resnet; keep one of them, or keep the attention too")
    return out


def load_plan(path: str | Path) -> Plan:
    """Read a plan file (YAML or JSON); the file stem names a plan without a ``name``."""
    path = Path(path)
    if not path.is_file():
        raise PlanError(f"plan file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as err:  # noqa: BLE001 - any parse error is the user's file
        raise PlanError(f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {err}") from err
    return Plan.from_dict(data, name=path.stem, where=str(path))


def full_plan(name: str = "teacher") -> Plan:
    """The plan that keeps everything: the teacher's own structure."""
    down = tuple(Block(tuple(range(T.DOWN_PAIRS)), tuple(range(T.DOWN_PAIRS)) if T.down_has_attention(i) else ())
                 for i in range(T.STAGES))
    up = tuple(Block(tuple(range(T.UP_PAIRS)), tuple(range(T.UP_PAIRS)) if T.up_has_attention(j) else ())
               for j in range(T.STAGES))
    return Plan(name=name, down=down, mid=Block((0, 1), (0,)), up=up, description="no removal")


def plan_names(plans: Iterable[Plan]) -> str:
    return ", ".join(p.name for p in plans)
