"""Budgeted search: the plans inside a cost budget that the sensitivity data predicts hurt the teacher least.

The model: a plan's cost (params, MACs) is exact (``CostModel``); its damage is the sum of the damage of its
options measured alone (``sensitivity``: noise-prediction NMSE + guidance-direction NMSE), and its latency the teacher's minus the sum of the options'
measured savings. Both sums are estimates (effects of removals interact); the best candidates are therefore
re-measured as whole plans (their real damage on the same recorded inputs) before they are proposed.

Two ways to pick, both over the same space and the same estimates (docs/plans.md explains the choice):

- ``exact``: every combination of options is scored (one option per level: its depth choice and both
  attention flags, plus the stages+mid choice; tens of thousands of combinations, numpy sums in well under a
  second), so the best plan under the estimates is found, never missed;
- ``greedy``: from the teacher, repeatedly apply the single change that costs the least damage per unit of
  budget saved until every budget holds. Cheap for any space size, but it can stop at a worse plan (a change
  that saves a lot late can beat two small early ones); the result records whether it matched ``exact``.

Both skip plans that keep fewer than ``min_attention`` blocks with cross-attention (default 1): a plan without
one cannot see the prompt, its damage before distillation is small (the guidance term is 1 at most) and no
distillation gives the prompt back (the digits evidence: chance accuracy at MACs 0.5 and 0.45).
"""

from __future__ import annotations

import itertools
import json
import math
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import BksdmError
from . import topology as T
from .builtin import BUILTIN_PLANS
from .cost import Cost, CostModel
from .plan import Plan, PlanError
from .space import MID_CHOICES, Genome, attention_stages, genome_of, parse_depth_key, stages_mid_key

METRICS = {"macs": "macs_paper", "params": "params", "latency": "latency_s"}
_BUDGET = re.compile(r"^(macs|params|latency)=([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)([kKMGTs]?)$")
_SUFFIX = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "s": 1.0}


class SearchError(BksdmError, ValueError):
    pass


@dataclass(frozen=True)
class Budget:
    """An upper bound on one metric of a U-Net step: ``macs`` (paper convention), ``params`` or ``latency``.

    ``limit`` is absolute (MACs, parameters, seconds); ``text`` is what the user wrote.
    """

    metric: str
    limit: float
    text: str

    def ratio(self, teacher: float) -> float:
        return self.limit / teacher


def parse_budget(text: str, teacher: dict[str, float]) -> Budget:
    """``macs=0.55`` (a fraction of the teacher's), ``macs=200G``, ``params=400M``, ``latency=2.5s``."""
    m = _BUDGET.match(text.strip())
    if not m:
        raise SearchError(f"--budget {text!r}: write METRIC=VALUE with METRIC macs, params or latency and VALUE a "
                          "fraction of the teacher's (0.55) or an absolute amount (200G MACs, 400M params, 2.5s)")
    metric, value, suffix = m[1], float(m[2]), m[3]
    if metric == "latency" and suffix not in ("", "s"):
        raise SearchError(f"--budget {text!r}: latency takes seconds (2.5s) or a fraction of the teacher's (0.6)")
    if metric != "latency" and suffix == "s":
        raise SearchError(f"--budget {text!r}: 's' is for latency; {metric} takes a fraction or k/M/G")
    reference = teacher.get(METRICS[metric])
    if reference is None:
        raise SearchError(f"--budget {text}: the sensitivity run has no {metric} of the teacher (latency needs "
                          "`plan sensitivity --latency-backend ...`)")
    absolute = value * _SUFFIX[suffix] if suffix else (value * reference if value <= 1.0 else value)
    if value <= 0:
        raise SearchError(f"--budget {text!r}: the budget must be positive")
    return Budget(metric=metric, limit=absolute, text=text)


# ---------------------------------------------------------------- estimates from the sensitivity data


