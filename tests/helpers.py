"""Small shared fixtures: digits loaders and a quickly trained default CNN (cached per session)."""

from __future__ import annotations

import copy
from functools import lru_cache

import torch
from torch import nn

from hwsbs.data import build_dataset, make_loader
from hwsbs.models import build_model
from hwsbs.progress import PhaseProgress
from hwsbs.training import make_sgd, split_decay, train_epoch


def digits_loaders(batch_size: int = 64, subset: int | None = 512):
    bundle = build_dataset("digits", subset=subset, seed=0)
    return make_loader(bundle.train, batch_size, True, 0), make_loader(bundle.val, 256, False, 0)


@lru_cache(maxsize=1)
def _trained() -> nn.Module:
    torch.manual_seed(0)
    model = build_model("small_cnn", 10, 1, (8, 8))
    train, _ = digits_loaders()
    opt = make_sgd(*split_decay(model), 0.05, 5e-4)
    for _ in range(4):
        train_epoch(model, train, opt, None, torch.device("cpu"), PhaseProgress(False), "test pretraining")
    return model


def pretrained_small_cnn() -> nn.Module:
    """A copy of a small CNN trained for a few epochs on digits (about 1 s, once per session)."""
    return copy.deepcopy(_trained())
