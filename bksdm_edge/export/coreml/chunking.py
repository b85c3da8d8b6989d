"""Apple's chunked U-Net (``UnetChunk1`` / ``UnetChunk2``) as two explicit PyTorch halves.

Apple splits U-Nets over 1 GB into two packages for the iOS Neural Engine (it loads at most about
1 GB per model); Swift chains them, feeding chunk 2 with chunk 1's outputs merged with the original
inputs (``ManagedMLModel.swift``, ``predictions(from:)``). Apple splits the converted MIL program;
we split the diffusers module instead, so each half converts, compresses and is checked like any
other component, and a U-Net without a mid block (BK-SDM Small/Tiny) splits as well.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..base import ExportError
from .adapters import find_sd_unet

UNET_CHUNK_NAMES = ("UnetChunk1", "UnetChunk2")
CHUNK_THRESHOLD_BYTES = 1 << 30  # Apple chunks U-Nets over 1 GB for the iOS Neural Engine


def build_unet_chunks(unet, n_up: int | None = None, example: dict[str, Any] | None = None):
    """Split a diffusers SD U-Net into two modules whose composition equals it.

    Chunk 1 runs the time embedding, ``conv_in``, the down blocks, the mid block (if any) and the
    first ``n_up`` up blocks; chunk 2 runs the remaining up blocks and the output head. Chunk 1
    returns ``temb``, ``hidden_states`` and the skip tensors chunk 2 still needs (``skip_0`` ...),
    chunk 2 takes ``encoder_hidden_states`` plus exactly those. ``n_up`` defaults to the split that
    balances parameter counts (what matters for the 1 GB per-model limit). Given ``example`` inputs,
    boundary tensors that are the same tensor (a down block without downsampler returns its output
    as a skip too) are passed once: Core ML cannot declare one tensor as two outputs.

    Returns:
        (chunk1, chunk2, n_up)
    """
    find_sd_unet(unet)
    ups = list(unet.up_blocks)
    if n_up is None:
        total = sum(p.numel() for p in unet.parameters())
        before = total - sum(p.numel() for b in ups for p in b.parameters()) - sum(
            p.numel() for m in (unet.conv_norm_out, unet.conv_out) if m is not None for p in m.parameters())
        best, n_up = math.inf, 0
        for k in range(len(ups)):  # chunk 2 keeps at least one up block
            first = before + sum(p.numel() for b in ups[:k] for p in b.parameters())
            if abs(2 * first - total) < best:
                best, n_up = abs(2 * first - total), k
    if not 0 <= n_up < len(ups):
        raise ExportError(f"n_up must be in [0, {len(ups) - 1}] for a U-Net with {len(ups)} up blocks")

    def run_up(block, h, emb, ehs, skips):
        if getattr(block, "has_cross_attention", False):
            return block(hidden_states=h, temb=emb, res_hidden_states_tuple=skips, encoder_hidden_states=ehs)
        return block(hidden_states=h, temb=emb, res_hidden_states_tuple=skips)

    class UnetChunk1(nn.Module):
        def __init__(self):
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, encoder_hidden_states, timestep_cond=None):
            u = self.unet
            # 1. Time embedding, as UNet2DConditionModel.forward computes it for SD (an LCM adds its guidance
            #    embedding, timestep_cond, through time_embedding.cond_proj).
            emb = u.time_embedding(u.time_proj(timestep.expand(sample.shape[0])).to(sample.dtype), timestep_cond)
            # 2. Down path, collecting skips.
            h = u.conv_in(sample)
            skips = (h,)
            for block in u.down_blocks:
                if getattr(block, "has_cross_attention", False):
                    h, res = block(hidden_states=h, temb=emb, encoder_hidden_states=encoder_hidden_states)
                else:
                    h, res = block(hidden_states=h, temb=emb)
                skips += res
            # 3. Mid block (BK-SDM Small and Tiny have none).
            if u.mid_block is not None:
                h = u.mid_block(h, emb, encoder_hidden_states=encoder_hidden_states)
            # 4. The first n_up up blocks.
            for block in u.up_blocks[:n_up]:
                n = len(block.resnets)
                h = run_up(block, h, emb, encoder_hidden_states, skips[-n:])
                skips = skips[:-n]
            boundary = (emb, h, *skips)
            return tuple(boundary[i] for i in self.keep) if self.keep is not None else boundary

    class UnetChunk2(nn.Module):
        def __init__(self):
            super().__init__()
            self.unet = unet

        def forward(self, encoder_hidden_states, *boundary):
            u = self.unet
            if self.expand is not None:
                boundary = tuple(boundary[j] for j in self.expand)
            temb, h, skips = boundary[0], boundary[1], boundary[2:]
            for block in u.up_blocks[n_up:]:
                n = len(block.resnets)
                h = run_up(block, h, temb, encoder_hidden_states, skips[-n:])
                skips = skips[:-n]
            if u.conv_norm_out is not None:
                h = u.conv_act(u.conv_norm_out(h))
            return u.conv_out(h)

    chunk1, chunk2 = UnetChunk1().eval(), UnetChunk2().eval()
    chunk1.keep = chunk2.expand = None
    if example is not None:
        with torch.no_grad():
            boundary = chunk1(*example.values())
        # keep: the first occurrence of each distinct tensor; expand: full position -> kept position.
        keep = [i for i, t in enumerate(boundary) if not any(t is boundary[j] for j in range(i))]
        chunk1.keep = keep
        chunk2.expand = [next(k for k, i in enumerate(keep) if boundary[i] is t) for t in boundary]
        names = ["temb", "hidden_states"] + [f"skip_{i}" for i in range(len(boundary) - 2)]
        chunk1.output_names = [names[i] for i in keep]
    return chunk1, chunk2, n_up


def chunk_io_names(chunk1) -> tuple[list[str], list[str]]:
    """(chunk 1 output names, chunk 2 input names) of chunks built with example inputs."""
    return list(chunk1.output_names), ["encoder_hidden_states", *chunk1.output_names]