class Estimates:
    """Per-option damage and latency saving from a sensitivity document, summed over a genome.

    Damage is the sensitivity row's ``damage`` (NMSE + guidance NMSE); a document from before the guidance error
    existed falls back to ``nmse`` (``metric`` says which).
    """

    def __init__(self, sensitivity: dict[str, Any]):
        self.doc = sensitivity
        rows = sensitivity["options"]
        if not rows or "nmse" not in rows[0]:
            raise SearchError("the sensitivity run has no output error (it ran with --no-error); the search ranks "
                              "plans by it: rerun `plan sensitivity` with the teacher's weights")
        self.metric = "damage" if all("damage" in r for r in rows) else "nmse"
        self.damage = {(r["group"], r["key"]): r[self.metric] for r in rows}
        self.teacher_latency = sensitivity["teacher"].get("latency_s")
        self.saving = {(r["group"], r["key"]): self.teacher_latency - r["latency_s"]
                       for r in rows if self.teacher_latency and r.get("latency_s")}

    def available(self, group: str, key: str) -> bool:
        return key in ("keep", stages_mid_key(0, "whole")) or (group, key) in self.damage

    def damage_of(self, genome: Genome) -> float:
        """Estimated damage: the sum over the genome's non-default options (inf if one was not measured)."""
        total = 0.0
        for group, key in genome.groups().items():
            if key in ("keep", stages_mid_key(0, "whole")):
                continue
            total += self.damage.get((group, key), math.inf)
        return total

    def latency(self, genome: Genome) -> float | None:
        if not self.teacher_latency:
            return None
        saved = 0.0
        for group, key in genome.groups().items():
            if key in ("keep", stages_mid_key(0, "whole")):
                continue
            if (group, key) not in self.saving:
                return None
            saved += self.saving[(group, key)]
        return self.teacher_latency - saved


# ---------------------------------------------------------------- the two searches


@dataclass
class Candidate:
    """A plan, its exact cost and its estimated (and, once measured, real) damage and latency."""

    genome: Genome
    cost: Cost
    damage_estimate: float
    latency_estimate: float | None
    measured: dict[str, float] | None = None
    plan_name: str = ""

    def metric(self, name: str) -> float | None:
        return {"macs": self.cost.macs_paper, "params": self.cost.params, "latency": self.latency_estimate}[name]

    def within(self, budgets: list[Budget], min_attention: int = 0) -> bool:
        return self.genome.attention_kept() >= min_attention and all(
            (v := self.metric(b.metric)) is not None and v <= b.limit * (1 + 1e-12) for b in budgets)


def level_options(est: Estimates, level: int, removed: int) -> list[tuple[tuple, bool, bool]]:
    """(depth, down attention, up attention) choices of a level that the sensitivity data covers."""
    mirror = T.STAGES - 1 - level
    default = Genome().depth[level]
    depths = [default] + [parse_depth_key(key) for group, key in est.damage if group == f"depth.{level}"]
    downs = [True, False] if level in attention_stages("down") and est.available(f"attn.down.{level}", "drop") else [True]
    ups = [True, False] if mirror in attention_stages("up") and est.available(f"attn.up.{mirror}", "drop") else [True]
    return list(itertools.product(depths, downs, ups))


def _with_level(genome: Genome, level: int, choice: tuple) -> Genome:
    depth, down_attn, up_attn = choice
    mirror = T.STAGES - 1 - level
    return replace(
        genome,
        depth=tuple(depth if k == level else genome.depth[k] for k in range(T.STAGES)),
        down_attention=tuple(down_attn if k == level else genome.down_attention[k] for k in range(T.STAGES)),
        up_attention=tuple(up_attn if k == mirror else genome.up_attention[k] for k in range(T.STAGES)),
    )


