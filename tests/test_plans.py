"""Removal plans as data: the presets through the plan code, plan files, refusals, custom students, known students."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel

from bksdm_edge.builtins import BUILTINS, TINY_SD
from bksdm_edge.cli import main
from bksdm_edge.plans import BUILTIN_PLANS, Block, Plan, PlanError, describe_student, load_plan, resolve_plan
from bksdm_edge.plans.resolve import plan_of_unet_config
from bksdm_edge.profiler import count_params
from bksdm_edge.student import build_student, save_student, validate_plan

from _plans_helpers import docs_example

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = Path(__file__).parent / "data" / "known_students"


def known(name: str) -> dict:
    return json.loads((DATA / f"{name}.json").read_text())


# ---------------------------------------------------------------- the paper's plans through the plan code


@pytest.mark.parametrize("builtin", ["sd-v1.4", "sd-v2.1-base"])
def test_presets_give_the_reference_configs(builtin):
    # REFERENCE.md's table of the compact U-Nets.
    teacher = BUILTINS[builtin].unet
    base, small, tiny = (BUILTIN_PLANS[n].student_config(teacher) for n in ("bk-base", "bk-small", "bk-tiny"))
    for c in (base, small):
        assert c["down_block_types"] == teacher["down_block_types"] and c["up_block_types"] == teacher["up_block_types"]
        assert c["layers_per_block"] == 1 and c["block_out_channels"] == [320, 640, 1280, 1280]
    assert base["mid_block_type"] == "UNetMidBlock2DCrossAttn" and small["mid_block_type"] is None
    assert tiny["down_block_types"] == ["CrossAttnDownBlock2D"] * 3 and tiny["up_block_types"] == ["CrossAttnUpBlock2D"] * 3
    assert tiny["block_out_channels"] == [320, 640, 1280] and tiny["mid_block_type"] is None
    if isinstance(teacher["attention_head_dim"], list):
        assert tiny["attention_head_dim"] == teacher["attention_head_dim"][:3]


def test_presets_give_the_papers_feature_pairs_and_weight_map():
    stages = tuple((f"down_blocks.{i}", f"down_blocks.{i}") for i in range(4)) + tuple(
        (f"up_blocks.{i}", f"up_blocks.{i}") for i in range(4))
    assert BUILTIN_PLANS["bk-base"].feature_pairs == stages == BUILTIN_PLANS["bk-small"].feature_pairs
    assert BUILTIN_PLANS["bk-tiny"].feature_pairs == (
        ("down_blocks.0", "down_blocks.0"), ("down_blocks.1", "down_blocks.1"),
        ("down_blocks.2.attentions.1.proj_out", "down_blocks.2.attentions.0.proj_out"),
        ("up_blocks.1", "up_blocks.0"), ("up_blocks.2", "up_blocks.1"), ("up_blocks.3", "up_blocks.2"))
    tiny = BUILTIN_PLANS["bk-tiny"]
    assert tiny.teacher_name("up_blocks.0.resnets.1.conv1.weight") == "up_blocks.1.resnets.2.conv1.weight"
    assert tiny.teacher_name("up_blocks.1.upsamplers.0.conv.weight") == "up_blocks.2.upsamplers.0.conv.weight"
    assert tiny.teacher_name("mid_block.resnets.0.conv1.weight") == "mid_block.resnets.0.conv1.weight"


@pytest.mark.parametrize("name", sorted(BUILTIN_PLANS))
def test_preset_files_round_trip(name, tmp_path):
    plan = BUILTIN_PLANS[name]
    for suffix in (".yaml", ".json"):
        loaded = load_plan(plan.save(tmp_path / f"p{suffix}"))
        assert loaded.structure == plan.structure and loaded.name == name


# ---------------------------------------------------------------- plan files: what is refused, and why


def _write(tmp_path, text: str, name="bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


BASE_DOWN = "down: [{resnets: [0]}, {resnets: [0]}, {resnets: [0]}, {resnets: [0]}]\n"
BASE_UP = "up: [{resnets: [0, 2]}, {resnets: [0, 2]}, {resnets: [0, 2]}, {resnets: [0, 2]}]\n"


@pytest.mark.parametrize("text, needle", [
    ("down: [{resnets: [0]}, {resnets: [0], attentions: [1]}, {resnets: [0]}, {resnets: [0]}]\nmid: null\n" + BASE_UP,
     "keeps attention(s) [1] without their resnet"),
    ("down: [{resnets: [0]}, {resnets: []}, {resnets: [0]}, {resnets: [0]}]\nmid: null\n" + BASE_UP,
     "down_blocks.1 keeps no resnet/attention pair: a stage cannot be emptied"),
    (BASE_DOWN + "mid: null\nup: [{resnets: [0, 2]}, {resnets: [0, 1, 2]}, {resnets: [0, 2]}, {resnets: [0, 2]}]\n",
     "up_blocks.1 keeps 3 pair(s) but its mirror down_blocks.2 keeps 1"),
    ("down: [{resnets: [0]}, null, {resnets: [0]}, {resnets: [0]}]\nmid: null\n"
     "up: [{resnets: [0, 2]}, {resnets: [0, 2]}, null, {resnets: [0, 2]}]\n", "only the innermost stages"),
    ("down: [{resnets: [0]}, {resnets: [0]}, {resnets: [0]}, null]\nmid: null\n" + BASE_UP,
     "down_blocks.3 is removed but its mirror up_blocks.0 is kept"),
    (BASE_DOWN + "mid: {resnets: [0], attentions: [0]}\n" + BASE_UP, "mid_block keeps its attention without both"),
    (BASE_DOWN + "mid: {resnets: [0, 1], attentions: []}\n" + BASE_UP, "UNetMidBlock2D) has one resnet"),
    ("down: [{resnets: [0, 1], attentions: [1]}, {resnets: [0]}, {resnets: [0]}, {resnets: [0]}]\nmid: null\n"
     "up: [{resnets: [0, 2]}, {resnets: [0, 2]}, {resnets: [0, 2]}, {resnets: [0, 1, 2]}]\n",
     "one attention per resnet"),
    ("down: [{resnets: [2]}, {resnets: [0]}, {resnets: [0]}, {resnets: [0]}]\nmid: null\n" + BASE_UP,
     "indices [2] do not exist"),
    ("down: [{resnets: [0], attentions: [0]}, {resnets: [0]}, {resnets: [0]}, {resnets: [0], attentions: [0]}]\n"
     "mid: null\n" + BASE_UP, "down_blocks.3 has no attentions in the teacher"),
    (BASE_DOWN + "mid: null\n" + BASE_UP + "extra: 1\n", "unknown key 'extra'"),
    ("down: [{resnets: [0]}]\nmid: null\nup: []\n", "a plan lists 4 down and 4 up stages"),
    ("- just a list\n", "a plan is a mapping"),
    ("down: [\n", "is not valid YAML"),
])
def test_bad_plan_files_are_refused_with_the_reason(tmp_path, text, needle):
    with pytest.raises(PlanError, match=re.escape(needle)):
        load_plan(_write(tmp_path, text))


def test_a_plan_that_does_not_fit_the_teachers_shapes_is_refused(tmp_path):
    # up_blocks.1's last resnet takes the 640-channel skip of down_blocks.1: only the teacher's last pair fits last.
    path = _write(tmp_path, BASE_DOWN + "mid: null\n"
                  "up: [{resnets: [0, 2]}, {resnets: [0, 1]}, {resnets: [0, 2]}, {resnets: [0, 2]}]\n")
    plan = load_plan(path)  # structurally fine
    with pytest.raises(PlanError, match=r"does not fit this teacher .*up_blocks\.1\.resnets\.1\.\S+ <- up_blocks\.1\.resnets\.1"):
        validate_plan(plan, BUILTINS["sd-v1.4"].unet)


def test_cli_refuses_a_bad_plan_before_writing(tmp_path, capsys):
    bad = _write(tmp_path, "down: [{resnets: [0]}, {resnets: [0], attentions: [1]}, {resnets: [0]}, {resnets: [0]}]\n"
                 "mid: null\n" + BASE_UP)
    out = tmp_path / "student"
    assert main(["build", "--teacher", "builtin:tiny-sd", "--plan", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "without their resnet" in err and "Traceback" not in err
    assert not out.exists()
    assert main(["build", "--teacher", "builtin:tiny-sd", "--plan", str(tmp_path / "missing.yaml"),
                 "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err and not out.exists()


# ---------------------------------------------------------------- custom students


def custom_plans() -> dict[str, Plan]:
    small = BUILTIN_PLANS["bk-small"]
    return {
        # different pairs per stage: layers_per_block becomes a list
        "deep-inner": dataclasses.replace(small, name="deep-inner", down=small.down[:3] + (Block((0, 1)),),
                                          up=(Block((0, 1, 2)),) + small.up[1:]),
        # attentions dropped at full resolution, mid block reduced to one resnet, another weight map
        "no-attn0": dataclasses.replace(
            small, name="no-attn0", mid=Block((1,)),
            down=(Block((1,)),) + small.down[1:],
            up=small.up[:1] + (Block((1, 2), (1, 2)),) + small.up[2:3] + (Block((0, 2)),)),
        # tiny with a mid block at the new innermost stage
        "tiny-mid": dataclasses.replace(BUILTIN_PLANS["bk-tiny"], name="tiny-mid", mid=Block((0, 1), (0,))),
    }


@pytest.mark.parametrize("name", sorted(custom_plans()))
def test_custom_plan_builds_a_plain_diffusers_unet(tiny_model, tmp_path, name):
    plan = custom_plans()[name]
    student, report = build_student(tiny_model.unet, plan)
    teacher_state = tiny_model.unet.state_dict()
    for key, value in student.state_dict().items():
        assert torch.equal(value, teacher_state[plan.teacher_name(key)]), key
    save_student(student, tmp_path / "s", teacher="builtin:tiny-sd", report=report)
    loaded = UNet2DConditionModel.from_pretrained(tmp_path / "s")  # a plain diffusers U-Net
    x, ehs = torch.randn(1, 4, 8, 8), torch.randn(1, 77, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x, 10, ehs).sample, student(x, 10, ehs).sample, atol=1e-5)
    # its bksdm_edge.json carries the exact plan, recognised back
    assert describe_student(tmp_path / "s", tiny_model.unet.config).plan.structure == plan.structure


def test_layers_per_block_is_a_list_when_stages_differ():
    config = custom_plans()["deep-inner"].student_config(TINY_SD.unet)
    assert config["layers_per_block"] == [1, 1, 1, 2]
    assert custom_plans()["no-attn0"].student_config(TINY_SD.unet)["down_block_types"][0] == "DownBlock2D"
    assert custom_plans()["no-attn0"].student_config(TINY_SD.unet)["mid_block_type"] == "UNetMidBlock2D"


@pytest.mark.parametrize("name", sorted(custom_plans()) + sorted(BUILTIN_PLANS))
def test_feature_pairs_from_the_plan_capture_matching_shapes(tiny_model, name):
    from bksdm_edge.distill import FeatureCapture

    plan = resolve_plan(custom_plans().get(name) or name)
    student, _ = build_student(tiny_model.unet, plan)
    x, ehs = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32)
    teacher_names = [t for t, _ in plan.feature_pairs]
    student_names = [s for _, s in plan.feature_pairs]
    with torch.no_grad(), FeatureCapture(tiny_model.unet, teacher_names) as tc, FeatureCapture(student, student_names) as sc:
        tiny_model.unet(x, 10, ehs)
        student(x, 10, ehs)
        for (t, s), ft, fs in zip(plan.feature_pairs, tc.take(), sc.take()):
            assert ft.shape == fs.shape, (t, s)


def test_docs_example_builds(tiny_model, tmp_path):
    plan = load_plan(docs_example(tmp_path))
    validate_plan(plan, BUILTINS["sd-v1.4"].unet)
    student, _ = build_student(tiny_model.unet, plan)
    assert student.config.layers_per_block == [1, 1, 1, 2]


# ---------------------------------------------------------------- known students


@pytest.mark.parametrize("name", sorted(p.stem for p in DATA.glob("*.json")))
def test_known_checkpoint_configs_are_recognised(name):
    entry = known(name)
    teacher = BUILTINS[entry["teacher"].split(":")[1]].unet
    plan = plan_of_unet_config(entry["config"], teacher)
    assert plan.name == entry["expected_plan"]
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(entry["config"])
    if entry["unet_params"]:
        assert count_params(unet) == entry["unet_params"]


def test_a_unet_that_is_no_removal_is_refused_with_the_reason():
    teacher = BUILTINS["sd-v1.4"].unet
    wider = {**known("nota-ai_bk-sdm-small")["config"], "block_out_channels": [320, 640, 1280, 1920]}
    with pytest.raises(PlanError, match=r"block_out_channels"):
        plan_of_unet_config(wider, teacher)
    five = {**teacher, "down_block_types": ["CrossAttnDownBlock2D"] * 5, "up_block_types": ["UpBlock2D"] * 5}
    with pytest.raises(PlanError, match=r"5 down and 5 up stages \(the teacher has 4 of each\)"):
        plan_of_unet_config(five, teacher)
    attn_inside = {**teacher, "layers_per_block": 1, "down_block_types": ["CrossAttnDownBlock2D"] * 4}
    with pytest.raises(PlanError, match=r"down_blocks.3 is a CrossAttnDownBlock2D; the teacher's is a DownBlock2D"):
        plan_of_unet_config(attn_inside, teacher)
    # dropping a stage's attentions is a removal: DownBlock2D where the teacher has cross-attention
    no_attn = {**teacher, "layers_per_block": 1, "mid_block_type": None,
               "down_block_types": ["DownBlock2D"] + teacher["down_block_types"][1:]}
    assert plan_of_unet_config(no_attn, teacher).down[0].attentions == ()


def scaled_known_folder(name: str, path: Path) -> Path:
    """A known checkpoint's config at toy widths (the TINY_SD teacher's), saved with random weights."""
    config = {**known(name)["config"]}
    n = len(config["block_out_channels"])
    for key in ("block_out_channels", "cross_attention_dim", "attention_head_dim", "norm_num_groups", "sample_size"):
        value = TINY_SD.unet[key]
        config[key] = list(value)[:n] if isinstance(value, list) else value
    torch.manual_seed(0)
    UNet2DConditionModel.from_config(config).save_pretrained(path)
    return path


def test_known_student_folder_through_profile_build_and_export(tmp_path, capsys):
    folder = scaled_known_folder("segmind_tiny-sd", tmp_path / "tiny-sd")
    assert main(["profile", "--teacher", "builtin:tiny-sd", "--unet", str(folder), "--resolution", "64"]) == 0
    assert f"{folder}: bk-tiny (from config.json)" in capsys.readouterr().out
    # build: the folder's topology as the plan, initialised from the teacher
    out = tmp_path / "student"
    assert main(["build", "--teacher", "builtin:tiny-sd", "--plan", str(folder), "--out", str(out)]) == 0
    assert "plan recognised" in capsys.readouterr().out
    assert json.loads((out / "bksdm_edge.json").read_text())["variant"] == "bk-tiny"
    # export: the manifest names the plan of a folder that has no bksdm_edge.json
    from bksdm_edge.export.pipeline import export_bundle
    from bksdm_edge.export.request import ExportRequest

    bundle = export_bundle(ExportRequest(out=tmp_path / "bundle", model="builtin:tiny-sd", unet=folder, format="onnx",
                                         precision="fp32", components=("unet",), progress=False))
    assert json.loads((bundle / "manifest.json").read_text())["source"]["variant"] == "bk-tiny"


def test_loading_a_folder_that_is_no_removal_records_why(tmp_path):
    from bksdm_edge.loading import load_model

    config = {**TINY_SD.unet, "block_out_channels": [8, 16, 32, 64]}
    UNet2DConditionModel.from_config(config).save_pretrained(tmp_path / "other")
    model = load_model("builtin:tiny-sd", unet=tmp_path / "other", components=("unet",))
    assert model.info["student"]["variant"] is None
    assert "not a block removal" in model.info["student"]["plan_note"]


# ---------------------------------------------------------------- the plan through distill and bench


def test_distill_takes_a_plan_file_and_derives_its_feature_pairs(tmp_path):
    from bksdm_edge.distill.synthetic import make_synthetic_folder

    data = make_synthetic_folder(tmp_path / "data", rows=4, size=64, seed=0)
    plan_file = custom_plans()["deep-inner"].save(tmp_path / "deep.yaml")
    common = ["--teacher", "builtin:tiny-sd", "--data", str(data), "--max-steps", "1", "--batch-size", "2",
              "--resolution", "64", "--num-workers", "0", "--checkpoint-every", "0", "--no-progress"]
    assert main(["distill", "--plan", str(plan_file), "--out", str(tmp_path / "run"), *common]) == 0
    info = json.loads((tmp_path / "run" / "run_config.json").read_text())
    assert info["plan"]["name"] == "deep-inner"
    assert [tuple(p) for p in info["feature_pairs"]] == list(custom_plans()["deep-inner"].feature_pairs)
    unet = tmp_path / "run" / "unet"
    assert UNet2DConditionModel.from_pretrained(unet).config.layers_per_block == [1, 1, 1, 2]
    # --student alone: the folder's plan (read from its bksdm_edge.json)
    assert main(["distill", "--student", str(unet), "--out", str(tmp_path / "run2"), *common]) == 0
    assert json.loads((tmp_path / "run2" / "run_config.json").read_text())["plan"]["name"] == "deep-inner"
    # a --student of another plan is refused
    assert main(["distill", "--variant", "bk-small", "--student", str(unet), "--out", str(tmp_path / "run3"),
                 *common]) == 2


def test_bench_model_can_be_a_plan_file(tmp_path):
    from bksdm_edge.bench.backends import artifact_dir, get_backend, load_scenario_model
    from bksdm_edge.bench.runner import paper_macs
    from bksdm_edge.bench.scenario import Scenario

    plan_file = custom_plans()["no-attn0"].save(tmp_path / "p.yaml")
    s = Scenario(model=str(plan_file), component="unet", backend="pytorch", source="builtin:tiny-sd", resolution=64)
    model = load_scenario_model(s, ("unet",))
    assert model.unet.config.mid_block_type == "UNetMidBlock2D"
    macs = paper_macs([s, dataclasses.replace(s, model="teacher")], log=print)
    key = ("builtin:tiny-sd", str(plan_file), "unet", 64, "teacher")  # (source, model, component, resolution, vae)
    assert 0 < macs[key] < macs[("builtin:tiny-sd", "teacher", "unet", 64, "teacher")]
    # every row names its plan (a folder: the plan its config corresponds to)
    from bksdm_edge.bench.runner import plan_labels

    folder = scaled_known_folder("segmind_small-sd", tmp_path / "small-sd")
    labels = plan_labels([s, dataclasses.replace(s, model=str(folder)), dataclasses.replace(s, model="bk-tiny+lcm")])
    assert labels[("builtin:tiny-sd", str(plan_file))] == "no-attn0: down 1-attn/1/1/1 | mid resnet1 | up 2/2/2/2-attn"
    assert labels[("builtin:tiny-sd", str(folder))].startswith("bk-base: down 1/1/1/1 | mid full")
    assert labels[("builtin:tiny-sd", "bk-tiny+lcm")].startswith("bk-tiny: ")
    # the artifact cache is keyed by the plan's contents: an edited plan is rebuilt
    first = artifact_dir(tmp_path, s, get_backend("pytorch"))
    custom_plans()["deep-inner"].save(plan_file)
    assert artifact_dir(tmp_path, s, get_backend("pytorch")) != first


@pytest.mark.parametrize("builtin", ["tiny-sd", "tiny-sd-v2"])
def test_cost_model_is_exact(builtin):
    from bksdm_edge.plans import full_plan
    from bksdm_edge.plans.cost import CostModel
    from bksdm_edge.profiler import profile_component

    config = BUILTINS[builtin].unet
    model = CostModel(config)
    for plan in [full_plan(), *BUILTIN_PLANS.values(), *custom_plans().values()]:
        cost = model.cost(plan)
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(plan.student_config(config))
        row = profile_component(unet, "unet", resolution=model.resolution)
        assert (cost.params, cost.macs_paper, cost.macs_full) == (row.params, row.macs_paper, row.macs_full), plan.name

