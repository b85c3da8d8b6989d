"""The static check of a converted component, for machines where Core ML cannot run (Linux).

The shared validation (``export/validation.py``) calls it instead of running the model: the saved
packages must declare the I/O that ``convert`` reported, all float32; chunk 2 must be fed by chunk 1;
the stored weights must have the precision's storage type; and every stored weight, dequantized, must
be within the precision's PSNR floor of its PyTorch parameter. The numbers come from ``precisions.py``.
"""

from __future__ import annotations

from ..base import ConvertedModel
from .contract import IO_DTYPE
from .environment import quiet_coremltools
from .package import inspect_package, package_paths, spec_io
from .precisions import get_precision


def static_check(converted: ConvertedModel) -> list[str]:
    """Checks of a saved package that need no Core ML runtime; returns failure messages (empty = passed)."""
    problems = []
    paths = package_paths(converted)
    problems += [f"{path.name} is missing" for path in paths if not path.exists()]
    if problems:
        return problems
    row = get_precision(converted.precision)
    with quiet_coremltools():
        declared = [spec_io(path) for path in paths]
        stored = [inspect_package(path) for path in paths]
    inputs, outputs = declared[0][0], declared[-1][1]
    for kind, have, expected in (("inputs", inputs, converted.inputs), ("outputs", outputs, converted.outputs)):
        got = [(t.name, tuple(t.shape), t.dtype) for t in have]
        want = [(t.name, tuple(t.shape), t.dtype) for t in expected]
        if got != want:
            problems.append(f"saved {kind} {got} differ from the exported ones {want}")
    for path, (ins, outs) in zip(paths, declared):
        not_fp32 = [t.name for t in ins + outs if t.dtype != IO_DTYPE]
        if not_fp32:
            problems.append(f"{path.name}: {not_fp32} are not {IO_DTYPE} (Swift feeds and reads {IO_DTYPE})")
    if len(paths) == 2:
        (_, out1), (in2, _) = declared
        feeds = {t.name: tuple(t.shape) for t in out1} | {t.name: tuple(t.shape) for t in inputs}
        for t in in2:
            if feeds.get(t.name) != tuple(t.shape):
                problems.append(f"{paths[1].name} input {t.name!r} {list(t.shape)} is fed by neither "
                                f"{paths[0].name}'s outputs nor the U-Net inputs")
    for path, found in zip(paths, stored):
        if row.kind != "fp16" and found["largest_tensor"] < converted.extra.get("weight_threshold", 2048):
            continue  # no tensor is large enough to compress (toy models): coremltools keeps them all fp16
        if row.storage not in found["weights"]:
            problems.append(f"{path.name}: no {row.storage} weights stored (found {sorted(found['weights'])})")
        elif row.kind != "fp16" and found["compressed_fraction"] < 0.5:
            problems.append(f"{path.name}: only {found['compressed_fraction']:.0%} of the weights are stored as "
                            f"{row.storage}")
    psnr_info = converted.extra.get("weight_psnr", {})
    if psnr_info.get("tensors", 0) == 0:
        problems.append("no stored weight could be matched to a PyTorch parameter")
    elif psnr_info["min_db"] < row.weight_psnr_floor:
        problems.append(f"stored weights differ from PyTorch: min PSNR {psnr_info['min_db']:.1f} dB < "
                        f"{row.weight_psnr_floor:g} dB (worst: {psnr_info['worst'][0]['name']})")
    return problems
