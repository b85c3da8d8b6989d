"""Pre-flight memory estimates, shared by every export format: refuse before starting, not half-way.

A conversion that runs out of memory is killed by the kernel after minutes of work and may take
other jobs on the machine with it; a refusal costs a message. Each format back-end describes the
peak resident memory of one conversion as a ``PeakModel`` fitted *above* its measurements
(benchmarks/results/...): a fixed part, a multiple of the component's fp32 weight bytes, and a
multiple of the bytes of its largest activation at the export shape (calibration and validation
run the model; attention scores grow with batch x (latent pixels)^2). ``check_fits`` compares an
estimate with the memory this process may still use and raises ``MemoryRefused`` with the numbers,
what they are made of, and what to do instead.

Nothing here imports torch: callers pass byte counts (see ``weight_bytes``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from .base import ExportError

GIB = 2**30

# What every refusal suggests; a back-end may put a more specific fix first.
GENERIC_FIXES = (
    "close other jobs",
    "export a smaller BK-SDM student (bk-small / bk-tiny)",
    "export the components one at a time (--components)",
    "convert on a machine with more memory",
)


class MemoryRefused(ExportError):
    """An export refused up front because its estimated peak memory exceeds what is available."""


@dataclass(frozen=True)
class PeakModel:
    """Peak RSS one conversion adds, as ``fixed + per_weight_byte * W + per_activation_byte * A``.

    ``W``: the component's fp32 weight bytes (4 x parameters and buffers); ``A``: the bytes of its
    largest intermediate tensor at the export shape (0 where activations do not matter).
    ``source`` names the measurements the coefficients were fitted above.
    """

    fixed_bytes: int = 0
    per_weight_byte: float = 0.0
    per_activation_byte: float = 0.0
    source: str = ""

    def bytes_for(self, weight_bytes: int, activation_bytes: int = 0) -> int:
        return int(self.fixed_bytes + self.per_weight_byte * weight_bytes + self.per_activation_byte * activation_bytes)


@dataclass(frozen=True)
class MemoryEstimate:
    """An estimated peak, kept as labelled parts so a refusal can say what it is made of."""

    what: str  # e.g. "TFLite w8a8 conversion of unet (482M parameters)"
    parts: tuple[tuple[str, int], ...] = field(default_factory=tuple)

    @property
    def total(self) -> int:
        return sum(b for _, b in self.parts)

    def breakdown(self) -> str:
        return " + ".join(f"{label} {b / GIB:.1f}" for label, b in self.parts if b)


def count_parameters(module) -> int:
    """Number of parameters and buffers of a module (what a traced graph carries as constants)."""
    return sum(p.numel() for p in module.parameters()) + sum(b.numel() for b in module.buffers())


def weight_bytes(num_params: int) -> int:
    """fp32 bytes of ``num_params`` parameters (what every converter starts from)."""
    return 4 * int(num_params)


def available_memory() -> int:
    """Bytes this process may still use: available RAM, capped by a cgroup limit if one is set."""
    import psutil

    avail = psutil.virtual_memory().available
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            limit = Path(limit_file).read_text().strip()
            if limit != "max" and int(limit) < 2**60:
                avail = min(avail, int(limit) - int(Path(usage_file).read_text().strip()))
            break
        except (OSError, ValueError):
            continue
    return avail


def check_fits(estimate: MemoryEstimate, *, limit: int | None = None, fixes: Sequence[str] = (),
               override: str = "") -> int:
    """Raise ``MemoryRefused`` when ``estimate`` exceeds ``limit`` (default: ``available_memory()``).

    Args:
        estimate: the estimated peak and its parts.
        limit: bytes allowed (tests and callers that know better); None measures what is available.
        fixes: what to do instead, most specific first (the generic ones are appended).
        override: how to bypass the check (e.g. "--max-memory 20"), named in the message.
    Returns the estimated bytes when they fit.
    """
    need = estimate.total
    have = available_memory() if limit is None else int(limit)
    if need > have:
        todo = "; ".join(_unique([*fixes, *GENERIC_FIXES]))
        bypass = f" If you know better, {override}." if override else ""
        raise MemoryRefused(
            f"{estimate.what} needs about {need / GIB:.1f} GiB of RAM ({estimate.breakdown()} GiB), but only "
            f"{have / GIB:.1f} GiB is available; nothing was started. To fit: {todo}.{bypass}"
        )
    return need


def _unique(items: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for item in items:
        seen.setdefault(item, None)
    return list(seen)


# ---------------------------------------------------------------------------------------------
# The pre-flight of a whole export (``pipeline.export_bundle``): every component, before any slow work.


def component_weight_bytes(model, component: str) -> int:
    """fp32 bytes of the weights ``component``'s wrapper carries (the VAE's decoder or encoder half only)."""
    if component == "unet":
        return weight_bytes(count_parameters(model.unet))
    if component == "text_encoder":
        return weight_bytes(count_parameters(model.text_encoder))
    parts = {"vae_decoder": ("decoder", "post_quant_conv"), "vae_encoder": ("encoder", "quant_conv")}
    if component not in parts:
        raise ValueError(f"unknown component {component!r}")
    # A tiny VAE (AutoencoderTiny) has no quant convs.
    return weight_bytes(sum(count_parameters(m) for m in (getattr(model.vae, a, None) for a in parts[component]) if m is not None))


def _heads(config) -> int:
    """Attention heads of a U-Net's first attention stage (diffusers' SD configs keep the head count in
    ``attention_head_dim``)."""
    heads = getattr(config, "num_attention_heads", None) or config.attention_head_dim
    return int(heads[0] if isinstance(heads, (list, tuple)) else heads)


def activation_bytes(model, component: str, height: int, width: int, batch: int) -> int:
    """Bytes of the component's largest attention-score tensor at the export shape.

    Unfused attention (how every exporter here writes it, and how ONNX Runtime's calibration and
    validation sessions run it) materialises batch x heads x tokens^2 scores; at 512 px that is the
    largest tensor of the U-Net (tokens = the latent's 64x64 pixels at its first attention stage) and
    of the VAE (its mid-block attention at the latent resolution, one head), and it doubles with the
    CFG batch.
    """
    f = model.vae_scale_factor
    tokens = (height // f) * (width // f)
    if component == "unet":
        if not any("Attn" in t for t in model.unet.config.down_block_types[:1]):
            tokens //= 4  # the first attention sits one stage down
        return 4 * batch * _heads(model.unet.config) * tokens**2
    if component in ("vae_decoder", "vae_encoder"):
        return 4 * batch * tokens**2
    if component == "text_encoder":
        config = model.text_encoder.config
        return 4 * batch * config.num_attention_heads * config.max_position_embeddings**2
    raise ValueError(f"unknown component {component!r}")


def peak_estimate(peak: PeakModel, what: str, model, component: str, shape) -> MemoryEstimate:
    """``peak`` applied to ``component`` of a loaded model at ``shape`` (a ``components.ShapeConfig``)."""
    w = component_weight_bytes(model, component)
    a = activation_bytes(model, component, shape.height, shape.width, shape.batch)
    return MemoryEstimate(what, (("fixed", peak.fixed_bytes), (f"{peak.per_weight_byte:g} x fp32 weights",
                                                               int(peak.per_weight_byte * w)),
                                 (f"{peak.per_activation_byte:g} x attention scores",
                                  int(peak.per_activation_byte * a))))


def check_export_memory(request, model, shapes: dict) -> dict[str, int]:
    """Refuse an export whose largest component conversion would not fit, before any slow work.

    Components are converted one after another, each on top of the loaded model, so the largest
    estimate is compared with what is available (or ``request.memory_limit``). Returns every
    component's estimate in bytes (recorded in the export log); empty where the format has none.
    """
    target = request.target
    estimates = {}
    for component, shape in shapes.items():
        estimate = target.memory_estimate(component, model, shape, target.component_options(component, request))
        if estimate is not None:
            estimates[component] = estimate
    if estimates:
        worst = max(estimates.values(), key=lambda e: e.total)
        batch = shapes.get("unet")
        fixes = ["export the U-Net at --batch 1 (the pipeline then calls it twice per step)"] if batch and batch.batch > 1 else []
        check_fits(worst, limit=request.memory_limit, fixes=fixes,
                   override="pass --memory-limit GIB (ExportRequest.memory_limit)")
    return {c: e.total for c, e in estimates.items()}