def exact_search(est: Estimates, costs: CostModel, budgets: list[Budget], *, keep: int = 8, min_attention: int = 0
                 ) -> tuple[list[Candidate], dict[str, Any]]:
    """Score every combination; return the ``keep`` lowest estimated damages within budget (keeping at least
    ``min_attention`` blocks with cross-attention) and the whole cloud.

    Costs, damages and attention counts add up over groups (cost exactly: each level's modules are its own), so
    the totals are numpy outer sums of per-group arrays.
    """
    best: list[tuple[float, int, Genome]] = []
    cloud = {"macs": [], "params": [], "latency": [], "damage": [], "attention": []}
    enumerated = 0
    for removed in range(0, 2):
        mids = [m for m in MID_CHOICES if est.available("stages+mid", stages_mid_key(removed, m))]
        if not mids:
            continue
        base = Genome(removed=removed)
        groups = []  # per group: list of (genome edit, macs, params, latency saving, damage, attention blocks)
        for level in range(T.STAGES - removed):
            rows = []
            for choice in level_options(est, level, removed):
                g = _with_level(base, level, choice)
                parts = costs.part_costs(g.plan())
                c = [parts.get(f"down.{level}"), parts.get(f"up.{T.STAGES - 1 - level}")]
                # this level's own share: the base's stages+mid option is counted once, in the mid group
                rows.append((("level", level, choice), sum(x.macs_paper for x in c if x),
                             sum(x.params for x in c if x), _saving(est, g) - _saving(est, base),
                             est.damage_of(g) - est.damage_of(base), g.attention_kept() - base.attention_kept()))
            groups.append(rows)
        mid_rows = []
        for mid in mids:
            g = replace(base, mid=mid)
            parts = costs.part_costs(g.plan())
            other = [parts.get("mid"), parts.get("other")]
            mid_rows.append((("mid", mid), sum(x.macs_paper for x in other if x), sum(x.params for x in other if x),
                             _saving(est, g), est.damage_of(g), g.attention_kept()))
        groups.append(mid_rows)
        macs = params = saving = damage = attention = np.zeros(())
        for rows in groups:
            col = lambda k: np.array([r[k] for r in rows], dtype=np.float64)  # noqa: E731
            macs = np.add.outer(macs, col(1))
            params = np.add.outer(params, col(2))
            saving = np.add.outer(saving, col(3))
            damage = np.add.outer(damage, col(4))
            attention = np.add.outer(attention, col(5))
        latency = (est.teacher_latency - saving) if est.teacher_latency else np.full(macs.shape, np.nan)
        values = {"macs": macs.ravel(), "params": params.ravel(), "latency": latency.ravel(), "damage": damage.ravel(),
                  "attention": attention.ravel()}
        enumerated += values["damage"].size
        for k in cloud:
            cloud[k].append(values[k])
        idx = np.flatnonzero(_within_mask(values, budgets, min_attention))
        order = idx[np.lexsort((values["macs"][idx], values["damage"][idx]))][:keep]
        shape = macs.shape
        for flat in order:
            g = base
            for rows, i in zip(groups, np.unravel_index(flat, shape)):
                edit = rows[i][0]
                g = _with_level(g, edit[1], edit[2]) if edit[0] == "level" else replace(g, mid=edit[1])
            best.append((float(values["damage"][flat]), float(values["macs"][flat]), g))
    best.sort(key=lambda b: (b[0], b[1]))
    out = [candidate(est, costs, g) for _, _, g in best[:keep]]
    for c, (damage, macs, _) in zip(out, best):
        if c.cost.macs_paper != int(macs) or not math.isclose(c.damage_estimate, damage, rel_tol=1e-9):
            raise SearchError(f"internal: the group sums ({macs:.0f} MACs, damage {damage}) disagree with the "
                              f"plan's ({c.cost.macs_paper} MACs, damage {c.damage_estimate})")
    cloud_arrays = {k: np.concatenate(v) if v else np.zeros(0) for k, v in cloud.items()}
    return out, {"enumerated": enumerated, "cloud": cloud_arrays}


def _saving(est: Estimates, genome: Genome) -> float:
    lat = est.latency(genome)
    return (est.teacher_latency - lat) if (lat is not None and est.teacher_latency) else 0.0


def candidate(est: Estimates, costs: CostModel, genome: Genome) -> Candidate:
    return Candidate(genome=genome, cost=costs.cost(genome.plan()), damage_estimate=est.damage_of(genome),
                     latency_estimate=est.latency(genome))


