"""Distillation of BK-SDM students: data, latent cache, feature hooks, the objectives and the training loop.

``distill(DistillConfig(...))`` is the one entry point the CLI calls; ``config.objective`` picks the
objective (``kd``: the BK-SDM paper's; ``lcm``: latent consistency distillation for few-step sampling).
``cache_latents`` builds the optional cache of VAE latents and text embeddings.
"""

from .cache import cache_latents, open_cache
from .config import (
    CheckpointConfig,
    DataConfig,
    DistillConfig,
    LcmConfig,
    LossConfig,
    OptimConfig,
    ValidationConfig,
    VaeConfig,
)
from .data import DataError, load_rows
from .features import FeatureCapture
from .loss import distill_losses, training_target
from .objective import OBJECTIVES, DistillError, get_objective
from .train import DistillResult, distill, read_log

__all__ = [
    "OBJECTIVES", "CheckpointConfig", "DataConfig", "DataError", "DistillConfig", "DistillError", "DistillResult",
    "FeatureCapture", "LcmConfig", "LossConfig", "OptimConfig", "ValidationConfig", "VaeConfig", "cache_latents", "distill",
    "distill_losses", "get_objective", "load_rows", "open_cache", "read_log", "training_target",
]
