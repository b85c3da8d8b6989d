"""Capture intermediate outputs of named submodules for the feature-distillation loss.

Hooks go on the *unwrapped* model (``accelerator.unwrap_model``): a DDP or compiled wrapper calls
the inner module, so the hooks fire without any "module." name-prefix handling. The context
manager always removes its hooks, also when training raises.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from ..errors import BksdmError


class FeatureCaptureError(BksdmError, KeyError):
    def __str__(self) -> str:
        return self.args[0]


def _first_tensor(output: Any) -> torch.Tensor:
    # Down blocks return (hidden_states, residuals); the stage output is the hidden state.
    if isinstance(output, (tuple, list)):
        output = output[0]
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"cannot take a feature from a {type(output).__name__} output")
    return output


class FeatureCapture:
    """Record the output of each named submodule of ``model`` on every forward pass.

    Use as ``with FeatureCapture(unet, names) as cap: unet(...); feats = cap.take()``.

    Args:
        model: the module to hook (unwrapped, not a DDP wrapper).
        names: module names as in ``model.named_modules()``.
    """

    def __init__(self, model: torch.nn.Module, names: Iterable[str]):
        self.model = model
        self.names = tuple(names)
        self.features: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> FeatureCapture:
        modules = dict(self.model.named_modules())
        missing = [n for n in self.names if n not in modules]
        if missing:
            top = sorted({n.split(".")[0] for n in modules if n})
            raise FeatureCaptureError(
                f"{type(self.model).__name__} has no module(s) {missing} for feature distillation (top-level "
                f"modules: {top}). Hook the unwrapped model (accelerator.unwrap_model) and check the variant's "
                "feature_pairs."
            )
        try:
            for name in self.names:
                self._handles.append(modules[name].register_forward_hook(self._hook(name)))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.features.clear()

    def _hook(self, name: str):
        def hook(module, args, output):
            self.features[name] = _first_tensor(output)

        return hook

    def take(self) -> list[torch.Tensor]:
        """The captured features in ``names`` order; clears them for the next forward."""
        missing = [n for n in self.names if n not in self.features]
        if missing:
            raise FeatureCaptureError(f"module(s) {missing} did not run in the last forward pass")
        out = [self.features[n] for n in self.names]
        self.features.clear()
        return out