def neighbours(est: Estimates, genome: Genome) -> list[Genome]:
    """Genomes one group change away that the sensitivity data covers."""
    out = []
    for removed in range(0, 2):
        for mid in MID_CHOICES:
            if (removed, mid) != (genome.removed, genome.mid) and est.available("stages+mid", stages_mid_key(removed, mid)):
                out.append(replace(genome, removed=removed, mid=mid))
    for level in range(T.STAGES - genome.removed):
        current = (genome.depth[level], genome.down_attention[level], genome.up_attention[T.STAGES - 1 - level])
        for choice in level_options(est, level, genome.removed):
            if choice == current:
                continue
            changed = sum(a != b for a, b in zip(choice, current))
            if changed == 1:  # one group at a time
                out.append(_with_level(genome, level, choice))
    return out


def greedy_search(est: Estimates, costs: CostModel, budgets: list[Budget], *, min_attention: int = 0
                  ) -> tuple[Candidate | None, list[str]]:
    """Apply the cheapest-damage-per-saving change (never below ``min_attention`` blocks with cross-attention)
    until every budget holds (or nothing saves more)."""
    current = candidate(est, costs, Genome())
    primary = budgets[0].metric
    steps = []
    while not current.within(budgets):
        best, best_rate = None, math.inf
        for g in neighbours(est, current.genome):
            c = candidate(est, costs, g)
            saved = (current.metric(primary) or 0) - (c.metric(primary) or 0)
            if saved <= 0 or not math.isfinite(c.damage_estimate) or g.attention_kept() < min_attention:
                continue
            rate = (c.damage_estimate - current.damage_estimate) / saved
            if rate < best_rate:
                best, best_rate = c, rate
        if best is None:
            return None, steps
        steps.append(", ".join(f"{k}={v}" for k, v in best.genome.groups().items()
                               if current.genome.groups().get(k) != v))
        current = best
    return current, steps


# ---------------------------------------------------------------- the run


@dataclass(frozen=True)
class SearchConfig:
    """One search.

    Attributes:
        budgets: ``macs=0.55``-style texts (all must hold).
        method: ``exact`` or ``greedy`` (the other is computed too, for the record).
        top: plan files to write.
        candidates: best-estimated plans re-measured as whole plans (needs the teacher's weights).
        measure: re-measure candidates and presets (False: estimates only).
        min_attention: fewest blocks with cross-attention a plan may keep (0 allows plans that ignore the prompt).
    """

    budgets: tuple[str, ...]
    method: str = "exact"
    top: int = 3
    candidates: int = 8
    measure: bool = True
    min_attention: int = 1


def _budget_slug(budgets: list[Budget]) -> str:
    return "-".join(re.sub(r"[^0-9a-zA-Z.]", "", b.text) for b in budgets)


