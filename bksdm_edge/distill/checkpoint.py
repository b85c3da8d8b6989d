"""Atomic training checkpoints: written to a temp folder, then renamed, so a visible one is complete.

A run killed at any moment (kill -9 included) leaves either complete ``checkpoint-N`` folders or
a ``.tmp-checkpoint-N`` folder that is ignored and cleaned up on the next start.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from ..errors import BksdmError

CHECKPOINT_DIR = "checkpoints"
TRAINER_STATE = "trainer_state.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(BksdmError, ValueError):
    pass


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = [(int(m[1]), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and (p / TRAINER_STATE).exists()]
    return [p for _, p in sorted(found)]


def resolve_resume(run_dir: str | Path, resume: str | None) -> Path | None:
    """The checkpoint to resume from: None for a new run (or ``latest`` with no checkpoint yet)."""
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(run_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / TRAINER_STATE).exists():
        raise CheckpointError(f"{path} is not a complete checkpoint (no {TRAINER_STATE}); pass --resume latest or "
                              f"one of {[str(p) for p in list_checkpoints(run_dir)]}")
    return path


def read_trainer_state(checkpoint: str | Path) -> dict[str, Any]:
    return json.loads((Path(checkpoint) / TRAINER_STATE).read_text())


def clean_partial(run_dir: str | Path) -> None:
    """Remove temp folders left by a run killed while writing a checkpoint."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if root.is_dir():
        for p in root.glob(".tmp-*"):
            shutil.rmtree(p, ignore_errors=True)


def save_checkpoint(accelerator, run_dir: str | Path, step: int, trainer_state: dict[str, Any], keep: int) -> Path:
    """Save model, optimizer, LR scheduler, RNG states and registered objects (EMA) for ``step``.

    Every process calls this (accelerate writes per-process RNG states); the main process renames
    the temp folder and then drops all but the newest ``keep`` checkpoints (0 keeps all).
    """
    root = Path(run_dir) / CHECKPOINT_DIR
    tmp, final = root / f".tmp-checkpoint-{step}", root / f"checkpoint-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with open(tmp / TRAINER_STATE, "w") as f:
            json.dump(trainer_state, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        if final.exists():  # a resumed run re-reaching a step it had saved before the kill
            shutil.rmtree(final)
        os.rename(tmp, final)
        if keep > 0:
            for old in list_checkpoints(run_dir)[:-keep]:
                # Rename first: a kill during the delete must not leave a half-deleted "complete" checkpoint.
                doomed = root / f".tmp-delete-{old.name}"
                os.rename(old, doomed)
                shutil.rmtree(doomed, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final
