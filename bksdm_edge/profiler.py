"""Parameter counts, MACs and weight sizes of SD components.

MACs are counted with forward hooks while the model runs on PyTorch's ``meta``
device, so a full-size SD U-Net is profiled in seconds without allocating its
weights. Two conventions are reported:

- ``macs_paper``: convolution, linear and normalisation modules only, as the
  BK-SDM paper counted (its Table 1: SD-v1.4 U-Net 338.7G at 512 px);
- ``macs_full``: the same plus the two attention matrix products (Q·Kᵀ and
  A·V), which dominate at high resolution and which module-level counters miss.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

NORM_TYPES = (nn.GroupNorm, nn.LayerNorm, nn.BatchNorm2d, nn.InstanceNorm2d)
# The submodules of a VAE that make up each exported half.
VAE_HALVES = {"vae_decoder": ("post_quant_conv", "decoder"), "vae_encoder": ("encoder", "quant_conv")}


@dataclass
class Profile:
    """The profile of one model component at one resolution."""

    name: str
    component: str
    params: int
    macs_paper: int
    macs_full: int
    resolution: int
    size_fp32_mb: float
    size_fp16_mb: float
    size_int8_mb: float
    plan: str = ""  # students: the removal plan, one line (``Plan.summary``), or why a folder is no removal

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _module_macs(module: nn.Module, inputs: tuple, output: Any) -> int:
    out = output[0] if isinstance(output, (tuple, list)) else output
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return out.numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return out.numel() * module.in_features
    if isinstance(module, NORM_TYPES):
        return inputs[0].numel()
    return 0


def _attention_macs(module: nn.Module, args: tuple, kwargs: dict) -> int:
    hidden = kwargs.get("hidden_states", args[0] if args else None)
    context = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
    if hidden.ndim == 4:  # (B, C, H, W) input to a spatial self-attention
        batch, tokens = hidden.shape[0], hidden.shape[2] * hidden.shape[3]
    else:
        batch, tokens = hidden.shape[0], hidden.shape[1]
    keys = tokens if context is None else context.shape[1]
    inner = module.embed_dim if _is_clip_attention(module) else module.inner_dim
    # Q·Kᵀ and softmax(Q·Kᵀ)·V, each batch x tokens x keys x inner MACs.
    return 2 * batch * tokens * keys * inner


def _is_clip_attention(module: nn.Module) -> bool:
    # transformers' CLIPAttention (text encoder): one fused multi-head self-attention.
    return type(module).__name__ == "CLIPAttention" and hasattr(module, "embed_dim")


@contextlib.contextmanager
def count_macs(model: nn.Module):
    """Context manager counting MACs of forward passes run inside it; yields a dict filled on exit."""
    from diffusers.models.attention_processor import Attention

    totals = {"paper": 0, "attention": 0}
    handles = []

    def on_module(module, inputs, output):
        totals["paper"] += _module_macs(module, inputs, output)

    def on_attention(module, args, kwargs, output):
        totals["attention"] += _attention_macs(module, args, kwargs)

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear) + NORM_TYPES):
            handles.append(m.register_forward_hook(on_module))
        if isinstance(m, Attention) or _is_clip_attention(m):
            handles.append(m.register_forward_hook(on_attention, with_kwargs=True))
    try:
        yield totals
    finally:
        for h in handles:
            h.remove()


def module_costs(unet: nn.Module, *, resolution: int = 512, vae_factor: int = 8) -> dict[str, list[int]]:
    """Per module of a U-Net: [own parameters, paper-convention MACs, attention-matmul MACs] of one step.

    Own parameters exclude submodules', so the rows sum to the totals ``profile_component`` reports. Runs on
    the meta device (no weights, no compute).
    """
    from diffusers.models.attention_processor import Attention

    meta_model = to_meta(unet)
    costs: dict[str, list[int]] = {name: [sum(p.numel() for p in m.parameters(recurse=False)), 0, 0]
                                   for name, m in meta_model.named_modules()}
    handles = []
    for name, m in meta_model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear) + NORM_TYPES):
            handles.append(m.register_forward_hook(
                lambda mod, i, o, name=name: costs[name].__setitem__(1, costs[name][1] + _module_macs(mod, i, o))))
        if isinstance(m, Attention):
            handles.append(m.register_forward_hook(
                lambda mod, a, k, o, name=name: costs[name].__setitem__(2, costs[name][2] + _attention_macs(mod, a, k)),
                with_kwargs=True))
    try:
        args, _ = _component_inputs("unet", meta_model, resolution, vae_factor, 1)
        with torch.no_grad():
            meta_model(*args)
    finally:
        for h in handles:
            h.remove()
    return costs


def _component_inputs(component: str, model: nn.Module, resolution: int, vae_factor: int, batch: int):
    device = next(model.parameters()).device
    latent = resolution // vae_factor
    if component == "unet":
        c = model.config
        return (
            torch.zeros(batch, c.in_channels, latent, latent, device=device),
            torch.ones(batch, device=device),
            torch.zeros(batch, 77, c.cross_attention_dim, device=device),
        ), {}
    if component == "text_encoder":
        return (torch.zeros(batch, 77, dtype=torch.long, device=device),), {}
    if component == "vae_decoder":
        return (torch.zeros(batch, model.config.latent_channels, latent, latent, device=device),), {}
    if component == "vae_encoder":
        return (torch.zeros(batch, 3, resolution, resolution, device=device),), {}
    raise ValueError(f"unknown component {component!r}")


def _run(component: str, model: nn.Module, args: tuple) -> None:
    if component == "vae_decoder":
        model.decode(*args)
    elif component == "vae_encoder":
        model.encode(*args)
    else:
        model(*args)


def profile_component(
    model: nn.Module, component: str, *, name: str = "", resolution: int = 512, vae_factor: int = 8, batch: int = 1
) -> Profile:
    """Profile one component (``unet``, ``text_encoder``, ``vae_decoder``, ``vae_encoder``).

    The model may live on any device; it is profiled with meta tensors so no real compute is done.
    For ``vae_decoder``/``vae_encoder`` pass the whole VAE (``AutoencoderKL`` or ``AutoencoderTiny``); params count
    only that half.
    """
    meta_model = to_meta(model)
    args, _ = _component_inputs(component, meta_model, resolution, vae_factor, batch)
    counted = meta_model
    if component in VAE_HALVES:  # AutoencoderKL has the 1x1 quant convs, AutoencoderTiny (TAESD) does not
        counted = nn.ModuleList([m for n in VAE_HALVES[component] if (m := getattr(meta_model, n, None)) is not None])
    with torch.no_grad(), count_macs(counted) as totals:
        _run(component, meta_model, args)
    params = count_params(counted)
    return Profile(
        name=name or component,
        component=component,
        params=params,
        macs_paper=totals["paper"],
        macs_full=totals["paper"] + totals["attention"],
        resolution=resolution,
        size_fp32_mb=params * 4 / 2**20,
        size_fp16_mb=params * 2 / 2**20,
        size_int8_mb=params / 2**20,
    )


def to_meta(model: nn.Module) -> nn.Module:
    """A copy of ``model`` on the meta device (the original is untouched)."""
    if next(model.parameters()).device.type == "meta":
        return model
    # deepcopy would duplicate GBs of weights; rebuild from the config on meta instead when possible.
    config = getattr(model, "config", None)
    if config is not None and hasattr(type(model), "from_config"):
        with torch.device("meta"):
            return type(model).from_config(config).eval()
    if config is not None and hasattr(type(model), "_from_config"):
        with torch.device("meta"):
            return type(model)._from_config(config).eval()
    with torch.device("meta"):
        return copy.deepcopy(model).to("meta")


def profile_model(model, *, name: str = "", resolution: int = 512, components=("unet",)) -> list[Profile]:
    """Profile the requested components of an ``SDModel`` (``unet``, ``text_encoder``, ``vae_decoder``, ...)."""
    parts = {"unet": model.unet, "text_encoder": model.text_encoder, "vae_decoder": model.vae, "vae_encoder": model.vae}
    out = []
    for component in components:
        part = parts[component]
        if part is None:
            raise ValueError(f"{name or model.source} was loaded without the module needed for {component}")
        out.append(profile_component(part, component, name=name, resolution=resolution, vae_factor=model.vae_scale_factor))
    return out


def profile_teacher_and_students(
    src: str, variants=(), *, unet=None, resolution: int = 512, components=("unet",), vae=None
) -> list[Profile]:
    """Profile a teacher and the students built from it by removal plans (no weights are loaded).

    Args:
        src: model source (see ``bksdm_edge.loading.load_model``).
        variants: plan specs (built-in names, plan files, student folders) to build from the teacher's config;
            each row is named by the spec as given.
        unet: optional student U-Net folder, profiled as it is (an extra row; its plan is recognised if it is a
            removal of the teacher).
        resolution: image resolution in pixels.
        components: which components to profile per model; students only differ in ``unet``.
        vae: optional replacement VAE (``tiny``, a ``distill-vae`` run, an AutoencoderTiny folder or hub id): its
            ``vae_decoder``/``vae_encoder`` rows (named ``vae:SOURCE``) follow the teacher's.
    """
    import dataclasses

    from diffusers import UNet2DConditionModel

    from .errors import BksdmError
    from .loading import load_model, load_unet
    from .plans.resolve import describe_student
    from .student import validate_plan

    needs = {"unet": "unet", "text_encoder": "text_encoder", "vae_decoder": "vae", "vae_encoder": "vae"}
    model = load_model(src, components=tuple({needs[c] for c in components} | {"vae", "unet"}), weights=False)
    rows = profile_model(model, name="teacher", resolution=resolution, components=components)
    vae_halves = [c for c in components if c in VAE_HALVES]
    if vae is not None and str(vae) != "teacher":
        from .loading import teacher_vae_config
        from .tiny_vae import load_vae

        if not vae_halves:
            from .errors import BksdmError

            raise BksdmError("--vae profiles a VAE: add vae_decoder (or vae_encoder) to --components")
        tiny, _ = load_vae(vae, teacher_vae_config(src), weights=False)
        rows += [profile_component(tiny, c, name=f"vae:{vae}", resolution=resolution,
                                   vae_factor=model.vae_scale_factor) for c in vae_halves]
    students = []
    for spec in variants:
        plan = validate_plan(spec, model.unet.config)
        with torch.device("meta"):
            student = UNet2DConditionModel.from_config(plan.student_config(model.unet.config))
        label = plan.summary() if str(spec) == plan.name else f"{plan.name}: {plan.summary()}"
        students.append((str(spec), student, label))
    if unet is not None:
        try:
            known = describe_student(unet, model.unet.config)
            label = f"{known.plan.name} (from {known.how}): {known.plan.summary()}"
        except BksdmError as err:
            label = str(err)
        students.append((str(unet), load_unet(unet, weights=False), label))
    for name, student, label in students:
        row = profile_component(student, "unet", name=name, resolution=resolution, vae_factor=model.vae_scale_factor)
        rows.append(dataclasses.replace(row, plan=label))
    return rows


def _macs(n: int) -> str:
    return f"{n / 1e9:.1f}G" if n >= 1e9 else f"{n / 1e6:.1f}M"


def format_profiles(rows: list[Profile]) -> str:
    """A Markdown table of profiles with ratios to the teacher's row of the same component."""
    teacher = {r.component: r for r in rows if r.name == "teacher"}
    lines = [
        "| model | component | params | vs teacher | MACs (paper) | vs teacher | MACs (full) | vs teacher | fp16 MB | int8 MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        t = teacher.get(r.component, r)
        lines.append(
            f"| {r.name} | {r.component} | {r.params:,} | {r.params / t.params:.3f} | {_macs(r.macs_paper)} | "
            f"{r.macs_paper / t.macs_paper:.3f} | {_macs(r.macs_full)} | {r.macs_full / t.macs_full:.3f} | "
            f"{r.size_fp16_mb:.1f} | {r.size_int8_mb:.1f} |"
        )
    return "\n".join(lines)
