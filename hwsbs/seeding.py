"""Every random source of a run, seeded from ``--seed``: per run, per phase, and per epoch.

Each phase reseeds torch and Python's ``random`` from (seed, phase) and each epoch's loader from
(seed, phase, epoch), so a run resumed at any checkpoint replays the same random numbers.
"""

from __future__ import annotations

import random
import zlib

import torch

__all__ = ["PHASES", "seed_all", "epoch_seed", "seed_phase"]

PHASES = ("pretrain", "search", "finetune", "done")


def seed_all(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def epoch_seed(seed: int, phase: str, epoch: int) -> int:
    return (seed * 1_000_003 + PHASES.index(phase) * 10_007 + epoch) % (2**31)


def seed_phase(seed: int, phase: str) -> None:
    """Reseed torch and python at the start of ``phase``: whatever ran before (the previous phase
    in this process, or nothing in a resumed one), the phase sees the same random numbers."""
    seed_all(zlib.crc32(f"hwsbs:{seed}:{phase}".encode()))
