"""Distillation of BK-SDM students: data, latent cache, feature hooks, the loss and the training loop.

``distill(DistillConfig(...))`` is the one entry point the CLI calls; ``cache_latents`` builds the
optional cache of VAE latents and text embeddings.
"""

from .cache import cache_latents, open_cache
from .config import CheckpointConfig, DataConfig, DistillConfig, LossConfig, OptimConfig, ValidationConfig
from .data import DataError, load_rows
from .features import FeatureCapture
from .loss import distill_losses, training_target
from .train import DistillResult, distill, read_log

__all__ = [
    "CheckpointConfig", "DataConfig", "DataError", "DistillConfig", "DistillResult", "FeatureCapture",
    "LossConfig", "OptimConfig", "ValidationConfig", "cache_latents", "distill", "distill_losses",
    "load_rows", "open_cache", "read_log", "training_target",
]
