import json

import pytest
import torch
from diffusers import UNet2DConditionModel, UNet2DModel

from bksdm_edge.errors import BksdmError
from bksdm_edge.student import UnsupportedTeacherError, build_student, save_student, teacher_key
from bksdm_edge.variants import VARIANTS, get_variant


@pytest.mark.parametrize("fixture", ["tiny_model", "tiny_model_v2"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_student_tensor_equals_its_mapped_teacher_tensor(request, fixture, variant):
    teacher = request.getfixturevalue(fixture).unet
    student, report = build_student(teacher, variant)
    t_state, s_state = teacher.state_dict(), student.state_dict()
    assert len(report.copied) + len(report.remapped) == len(s_state)
    for key, value in s_state.items():
        source = teacher_key(key, get_variant(variant))
        assert torch.equal(value, t_state[source]), key
    assert report.student_params < report.teacher_params


def test_removed_blocks_are_gone(tiny_model):
    base, _ = build_student(tiny_model.unet, "bk-base")
    small, _ = build_student(tiny_model.unet, "bk-small")
    tiny, _ = build_student(tiny_model.unet, "bk-tiny")
    for s in (base, small, tiny):
        assert all(len(b.resnets) == 1 for b in s.down_blocks)
        assert all(len(b.resnets) == 2 for b in s.up_blocks)
    assert base.mid_block is not None
    assert small.mid_block is None and tiny.mid_block is None
    assert len(tiny.down_blocks) == 3 and len(tiny.up_blocks) == 3
    assert tiny.down_blocks[2].downsamplers is None
    assert not any(k.startswith("mid_block") for k in small.state_dict())
    assert not any(k.startswith("down_blocks.3") for k in tiny.state_dict())


def test_weight_map_matches_the_paper():
    tiny, small = get_variant("bk-tiny"), get_variant("bk-small")
    assert teacher_key("up_blocks.0.resnets.1.conv1.weight", small) == "up_blocks.0.resnets.2.conv1.weight"
    assert teacher_key("up_blocks.2.attentions.1.proj_in.weight", small) == "up_blocks.2.attentions.2.proj_in.weight"
    assert teacher_key("up_blocks.0.resnets.1.conv1.weight", tiny) == "up_blocks.1.resnets.2.conv1.weight"
    assert teacher_key("up_blocks.1.upsamplers.0.conv.weight", tiny) == "up_blocks.2.upsamplers.0.conv.weight"
    assert teacher_key("down_blocks.2.attentions.0.proj_out.weight", tiny) == "down_blocks.2.attentions.0.proj_out.weight"


def test_student_runs_and_is_close_to_teacher_at_init(tiny_model):
    # A BK-SDM student starts from the teacher's weights: it must run on the teacher's inputs.
    student, _ = build_student(tiny_model.unet, "bk-small")
    x = torch.randn(1, 4, 8, 8)
    ehs = torch.randn(1, 77, 32)
    with torch.no_grad():
        out = student(x, 10, ehs).sample
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_saved_student_round_trips_through_diffusers(tiny_model, tmp_path):
    student, report = build_student(tiny_model.unet, "bk-tiny")
    save_student(student, tmp_path / "s", teacher="builtin:tiny-sd", report=report)
    loaded = UNet2DConditionModel.from_pretrained(tmp_path / "s")
    for key, value in student.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])
    meta = json.loads((tmp_path / "s" / "bksdm_edge.json").read_text())
    assert meta["variant"] == "bk-tiny" and meta["teacher"] == "builtin:tiny-sd"
    # Drops into StableDiffusionPipeline in place of the teacher's U-Net.
    from bksdm_edge.loading import load_model

    model = load_model("builtin:tiny-sd", unet=tmp_path / "s")
    pipe = model.to_pipeline()
    image = pipe("a red square", num_inference_steps=2, height=64, width=64, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 64, 64, 3)
    assert model.info["student"]["variant"] == "bk-tiny"


def _unet(**overrides):
    from bksdm_edge.builtins import TINY_SD

    return UNet2DConditionModel(**{**TINY_SD.unet, **overrides})


@pytest.mark.parametrize(
    "overrides, needle",
    [
        # SDXL: three stages, extra text_time conditioning, deeper transformers.
        (dict(down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
              up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
              block_out_channels=[8, 16, 32], addition_embed_type="text_time",
              addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 6 * 8,
              transformer_layers_per_block=[1, 2, 2]), "down_block_types"),
        (dict(layers_per_block=1), "layers_per_block"),
        (dict(mid_block_type=None), "mid_block_type"),
    ],
)
def test_other_families_fail_clearly(overrides, needle):
    with pytest.raises(UnsupportedTeacherError, match=needle) as err:
        build_student(_unet(**overrides), "bk-small")
    assert "SD-v1" in str(err.value)


def test_unet_without_cross_attention_fails_clearly():
    unet = UNet2DModel(block_out_channels=(8, 16), norm_num_groups=4, down_block_types=("DownBlock2D",) * 2,
                       up_block_types=("UpBlock2D",) * 2)
    with pytest.raises(UnsupportedTeacherError, match="UNet2DConditionModel"):
        build_student(unet, "bk-small")


def test_unknown_variant_fails_clearly(tiny_model):
    with pytest.raises(BksdmError, match="Unknown variant 'bk-huge'.*bk-base"):
        build_student(tiny_model.unet, "bk-huge")