def run_search(sensitivity: dict[str, Any], config: SearchConfig, out_dir: str | Path, *,
               log: Callable[[str], None] = print, probe=None) -> dict[str, Any]:
    """Search plans within the budgets and write them (``plan-1.yaml`` ...) with ``search.{json,md,png}``.

    Args:
        sensitivity: a ``plan sensitivity`` result (``load_sensitivity``).
        config: budgets, method, how many plans.
        out_dir: where the plans and the report go.
        probe: an ``ErrorProbe`` to reuse; built from the sensitivity protocol when measuring and None.
    """
    from ..bench.machine import machine_info
    from .sensitivity import ErrorProbe, ErrorProtocol, load_teacher

    if config.method not in ("exact", "greedy"):
        raise SearchError(f"--method {config.method!r}: choose exact or greedy")
    started = time.time()
    teacher_src = sensitivity["config"]["teacher"]
    teacher_row = sensitivity["teacher"]
    budgets = [parse_budget(text, teacher_row) for text in config.budgets]
    if not budgets:
        raise SearchError("give at least one --budget (macs=0.55, params=0.5, latency=0.6 ...)")
    est = Estimates(sensitivity)
    model = load_teacher(teacher_src, weights=config.measure)
    costs = CostModel(model.unet.config, sensitivity["resolution"], model.vae_scale_factor)
    if costs.teacher.macs_paper != teacher_row["macs_paper"]:
        raise SearchError(f"the teacher {teacher_src} is not the one the sensitivity data was measured on "
                          f"({costs.teacher.macs_paper} vs {teacher_row['macs_paper']} MACs)")
    # 1. Both searches on the estimates.
    exact, info = exact_search(est, costs, budgets, keep=max(config.candidates, config.top),
                               min_attention=config.min_attention)
    exact_best = exact[0] if exact else None  # by estimate; the candidates are re-sorted once measured
    greedy, greedy_steps = greedy_search(est, costs, budgets, min_attention=config.min_attention)
    picked = list(exact) if config.method == "exact" else ([greedy] if greedy else [])
    if not picked:
        reachable = info["cloud"]["macs"][info["cloud"]["attention"] >= config.min_attention]
        if not reachable.size:
            raise SearchError(f"--min-attention {config.min_attention}: the teacher has "
                              f"{Genome().attention_kept()} block(s) with cross-attention")
        floor = reachable.min()
        raise SearchError(f"no plan in the searched space satisfies {', '.join(b.text for b in budgets)} (the "
                          f"smallest MACs reachable: {floor / teacher_row['macs_paper']:.3f} of the teacher's, keeping "
                          f"at least {config.min_attention} block(s) with cross-attention: --min-attention)")
    if greedy is not None and greedy.genome not in [c.genome for c in picked]:
        picked = picked + ([greedy] if config.method == "exact" else [])
    # 2. The presets on the same axes.
    presets = []
    for name, plan in BUILTIN_PLANS.items():
        try:
            presets.append((name, candidate(est, costs, genome_of(plan))))
        except PlanError:
            continue
    # 3. Re-measure the candidates and the presets as whole plans.
    if config.measure:
        from ..student import validate_plan

        if probe is None:
            err = sensitivity["config"]["error"]
            probe = ErrorProbe(model, ErrorProtocol(**{**err, "prompts": tuple(err["prompts"])}), sensitivity["resolution"])
        for c in picked:
            validate_plan(c.genome.plan(), model.unet.config)
            c.measured = probe.measure(c.genome.plan())
        for _, c in presets:
            c.measured = probe.measure(c.genome.plan())
        picked.sort(key=lambda c: (c.measured[est.metric], c.cost.macs_paper))
    # 4. Name and write the proposals.
    slug = _budget_slug(budgets)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    proposals = [c for c in picked if c.within(budgets, config.min_attention)][: config.top]
    for rank, c in enumerate(proposals, 1):
        c.plan_name = f"searched-{slug}-{rank}"
        plan = c.genome.plan(c.plan_name, f"searched for {', '.join(b.text for b in budgets)} on {teacher_src}")
        plan = replace(plan, meta={"search": _record(c, costs, budgets, config, teacher_src, greedy)})
        plan.save(out / f"plan-{rank}.yaml")
    doc = {
        "kind": "plan-search",
        "teacher": teacher_src,
        "resolution": sensitivity["resolution"],
        "budgets": [b.__dict__ for b in budgets],
        "config": config.__dict__ | {"budgets": list(config.budgets)},
        "teacher_cost": {k: teacher_row[k] for k in ("params", "macs_paper", "macs_full")} | {
            "latency_s": est.teacher_latency},
        "enumerated": info["enumerated"],
        "within_budget": int(_within_mask(info["cloud"], budgets, config.min_attention).sum()),
        "proposals": [_record(c, costs, budgets, config, teacher_src, greedy) | {"file": f"plan-{i}.yaml"}
                      for i, c in enumerate(proposals, 1)],
        "candidates": [_record(c, costs, budgets, config, teacher_src, greedy) for c in picked],
        "greedy": {"steps": greedy_steps, "plan": greedy and greedy.genome.plan("greedy").to_dict(),
                   "damage_estimate": greedy and greedy.damage_estimate,
                   "matches_exact_best": bool(greedy and exact_best and greedy.genome == exact_best.genome),
                   "exact_best_damage_estimate": exact_best.damage_estimate if exact_best else None},
        "presets": [_record(c, costs, budgets, config, teacher_src, greedy) | {"name": n} for n, c in presets],
        "machine": machine_info(),
        "wall_s": round(time.time() - started, 1),
        "sensitivity_source": sensitivity.get("source_path"),
    }
    (out / "search.json").write_text(json.dumps(doc, indent=2))
    (out / "search.md").write_text(search_markdown(doc))
    plot_search(doc, info["cloud"], out / "search.png")
    return doc


