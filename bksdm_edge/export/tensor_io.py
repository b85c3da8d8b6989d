"""Move canonical arrays (NCHW, float32) in and out of a runner, as its manifest entry describes.

A back-end may store inputs/outputs in its own layout (TFLite: NHWC), dtype (fp16 I/O)
or as quantized integers (w8a8 I/O); the ``TensorInfo`` of each tensor says which.
Validation and generation both go through these two functions, so neither knows
anything about a particular format. numpy only: used at generation time without torch.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .base import TensorInfo


def to_runner_inputs(infos: Sequence[TensorInfo], arrays: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Convert canonical arrays (in the component's input order) to the runner's feed dict."""
    if len(infos) != len(arrays):
        raise ValueError(f"expected {len(infos)} inputs ({[i.name for i in infos]}), got {len(arrays)}")
    feeds = {}
    for info, x in zip(infos, arrays):
        x = np.asarray(x)
        if info.layout == "NHWC" and x.ndim == 4:
            x = x.transpose(0, 2, 3, 1)
        q = info.quantization
        if q:
            x = np.round(x / q["scale"] + q["zero_point"])
            limits = np.iinfo(np.dtype(q["dtype"]))
            x = np.clip(x, limits.min, limits.max)
        feeds[info.name] = np.ascontiguousarray(x.astype(np.dtype(info.dtype), copy=False))
    return feeds


def from_runner_outputs(infos: Sequence[TensorInfo], outputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Convert the runner's outputs back to canonical float32 arrays, in the manifest's output order."""
    result = []
    for info in infos:
        y = np.asarray(outputs[info.name])
        q = info.quantization
        y = (y.astype(np.float32) - q["zero_point"]) * q["scale"] if q else y.astype(np.float32, copy=False)
        if info.layout == "NHWC" and y.ndim == 4:
            y = y.transpose(0, 3, 1, 2)
        result.append(y)
    return result


def tensor_info_from_json(d: dict) -> TensorInfo:
    """Inverse of ``TensorInfo.to_json`` (the manifest's form)."""
    return TensorInfo(
        name=d["name"], shape=tuple(d["shape"]), dtype=d["dtype"], layout=d.get("layout"),
        quantization=d.get("quantization"),
    )
