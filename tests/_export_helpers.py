"""Shared, cached exports of builtin:tiny-sd for the export/bundle/generate tests (built once per session)."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

ROOT = Path(tempfile.mkdtemp(prefix="bksdm-export-tests-"))


@functools.lru_cache(maxsize=None)
def tiny_bundle(precision: str = "fp32", batch: int = 1) -> Path:
    """A validated tiny-sd ONNX bundle (text_encoder, unet, vae_decoder). Treat as read-only."""
    from bksdm_edge.export.pipeline import ExportRequest, export_bundle

    request = ExportRequest(out=ROOT / f"tiny-{precision}-b{batch}", model="builtin:tiny-sd", precision=precision,
                            batch=batch, progress=False)
    return export_bundle(request, model=_model())


@functools.lru_cache(maxsize=None)
def _model():
    from bksdm_edge.loading import load_model

    return load_model("builtin:tiny-sd")
