"""`plan show`, `plan sensitivity` and `plan search` on the toy teacher (seconds, not minutes)."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel

from bksdm_edge.builtins import BUILTINS
from bksdm_edge.cli import main
from bksdm_edge.errors import BksdmError
from bksdm_edge.plans import BUILTIN_PLANS, load_plan
from bksdm_edge.plans.cost import CostModel
from bksdm_edge.plans.search import Budget, Estimates, SearchError, exact_search, greedy_search, parse_budget
from bksdm_edge.plans.space import MID_CHOICES, Genome, genome_of, options
from bksdm_edge.profiler import profile_component

from _plans_helpers import docs_example

pytestmark = pytest.mark.usefixtures("one_thread")
TEACHER = "builtin:tiny-sd"
SMALL = ["--num-prompts", "1", "--steps", "2", "--inputs", "4", "--batch", "4", "--maps", "paper", "--no-progress"]


@pytest.fixture(scope="module")
def sensitivity(tmp_path_factory):
    out = tmp_path_factory.mktemp("sens")
    torch.set_num_threads(1)
    assert main(["plan", "sensitivity", "--teacher", TEACHER, "--out", str(out), *SMALL]) == 0
    return out


def test_sensitivity_measures_every_option(sensitivity):
    doc = json.loads((sensitivity / "sensitivity.json").read_text())
    groups = {r["group"] for r in doc["options"]}
    assert groups == {f"depth.{i}" for i in range(4)} | {"attn.down.0", "attn.down.1", "attn.down.2", "attn.up.1",
                                                          "attn.up.2", "attn.up.3", "stages+mid"}
    assert len([r for r in doc["options"] if r["group"] == "stages+mid"]) == 7
    costs = CostModel(BUILTINS["tiny-sd"].unet)
    for r in doc["options"]:
        plan = load_plan(sensitivity / r["plan_file"])
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(plan.student_config(BUILTINS["tiny-sd"].unet))
        assert profile_component(unet, "unet", resolution=64).macs_paper == r["macs_paper"] < costs.teacher.macs_paper
        assert 0 <= r["nmse"] and -1 <= r["cosine"] <= 1 and np.isfinite(r["psnr_db"])
        assert r["damage"] == pytest.approx(r["nmse"] + r["guidance_nmse"]) and -1 <= r["guidance_cosine"] <= 1
    assert doc["error_inputs"] == 4
    md = (sensitivity / "sensitivity.md").read_text()
    assert "| depth.0 | down[0]+up[0,2] |" in md and "AMD" in md or "Machine:" in md
    assert (sensitivity / "sensitivity.png").stat().st_size > 10_000


def test_search_writes_plans_within_the_budget(sensitivity, tmp_path, capsys):
    out = tmp_path / "search"
    assert main(["plan", "search", "--sensitivity", str(sensitivity), "--budget", "macs=0.6", "--out", str(out),
                 "--top", "2"]) == 0
    assert "searched-macs0.6-1" in capsys.readouterr().out
    doc = json.loads((out / "search.json").read_text())
    teacher = CostModel(BUILTINS["tiny-sd"].unet).teacher
    for k in (1, 2):
        plan = load_plan(out / f"plan-{k}.yaml")
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(plan.student_config(BUILTINS["tiny-sd"].unet))
        assert profile_component(unet, "unet", resolution=64).macs_paper <= 0.6 * teacher.macs_paper
        assert plan.meta["search"]["measured"]["damage"] >= 0
    assert [r["name"] for r in doc["presets"]] == list(BUILTIN_PLANS)
    assert all(r["measured"] for r in doc["presets"])
    assert doc["greedy"]["damage_estimate"] >= doc["greedy"]["exact_best_damage_estimate"] - 1e-12
    assert (out / "search.png").stat().st_size > 10_000
    # the searched plan builds through the normal commands
    assert main(["build", "--teacher", TEACHER, "--plan", str(out / "plan-1.yaml"), "--out", str(tmp_path / "s")]) == 0
    assert main(["plan", "show", str(out / "plan-1.yaml"), "--teacher", TEACHER]) == 0
    assert "feature-KD pairs" in capsys.readouterr().out


def _brute_force(est, costs, limit):
    """(damage, genome) of every genome the sensitivity data covers within ``limit`` MACs, independently of the
    numpy sums."""
    paper = ((0,), (0, 2))
    depth_choices = [Genome().depth[0], paper]
    out = []
    for removed, mid in itertools.product((0, 1), MID_CHOICES):
        levels = 4 - removed
        for depth in itertools.product(depth_choices, repeat=levels):
            for down_attn in itertools.product((True, False), repeat=3):
                for up_attn in itertools.product((True, False), repeat=3):
                    g = Genome(removed=removed, mid=mid, depth=tuple(depth) + Genome().depth[levels:],
                               down_attention=down_attn + (True,), up_attention=(True,) + up_attn)
                    damage = est.damage_of(g)
                    if np.isfinite(damage) and costs.cost(g.plan()).macs_paper <= limit:
                        out.append((damage, g))
    return out


@pytest.mark.parametrize("min_attention", [0, 1, 3])
def test_exact_search_finds_the_brute_force_optimum(sensitivity, min_attention):
    doc = json.loads((sensitivity / "sensitivity.json").read_text())
    est, costs = Estimates(doc), CostModel(BUILTINS["tiny-sd"].unet)
    budget = [Budget("macs", 0.55 * costs.teacher.macs_paper, "macs=0.55")]
    best, info = exact_search(est, costs, budget, keep=1, min_attention=min_attention)
    brute = _brute_force(est, costs, budget[0].limit)
    allowed = [d for d, g in brute if g.attention_kept() >= min_attention]
    assert best[0].damage_estimate == pytest.approx(min(allowed))
    assert best[0].genome.attention_kept() >= min_attention
    assert info["enumerated"] >= len(brute)
    greedy, steps = greedy_search(est, costs, budget, min_attention=min_attention)
    assert greedy.within(budget, min_attention) and steps
    assert greedy.damage_estimate >= best[0].damage_estimate - 1e-12


def test_attention_kept_counts_the_blocks_the_prompt_enters():
    assert Genome().attention_kept() == 7  # SD-v1: down 0-2, mid, up 1-3
    assert genome_of(BUILTIN_PLANS["bk-small"]).attention_kept() == 6  # mid block removed
    assert genome_of(BUILTIN_PLANS["bk-tiny"]).attention_kept() == 6  # the stages it removes have no attention
    blind = Genome(mid="none", down_attention=(False,) * 4, up_attention=(False,) * 4)
    assert blind.attention_kept() == 0


def test_search_cannot_propose_a_plan_blind_to_the_prompt(sensitivity, tmp_path, capsys):
    # a floor the budget or the teacher cannot meet is refused with the flag to change
    assert main(["plan", "search", "--sensitivity", str(sensitivity), "--budget", "macs=0.4", "--no-measure",
                 "--min-attention", "7", "--out", str(tmp_path / "s7")]) == 2
    assert "at least 7 block(s) with cross-attention: --min-attention" in capsys.readouterr().err
    assert main(["plan", "search", "--sensitivity", str(sensitivity), "--budget", "macs=0.6", "--no-measure",
                 "--min-attention", "8", "--out", str(tmp_path / "s8")]) == 2
    assert "--min-attention 8: the teacher has 7 block(s) with cross-attention" in capsys.readouterr().err
    # the default keeps the prompt path
    assert main(["plan", "search", "--sensitivity", str(sensitivity), "--budget", "macs=0.6", "--no-measure",
                 "--out", str(tmp_path / "s")]) == 0
    doc = json.loads((tmp_path / "s" / "search.json").read_text())
    assert doc["config"]["min_attention"] == 1 and all(r["attention_kept"] >= 1 for r in doc["proposals"])


def test_presets_are_points_of_the_space():
    for name, plan in BUILTIN_PLANS.items():
        assert genome_of(plan).plan(name).structure == plan.structure
    assert len({o.name for o in options("all")}) == len(options("all"))


@pytest.mark.parametrize("text, needle", [
    ("flops=0.5", "write METRIC=VALUE"), ("macs=0.5s", "'s' is for latency"), ("latency=3G", "latency takes seconds"),
    ("latency=0.5", "has no latency of the teacher"),
])
def test_bad_budgets_are_refused(text, needle):
    with pytest.raises(SearchError, match=needle):
        parse_budget(text, {"macs_paper": 1e9, "params": 1e6, "latency_s": None})


def test_budget_values():
    teacher = {"macs_paper": 200e9, "params": 800e6, "latency_s": 4.0}
    assert parse_budget("macs=0.55", teacher).limit == pytest.approx(110e9)
    assert parse_budget("macs=120G", teacher).limit == 120e9
    assert parse_budget("params=400M", teacher).limit == 400e6
    assert parse_budget("latency=2.5s", teacher).limit == 2.5
    assert parse_budget("latency=0.5", teacher).limit == 2.0


def test_search_refuses_an_impossible_budget(sensitivity, tmp_path, capsys):
    assert main(["plan", "search", "--sensitivity", str(sensitivity), "--budget", "macs=0.05", "--no-measure",
                 "--out", str(tmp_path / "s")]) == 2
    assert "no plan in the searched space satisfies macs=0.05" in capsys.readouterr().err


def test_latency_through_the_benchmark_runner(tmp_path):
    from bksdm_edge.plans.sensitivity import LatencyProtocol, measure_latency

    # one worker process per plan (torch import included): one plan besides the teacher keeps this quick
    plans = {"custom": replace(BUILTIN_PLANS["bk-small"], name="custom")}
    latency, doc = measure_latency(TEACHER, plans, LatencyProtocol(threads=1, repeats=2, warmup=0), 64,
                                   tmp_path / "latency", cache=tmp_path / "cache", log=lambda m: None)
    assert set(latency) == {"custom", "teacher"} and all(v and v > 0 for v in latency.values()), latency
    assert {r["model"] for r in doc["rows"]} == {"teacher", str((tmp_path / "latency/plans/custom.yaml").resolve())}
    assert (tmp_path / "latency" / "results.json").exists()


def test_plan_show_on_the_docs_example(tmp_path, capsys):
    assert main(["plan", "show", str(docs_example(tmp_path)), "--teacher", "builtin:sd-v1.4"]) == 0
    out = capsys.readouterr().out
    assert "plan my-plan: down 1-attn/1/1/2 | mid none | up 3/2/2/2" in out
    assert "'layers_per_block': [1, 1, 1, 2]" in out and "'mid_block_type': None" in out
    assert "  down_blocks.3 <- down_blocks.3\n" in out and "  up_blocks.0 <- up_blocks.0\n" in out


def test_genomes_of_one_plan_are_equal():
    # a removed stage's genes are reset, so greedy and exact agree on "the same plan"
    a = Genome(removed=1, mid="none")
    b = replace(Genome(depth=Genome().depth[:3] + (((0,), (0, 2)),)), removed=1, mid="none")
    assert a == b and a.plan().structure == b.plan().structure


def test_interleaved_latency(tmp_path):
    from bksdm_edge.plans.sensitivity import LatencyProtocol, measure_latency

    protocol = LatencyProtocol(threads=1, repeats=4, warmup=1, interleaved=True)
    latency, doc = measure_latency(TEACHER, {"bk-tiny": BUILTIN_PLANS["bk-tiny"]}, protocol, 64, tmp_path,
                                   log=lambda m: None)
    assert latency["teacher"] > 0 and latency["bk-tiny"] == pytest.approx(doc["plans"]["bk-tiny"]["ratio"] * latency["teacher"])
    assert len(doc["plans"]["bk-tiny"]["student_s"]) == 4 and (tmp_path / "interleaved.json").exists()
    with pytest.raises(BksdmError, match="interleaved latency runs PyTorch fp32"):
        measure_latency(TEACHER, {}, replace(protocol, backend="onnxruntime"), 64, tmp_path)


def test_guidance_error_sees_a_student_that_ignores_the_prompt():
    # Without cross-attention the student cannot follow the prompt: its guidance direction is gone (NMSE 1),
    # while the noise prediction itself may stay close.
    from bksdm_edge.loading import load_model
    from bksdm_edge.plans.sensitivity import ErrorProbe, ErrorProtocol

    model = load_model(TEACHER)
    probe = ErrorProbe(model, ErrorProtocol(prompts=("a red circle",), steps=2, max_inputs=6, batch=4), 64)
    assert probe.paired and probe.count == 6
    same = probe.compare(probe.reference)
    assert same["nmse"] == 0 and same["guidance_nmse"] == 0 and same["damage"] == 0
    blind = probe.reference.copy()
    blind[1::2] = blind[0::2]  # cond prediction = uncond prediction
    errors = probe.compare(blind)
    assert errors["guidance_nmse"] == pytest.approx(1.0) and errors["nmse"] < errors["guidance_nmse"]
