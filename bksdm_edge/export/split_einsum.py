"""Attention laid out for the Apple Neural Engine ("split einsum"), on diffusers modules.

The Neural Engine is fastest on channels-first 4-D tensors ``(B, C, 1, S)`` whose last
axis is the sequence, with 1x1 convolutions instead of linear layers and one small
einsum per head instead of a batched ``(B*heads, S, d)`` matmul (the layout of Apple's
ml-stable-diffusion, "Deploying Transformers on the Apple Neural Engine", 2022).

``apply_split_einsum(module)`` returns a copy of ``module`` in which every diffusers
``Attention`` computes that way:

1. ``to_q``, ``to_k``, ``to_v`` and ``to_out[0]`` become 1x1 ``nn.Conv2d`` holding the same
   numbers (so the state-dict names are unchanged; weights gain two trailing unit axes).
2. A ``SplitEinsumAttnProcessor`` moves the token axis last, splits the channels into
   heads and runs ``softmax(q_h^T k_h * scale) v_h`` per head with einsums.

The result is mathematically identical to diffusers' attention (tests check 1e-5).
Self- and cross-attention of the U-Net and the VAE's mid-block attention are covered;
features SD does not use (attention masks, q/k norms, added KV projections, spatial
norm) are refused with a clear error instead of being silently approximated.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .base import ExportError


def linear_to_conv1x1(linear: nn.Linear) -> nn.Conv2d:
    """A 1x1 convolution computing ``linear`` on channels-first ``(B, C, 1, S)`` tensors."""
    conv = nn.Conv2d(linear.in_features, linear.out_features, kernel_size=1, bias=linear.bias is not None)
    with torch.no_grad():
        conv.weight.copy_(linear.weight[:, :, None, None])
        if linear.bias is not None:
            conv.bias.copy_(linear.bias)
    return conv.to(linear.weight.dtype)


def _to_channels_first(x: torch.Tensor) -> torch.Tensor:
    """(B, S, C) -> (B, C, 1, S); 4-D inputs are taken as already channels-first (B, C, 1, S)."""
    if x.ndim == 4:
        return x
    return x.transpose(1, 2).unsqueeze(2)


class SplitEinsumAttnProcessor:
    """Diffusers attention processor computing attention per head on (B, C, 1, S) tensors.

    Expects the attention's projections to be 1x1 convolutions (``apply_split_einsum``
    installs both). Accepts the hidden states diffusers passes: (B, S, C) from transformer
    blocks, (B, C, H, W) from the VAE; returns the same layout it was given.
    """

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if attention_mask is not None:
            raise ExportError("split-einsum attention does not support attention masks (SD U-Nets use none).")
        residual = hidden_states
        spatial = hidden_states.ndim == 4
        if spatial:
            batch, channels, height, width = hidden_states.shape
            x = hidden_states.reshape(batch, channels, 1, height * width)
        else:
            x = _to_channels_first(hidden_states)
        # 1. Normalise the query side over channels (GroupNorm is layout-agnostic in (B, C, ...)).
        if attn.group_norm is not None:
            x = attn.group_norm(x)
        # 2. Context: the query itself (self-attention) or the text states (cross-attention).
        if encoder_hidden_states is None:
            context = x
        else:
            if attn.norm_cross is not None:
                encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
            context = _to_channels_first(encoder_hidden_states)
        # 3. Projections as 1x1 convolutions: (B, C, 1, S) -> (B, inner, 1, S).
        query = attn.to_q(x)
        key = attn.to_k(context)
        value = attn.to_v(context)
        head_dim = query.shape[1] // attn.heads
        # 4. One einsum pair per head; the softmax runs over the key axis (dim 1 of the weights).
        upcast = attn.upcast_attention or attn.upcast_softmax
        heads = []
        for q, k, v in zip(query.split(head_dim, 1), key.split(head_dim, 1), value.split(head_dim, 1)):
            if upcast:
                q, k = q.float(), k.float()
            weights = torch.einsum("bchq,bchk->bkhq", q, k) * attn.scale  # (B, S_k, 1, S_q)
            weights = weights.softmax(dim=1).to(v.dtype)
            heads.append(torch.einsum("bkhq,bchk->bchq", weights, v))  # (B, head_dim, 1, S_q)
        out = attn.to_out[0](torch.cat(heads, dim=1))
        out = attn.to_out[1](out)  # dropout (identity in eval)
        # 5. Back to the layout the caller gave us.
        if spatial:
            out = out.reshape(batch, -1, height, width)
        else:
            out = out.squeeze(2).transpose(1, 2)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def _check_supported(name: str, attn: nn.Module) -> None:
    unsupported = {
        "spatial_norm": attn.spatial_norm is not None,
        "norm_q/norm_k": attn.norm_q is not None or attn.norm_k is not None,
        "added_kv_proj_dim": attn.added_kv_proj_dim is not None,
        "fused projections": getattr(attn, "fused_projections", False),
        "missing to_out": attn.to_out is None or attn.to_k is None,
    }
    found = [k for k, v in unsupported.items() if v]
    if found:
        raise ExportError(
            f"split-einsum attention cannot convert {name}: it uses {', '.join(found)}, which Stable Diffusion "
            "U-Nets and VAEs do not. Export with --attention original."
        )


def apply_split_einsum(module: nn.Module, *, inplace: bool = False) -> tuple[nn.Module, int]:
    """Return ``module`` (a copy unless ``inplace``) with every diffusers Attention in split-einsum form.

    Args:
        module: any module containing diffusers ``Attention`` layers (a U-Net, a VAE, a wrapper).
        inplace: modify ``module`` itself instead of a deep copy.

    Returns:
        (the converted module, how many attention layers were converted).
    """
    from diffusers.models.attention_processor import Attention

    if not inplace:
        module = copy.deepcopy(module)
    count = 0
    for name, attn in module.named_modules():
        if not isinstance(attn, Attention):
            continue
        _check_supported(name, attn)
        for proj in ("to_q", "to_k", "to_v"):
            layer = getattr(attn, proj)
            if isinstance(layer, nn.Linear):
                setattr(attn, proj, linear_to_conv1x1(layer))
        if isinstance(attn.to_out[0], nn.Linear):
            attn.to_out[0] = linear_to_conv1x1(attn.to_out[0])
        attn.set_processor(SplitEinsumAttnProcessor())
        count += 1
    if count == 0:
        raise ExportError("--attention split-einsum: the model has no diffusers Attention layers to convert.")
    return module, count
