"""BK-SDM variants as data (arXiv 2305.15798, Sec. 3.1 and the official code).

A variant holds (1) how the student config differs from the teacher's,
(2) the teacher-to-student weight map, and (3) the feature-distillation layer
pairs. ``student.build_student`` and the distiller read only these fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import BksdmError


class UnknownVariantError(BksdmError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


@dataclass(frozen=True)
class Variant:
    """One BK-SDM compact U-Net.

    Attributes:
        name: registry key (``bk-base``, ``bk-small``, ``bk-tiny``).
        layers_per_block: resnet/attention pairs kept per down stage (teacher: 2).
        keep_mid_block: False removes the mid block.
        drop_innermost_stage: True removes the innermost down stage and the first up stage.
        up_pair_map: student pair index -> teacher pair index inside each up stage
            (the teacher's first and last pair are kept).
        feature_pairs: (teacher module, student module) whose outputs the feature-KD loss matches.
    """

    name: str
    description: str
    layers_per_block: int
    keep_mid_block: bool
    drop_innermost_stage: bool
    up_pair_map: tuple[tuple[int, int], ...]
    feature_pairs: tuple[tuple[str, str], ...]

    @property
    def up_stage_offset(self) -> int:
        """Student up stage s is initialised from teacher up stage s + offset."""
        return 1 if self.drop_innermost_stage else 0

    def student_config(self, teacher_config: dict[str, Any]) -> dict[str, Any]:
        """The student's U-Net config: the teacher's config with this variant's removals applied."""
        config = {k: v for k, v in dict(teacher_config).items() if not k.startswith("_")}
        config["layers_per_block"] = self.layers_per_block
        if not self.keep_mid_block:
            config["mid_block_type"] = None
        if self.drop_innermost_stage:
            config["down_block_types"] = list(config["down_block_types"])[:-1]
            config["up_block_types"] = list(config["up_block_types"])[1:]
            config["block_out_channels"] = list(config["block_out_channels"])[:-1]
            for key in ("attention_head_dim", "num_attention_heads", "transformer_layers_per_block"):
                if isinstance(config.get(key), (list, tuple)):
                    config[key] = list(config[key])[:-1]
        return config


_STAGE_PAIRS = tuple((f"down_blocks.{i}", f"down_blocks.{i}") for i in range(4)) + tuple(
    (f"up_blocks.{i}", f"up_blocks.{i}") for i in range(4)
)

VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(
            name="bk-base",
            description="fewer blocks: one resnet/attention pair per down stage, two per up stage",
            layers_per_block=1,
            keep_mid_block=True,
            drop_innermost_stage=False,
            up_pair_map=((0, 0), (1, 2)),
            feature_pairs=_STAGE_PAIRS,
        ),
        Variant(
            name="bk-small",
            description="bk-base without the mid block",
            layers_per_block=1,
            keep_mid_block=False,
            drop_innermost_stage=False,
            up_pair_map=((0, 0), (1, 2)),
            feature_pairs=_STAGE_PAIRS,
        ),
        Variant(
            name="bk-tiny",
            description="bk-small without the innermost down stage and the first up stage",
            layers_per_block=1,
            keep_mid_block=False,
            drop_innermost_stage=True,
            up_pair_map=((0, 0), (1, 2)),
            feature_pairs=(
                ("down_blocks.0", "down_blocks.0"),
                ("down_blocks.1", "down_blocks.1"),
                ("down_blocks.2.attentions.1.proj_out", "down_blocks.2.attentions.0.proj_out"),
                ("up_blocks.1", "up_blocks.0"),
                ("up_blocks.2", "up_blocks.1"),
                ("up_blocks.3", "up_blocks.2"),
            ),
        ),
    )
}


def get_variant(name: str | Variant) -> Variant:
    """Look a variant up by name (a ``Variant`` passes through)."""
    if isinstance(name, Variant):
        return name
    if name not in VARIANTS:
        raise UnknownVariantError(f"Unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    return VARIANTS[name]
