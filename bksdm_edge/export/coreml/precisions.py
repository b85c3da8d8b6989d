"""The Core ML precisions: ONE row per ``--precision``, from which the registered targets
(``targets.py``), their ``--help`` lines, the static check's expectations and the validation
gates are all made. Change a precision's facts here and nowhere else.

Every precision computes in float16 with float32 inputs and outputs (Apple's converter does the
same; Swift reads outputs as Float32); they differ in how the weights are stored.
"""

from __future__ import annotations

from dataclasses import dataclass

from .environment import GENERATION_NAMES, DEPLOYMENT_TARGETS


@dataclass(frozen=True)
class CoreMLPrecision:
    """How one ``--precision`` stores the weights, and the numbers that check it.

    Args:
        name: the ``--precision`` value.
        kind: "fp16" (no compression) | "linear" (linear quantization) | "palettize" (k-means LUT).
        nbits: bits per stored weight.
        storage: what the saved package must store (``package.inspect_package``'s ``stored_precision``).
        min_target: the oldest deployment target that can load these weights.
        weight_psnr_floor: dB; the static check's floor for every stored weight, dequantized, against
            PyTorch (peak = max |w|). A sanity floor that catches broken conversions, not quality loss.
        output_psnr: dB; the validation gate on model outputs against PyTorch where Core ML runs (macOS).
            fp16's 35 dB is apple/ml-stable-diffusion's gate; the compressed ones are provisional (not yet
            measured on a Mac).
        description: one line for ``--help`` and the manifest's ``target.description``.
    """

    name: str
    kind: str
    nbits: int
    storage: str
    min_target: str
    weight_psnr_floor: float
    output_psnr: float
    description: str

    @property
    def needs_sklearn(self) -> bool:
        return self.kind == "palettize"

    @property
    def help(self) -> str:
        """The description with the OS versions that load it (the target's DESCRIPTION)."""
        return f"{self.description}; loads on {GENERATION_NAMES[DEPLOYMENT_TARGETS[self.min_target][1]]} or newer"


PRECISIONS: dict[str, CoreMLPrecision] = {
    p.name: p
    for p in (
        CoreMLPrecision("fp16", "fp16", 16, "fp16", "iOS16", 55.0, 35.0,
                        "float16 weights and compute, float32 inputs/outputs (Apple's default)"),
        CoreMLPrecision("int8", "linear", 8, "int8", "iOS16", 30.0, 25.0,
                        "int8 weights (linear symmetric, per output channel; about half of fp16), fp16 compute"),
        CoreMLPrecision("palettize8", "palettize", 8, "lut8", "iOS17", 30.0, 25.0,
                        "8-bit k-means palettized weights (256-entry LUT; about half of fp16), fp16 compute"),
        CoreMLPrecision("palettize6", "palettize", 6, "lut6", "iOS17", 20.0, 20.0,
                        "6-bit k-means palettized weights (64-entry LUT; about 3/8 of fp16), fp16 compute: "
                        "Apple's usual size/quality point for iPhone"),
        CoreMLPrecision("palettize4", "palettize", 4, "lut4", "iOS17", 10.0, 12.0,
                        "4-bit k-means palettized weights (16-entry LUT; about 1/4 of fp16), fp16 compute: "
                        "visible quality loss"),
    )
}


def get_precision(name: str) -> CoreMLPrecision:
    """The row of ``name``; a clear error listing the choices otherwise."""
    from ..base import ExportError

    if name not in PRECISIONS:
        raise ExportError(f"Unknown Core ML precision {name!r}; choose from {', '.join(PRECISIONS)}")
    return PRECISIONS[name]
