"""The state one run shares between its phases: options, data, cost objectives, history.

Training loaders are rebuilt per epoch from (seed, phase, epoch); under torchrun each rank's loader
is its slice of every global batch (:mod:`hwsbs.distributed`). Checkpoints are written by rank 0.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from cost_models.base import CostModel
from hardware_profiles import HardwareProfile
from hwsbs.budget import check_costable
from hwsbs.checkpoint import load_state_dict_file, load_weights_into, save_checkpoint
from hwsbs.config import SearchConfig, check_device
from hwsbs.data import build_dataset, make_loader
from hwsbs.distributed import broadcast_state, describe, is_main, rank_loader, world
from hwsbs.errors import ConfigError
from hwsbs.models import build_model
from hwsbs.objectives import Objective, resolve_cost_model
from hwsbs.seeding import epoch_seed, seed_all

__all__ = ["RunState", "default_run_dir"]


def default_run_dir() -> Path:
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


def _as_loader(data: DataLoader | Dataset, batch_size: int, shuffle: bool, seed: int, workers: int) -> DataLoader:
    if isinstance(data, DataLoader):
        if world().distributed:
            raise ConfigError("hwsbs.search under torchrun: pass Datasets, not DataLoaders (each rank takes a shard)")
        return data
    if world().distributed:
        return rank_loader(data, batch_size, shuffle, seed, workers)
    return make_loader(data, batch_size, shuffle, seed, workers)


class RunState:
    """State shared by the phases of one run."""

    def __init__(
        self,
        config: SearchConfig,
        model: nn.Module | None,
        train_data,
        val_data,
        objectives: Sequence[Objective] | None,
        device: torch.device | None = None,
    ) -> None:
        self.cfg = config
        self.device = device if device is not None else check_device(config.device)
        seed_all(config.seed)
        objs = list(objectives) if objectives else [Objective(config.hw, config.cost, 1.0)]
        self.objectives: list[tuple[Objective, HardwareProfile, CostModel]] = []
        for o in objs:
            profile, cm = resolve_cost_model(o.hw, o.cost)
            self.objectives.append((o, profile, cm))
        _, self.profile, self.cost_model = self.objectives[0]
        if train_data is None or val_data is None:
            bundle = build_dataset(config.data, config.data_dir, config.subset, config.seed)
            train_data, val_data = bundle.train, bundle.val
            self.model_name = config.model
            if model is None:
                model = build_model(config.model, **bundle.geometry())
        else:
            self.model_name = config.model if model is None else type(model).__name__
            if model is None:
                raise ConfigError("hwsbs.search: a model is needed when train_data/val_data are given")
        self.model_builder_state = model
        self.fp_state = None
        if config.checkpoint is not None:  # validated before anything is written
            self.fp_state = load_state_dict_file(config.checkpoint)
            load_weights_into(model, self.fp_state, f"--checkpoint {config.checkpoint}")
        self.train_data, self.val_data = train_data, val_data
        self.val_loader = _as_loader(val_data, max(config.batch_size, 256), False, config.seed, config.workers)
        first = next(iter(self.loader("pretrain", 0)))
        self.example = first[0].to(self.device)
        self.sequence = first[1].dim() > 1  # a target per position: a language model, whose result adds perplexity
        check_costable(model, first[0], [cm for _, _, cm in self.objectives], config.cost_batch, config.target)
        self.run_dir = Path(config.out) if config.out else default_run_dir()
        self.coverage: dict[str, Any] | None = None  # the converted model's coverage, for result.json
        self.history: list[dict[str, Any]] = []
        self.on_epoch: Callable[[dict[str, Any]], None] | None = None  # run_search's per-epoch callback
        self.fp_accuracy: float | None = None
        self.distributed: dict[str, Any] | None = describe()  # torchrun: processes, backend, agreement

    def loader(self, phase: str, epoch: int) -> DataLoader:
        """The training loader for one epoch; every random source restarts from (seed, phase, epoch)."""
        seed = epoch_seed(self.cfg.seed, phase, epoch)
        torch.manual_seed(seed)
        random.seed(seed)
        base = self.train_data.dataset if isinstance(self.train_data, Subset) else self.train_data
        if hasattr(base, "reseed"):  # augmentation streams of hwsbs datasets restart too (one per rank)
            base.reseed(seed + 7919 * world().rank)
        return _as_loader(self.train_data, self.cfg.batch_size, True, seed, self.cfg.workers)

    def steps_per_epoch(self) -> int:
        return len(self.loader("pretrain", 0))

    def record(self, entry: dict[str, Any]) -> None:
        """Append one epoch's metrics to the history, and tell ``on_epoch``."""
        self.history.append(entry)
        if self.on_epoch is not None:
            self.on_epoch(entry)

    def checkpoint(self, phase: str, epoch: int, model: nn.Module, optim: dict[str, Any]) -> None:
        broadcast_state(model)  # every rank continues from rank 0's batch-norm statistics
        if not is_main():
            return
        save_checkpoint(
            {
                "phase": phase,
                "epoch": epoch,
                "model": model.state_dict(),
                "optim": optim,
                "fp_accuracy": self.fp_accuracy,
                "history": json.dumps(self.history),
            },
            self.run_dir,
        )
