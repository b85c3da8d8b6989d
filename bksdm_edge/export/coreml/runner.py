"""Running exported packages with the Core ML runtime (macOS only), chunks chained as Swift does."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..base import ConvertedModel, ExportError, Runner
from .contract import to_apple_text_layout
from .environment import COMPUTE_UNITS, runtime_unavailable
from .package import package_paths


def load_runner(converted_or_path, *, compute_units: str = "all") -> Runner:
    """A callable running the package(s) on macOS: feeds dict -> outputs dict.

    Args:
        converted_or_path: a ``ConvertedModel`` (its chunks are chained) or one ``.mlpackage`` path.
        compute_units: a key of ``COMPUTE_UNITS`` (a ``ConvertedModel`` carries its own).
    """
    import coremltools as ct

    why = runtime_unavailable()
    if why:
        raise ExportError(f"Cannot run Core ML models here: {why}. Validate on a Mac, or rely on the static check.")
    if isinstance(converted_or_path, ConvertedModel):
        paths = package_paths(converted_or_path)
        compute_units = converted_or_path.extra.get("compute_units", compute_units)
    else:
        paths = [Path(converted_or_path)]
    units = getattr(ct.ComputeUnit, COMPUTE_UNITS[compute_units])
    models = [ct.models.MLModel(str(p), compute_units=units) for p in paths]
    shapes = [{f.name: tuple(f.type.multiArrayType.shape) for f in m.get_spec().description.input} for m in models]

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # Like Swift's predictions(from:): each stage sees the original inputs merged with the last outputs.
        available = dict(feeds)
        out: dict[str, np.ndarray] = {}
        for model, wanted in zip(models, shapes):
            args = {}
            for name, shape in wanted.items():
                x = np.asarray(available[name], dtype=np.float32)
                if len(shape) == 4 and x.ndim == 3:  # canonical (B, S, D) text states
                    x = to_apple_text_layout(x)
                args[name] = x
            out = {k: np.asarray(v) for k, v in model.predict(args).items()}
            available.update(out)
        return out

    return run