def _within_mask(cloud: dict[str, np.ndarray], budgets: list[Budget], min_attention: int = 0) -> np.ndarray:
    ok = np.isfinite(cloud["damage"]) & (cloud["attention"] >= min_attention)
    for b in budgets:
        ok &= cloud[b.metric] <= b.limit * (1 + 1e-12)
    return ok


def _record(c: Candidate, costs: CostModel, budgets, config, teacher_src, greedy) -> dict[str, Any]:
    t = costs.teacher
    plan = c.genome.plan(c.plan_name or "candidate")
    return {
        "plan_name": c.plan_name or None,
        "summary": plan.summary(),
        "groups": {k: v for k, v in c.genome.groups().items() if v not in ("keep", stages_mid_key(0, "whole"))},
        "params": c.cost.params, "macs_paper": c.cost.macs_paper,
        "params_ratio": c.cost.params / t.params, "macs_ratio": c.cost.macs_paper / t.macs_paper,
        "damage_estimate": c.damage_estimate, "latency_estimate_s": c.latency_estimate,
        "attention_kept": c.genome.attention_kept(),
        "measured": c.measured, "within_budget": c.within(budgets),
        "found_by": ("exact+greedy" if greedy and c.genome == greedy.genome else "exact"),
        "plan": plan.to_dict(),
    }


def search_markdown(doc: dict[str, Any]) -> str:
    t = doc["teacher_cost"]
    budgets = ", ".join(b["text"] for b in doc["budgets"])
    measured = any(r.get("measured") for r in doc["candidates"])
    lines = [
        f"# Plan search: {doc['teacher']}, budget {budgets}",
        "",
        f"{doc['enumerated']:,} plans scored ({doc['within_budget']:,} within budget) at {doc['resolution']} px; "
        f"method {doc['config']['method']}"
        + (f"; plans keeping fewer than {doc['config'].get('min_attention')} block(s) with cross-attention are not "
           "proposed (they cannot see the prompt)" if doc["config"].get("min_attention") else "") + ". Cost is exact; the damage estimate is the sum of the options' damage "
        "measured alone (sensitivity; damage = NMSE of the noise prediction + NMSE of the guidance direction)" + (", and every candidate below was then measured as a whole plan on the "
                                          "same recorded inputs" if measured else "") + ".",
        "",
        "| plan | pairs kept (teacher: down 2/2/2/2, mid full, up 3/3/3/3) | changes from the teacher | params | MACs "
        "| damage est. | " + ("damage measured | NMSE | guidance NMSE | " if measured else "") + "within budget |",
        "|---|---|---|---:|---:|---:|" + ("---:|---:|---:|" if measured else "") + "---|",
    ]

    def row(name, r):
        m = r.get("measured") or {}
        changes = ", ".join(f"{g}={k}" for g, k in r["groups"].items()) or "none"
        summary = r["summary"].replace("|", "\\|")
        return (f"| {name} | {summary} | {changes} | {r['params_ratio']:.3f} | {r['macs_ratio']:.3f} | "
                f"{r['damage_estimate']:.4f} | " + (f"{m.get('damage', m.get('nmse', math.nan)):.4f} | "
                                                    f"{m.get('nmse', math.nan):.4f} | {m.get('guidance_nmse', math.nan):.4f} | "
                                                    if measured else "") + ("yes" if r["within_budget"] else "no") + " |")

    for r in doc["proposals"]:
        lines.append(row(f"**{r['plan_name']}** (`{r['file']}`)", r))
    for r in doc["candidates"]:
        if not r.get("plan_name"):
            lines.append(row("candidate (" + r["found_by"] + ")", r))
    for r in doc["presets"]:
        lines.append(row(r["name"], r))
    g = doc["greedy"]
    lines += ["", f"Teacher: {t['params']:,} params, {t['macs_paper'] / 1e9:.3f} GMACs"
              + (f", {t['latency_s']:.4g} s per step (estimates from the sensitivity run)" if t.get("latency_s") else "")
              + ". Ratios are student / teacher.", "",
              "Greedy (cheapest damage per unit of budget saved, one change at a time): "
              + (" -> ".join(g["steps"]) if g["steps"] else "no step needed")
              + (f"; estimated damage {g['damage_estimate']:.4f} vs the exact search's best {g['exact_best_damage_estimate']:.4f}"
                 f" ({'the same plan' if g['matches_exact_best'] else 'a different plan'})."
                 if g["damage_estimate"] is not None and g["exact_best_damage_estimate"] is not None else "."), ""]
    return "\n".join(lines)


