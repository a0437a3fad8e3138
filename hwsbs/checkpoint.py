"""Atomic run checkpoints (write a sibling, then rename), loaded with ``weights_only=True``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from hwsbs.errors import CheckpointError

__all__ = ["CHECKPOINT_NAME", "save_checkpoint", "load_checkpoint", "load_state_dict_file"]

CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(state: dict[str, Any], run_dir: Path) -> Path:
    """Write ``state`` to ``run_dir/checkpoint.pt`` so a crash never leaves a torn file."""
    path = run_dir / CHECKPOINT_NAME
    tmp = run_dir / (CHECKPOINT_NAME + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
    return path


def load_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    """The run's checkpoint, or None when it has none."""
    path = run_dir / CHECKPOINT_NAME
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint: {str(exc).splitlines()[0][:200]}") from None


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A full-precision state_dict from ``--checkpoint`` (a plain dict of tensors)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"--checkpoint {p}: file not found")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"--checkpoint {p}: not a loadable state_dict ({str(exc).splitlines()[0][:200]})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"--checkpoint {p}: expected a state_dict (a mapping of names to tensors)")
    return state
