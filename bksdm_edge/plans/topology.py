"""The teacher topology every removal plan is written against: the SD-v1/SD-v2 U-Net.

One place for the facts the plan code, the student builder and the teacher check share: four
down stages of two resnet/attention pairs, a resnet-attention-resnet mid block, four up stages of
three pairs, cross-attention in down stages 0-2 and up stages 1-3.
"""

from __future__ import annotations

SD_DOWN_BLOCKS = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
SD_UP_BLOCKS = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
SD_MID_BLOCK = "UNetMidBlock2DCrossAttn"
TEACHER_LAYERS_PER_BLOCK = 2

STAGES = len(SD_DOWN_BLOCKS)
DOWN_PAIRS = TEACHER_LAYERS_PER_BLOCK
UP_PAIRS = TEACHER_LAYERS_PER_BLOCK + 1  # an up stage also consumes the skip of the stage below
MID_RESNETS = 2
MID_ATTENTIONS = 1

# The attention-free block each cross-attention block becomes when a plan drops its attentions.
WITHOUT_ATTENTION = {"CrossAttnDownBlock2D": "DownBlock2D", "CrossAttnUpBlock2D": "UpBlock2D"}
MID_WITHOUT_ATTENTION = "UNetMidBlock2D"  # diffusers builds it with one resnet and no attention

# Config fields that carry one value per stage (truncated when innermost stages are removed).
PER_STAGE_FIELDS = ("block_out_channels", "attention_head_dim", "num_attention_heads",
                    "transformer_layers_per_block", "only_cross_attention", "cross_attention_dim")


def down_has_attention(stage: int) -> bool:
    return SD_DOWN_BLOCKS[stage].startswith("CrossAttn")


def up_has_attention(stage: int) -> bool:
    return SD_UP_BLOCKS[stage].startswith("CrossAttn")
