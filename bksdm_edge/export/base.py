"""Types shared by every export format back-end.

A format back-end (``onnx.py``, ``tflite.py``, ``coreml/``) provides, per precision,
a ``convert`` function and a ``load_runner`` function with these signatures::

    convert(module, example_inputs, output_names, out_dir, precision, *, calibration=None, options=None)
        -> ConvertedModel
    load_runner(converted_or_path) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]

The export framework (registry, shared validation, bundle writer) only talks to
these; it never branches on the format.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import BksdmError

Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass(frozen=True)
class TensorInfo:
    """An input or output of an exported model, as written to the manifest."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str  # numpy dtype name: float32, float16, int32, int64, int8, uint8
    layout: str | None = None  # "NCHW" | "NHWC" | None
    quantization: dict[str, Any] | None = None  # {"scale", "zero_point", "dtype"} for integer I/O

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


@dataclass
class ConvertedModel:
    """What a format back-end wrote for one component."""

    path: Path  # the main model file or package folder
    files: list[Path]  # every file written (relative to the bundle root when stored in a manifest)
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    precision: str
    extra: dict[str, Any] = field(default_factory=dict)  # format-specific facts (opset, stored weight bits, ...)


class ExportError(BksdmError, RuntimeError):
    """An export that cannot be done; the message says why and what to do."""


def release_module(module) -> None:
    """Free a PyTorch module's weights once a back-end has traced it (``options["release_module"]``).

    The module (and the ``SDModel`` component it wraps) moves to the meta device: shapes stay, storage
    goes. ``export_bundle`` asks for it only for a model it loaded itself, after PyTorch's reference
    outputs were computed, for the last component that uses those weights.
    """
    import gc

    module.to("meta")
    gc.collect()