def _measured(r: dict[str, Any]) -> float:
    m = r["measured"]
    return m.get("damage", m["nmse"])


def plot_search(doc: dict[str, Any], cloud: dict[str, np.ndarray], path: Path) -> Path:
    """Every scored plan (estimated damage vs the first budget's metric), the budget, presets and proposals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = doc["budgets"][0]["metric"]
    ref = {"macs": doc["teacher_cost"]["macs_paper"], "params": doc["teacher_cost"]["params"],
           "latency": doc["teacher_cost"].get("latency_s")}[metric]
    key = {"macs": "macs_ratio", "params": "params_ratio", "latency": None}[metric]

    def x_of(r):
        return r[key] if key else (r["latency_estimate_s"] or math.nan) / ref

    fig, ax = plt.subplots(figsize=(8, 5.5))
    xs, ys = cloud[metric] / ref, cloud["damage"]
    ok = np.isfinite(ys) & (ys > 0)
    ax.scatter(xs[ok], ys[ok], s=3, c="0.8", label="scored plans (estimate)", rasterized=True)
    # lower envelope: the best estimate at each cost
    order = np.argsort(xs[ok])
    env = np.minimum.accumulate(ys[ok][order][::-1])[::-1]
    ax.plot(xs[ok][order], env, c="0.5", lw=1, label="best estimate at or above this cost")
    ax.axvline(doc["budgets"][0]["limit"] / ref, c="tab:red", ls="--", lw=1, label=f"budget {doc['budgets'][0]['text']}")
    for r in doc["presets"]:
        ax.scatter([x_of(r)], [r["damage_estimate"]], marker="s", c="tab:blue", s=40)
        ax.annotate(r["name"], (x_of(r), r["damage_estimate"]), fontsize=8, xytext=(4, 4), textcoords="offset points")
        if r.get("measured"):
            ax.scatter([x_of(r)], [_measured(r)], marker="s", facecolors="none", edgecolors="tab:blue", s=40)
    for r in doc["proposals"]:
        ax.scatter([x_of(r)], [r["damage_estimate"]], marker="*", c="tab:orange", s=120)
        ax.annotate(r["plan_name"].split("-")[-1], (x_of(r), r["damage_estimate"]), fontsize=8, xytext=(4, -10),
                    textcoords="offset points")
        if r.get("measured"):
            ax.scatter([x_of(r)], [_measured(r)], marker="*", facecolors="none", edgecolors="tab:orange", s=120)
    ax.scatter([], [], marker="s", c="tab:blue", label="BK-SDM presets (filled: estimate, hollow: measured)")
    ax.scatter([], [], marker="*", c="tab:orange", s=80, label="searched plans (filled: estimate, hollow: measured)")
    ax.set_xlabel(f"{metric} / teacher" + (" (estimated)" if metric == "latency" else ""))
    ax.set_ylabel("damage of the teacher-initialised student (NMSE + guidance NMSE)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title(f"Plan search on {doc['teacher']} at {doc['resolution']} px", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


__all__ = ["Budget", "parse_budget", "Estimates", "exact_search", "greedy_search", "SearchConfig", "run_search"]
