"""What a study does once before its trials: check every input, train the shared full-precision model."""

from __future__ import annotations

import os
import random
from pathlib import Path

import torch
from torch.utils.data import Subset

from cost_models.base import CostModel
from hwsbs.budget import check_target
from hwsbs.checkpoint import load_state_dict_file
from hwsbs.config import SearchConfig, check_device
from hwsbs.data import build_dataset, make_loader
from hwsbs.models import build_model
from hwsbs.pipeline import load_weights_into
from hwsbs.progress import PhaseProgress
from hwsbs.sbs.config_io import CompressionConfig, LayerDecision
from hwsbs.sbs.convert import searchable_shapes
from hwsbs.training import make_sgd, split_decay, train_epoch

__all__ = ["pretrain_once", "check_inputs"]


def pretrain_once(cfg: SearchConfig, study_dir: Path) -> str | None:
    """Train the full-precision model once per study (``fp_model.pt``); trials load it.

    Same schedule and per-epoch seeding as the pipeline's pretraining. Workers starting
    together may each train; the first to finish publishes its file and all trials use that one.
    """
    if cfg.checkpoint is not None or cfg.pretrain_epochs == 0:
        return cfg.checkpoint
    path = study_dir / "fp_model.pt"
    if path.is_file():
        return str(path)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    bundle = build_dataset(cfg.data, cfg.data_dir, cfg.subset, cfg.seed)
    model = build_model(cfg.model, bundle.num_classes, bundle.in_channels, bundle.image_size).to(device)
    optimizer = make_sgd(*split_decay(model), cfg.lr, cfg.weight_decay)
    steps = len(make_loader(bundle.train, cfg.batch_size, True, cfg.seed, cfg.workers))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(cfg.pretrain_epochs * steps, 1))
    with PhaseProgress(cfg.progress) as progress:
        progress.start("pretrain", cfg.pretrain_epochs * steps)
        for epoch in range(cfg.pretrain_epochs):
            epoch_seed = (cfg.seed * 1_000_003 + epoch) % (2**31)  # the pipeline's pretraining seed
            torch.manual_seed(epoch_seed)
            random.seed(epoch_seed)
            data = bundle.train.dataset if isinstance(bundle.train, Subset) else bundle.train
            if hasattr(data, "reseed"):  # augmentation streams restart too
                data.reseed(epoch_seed)
            loader = make_loader(bundle.train, cfg.batch_size, True, epoch_seed, cfg.workers)
            train_epoch(
                model, loader, optimizer, scheduler, device, progress, f"full-precision training epoch {epoch + 1}"
            )
    study_dir.mkdir(parents=True, exist_ok=True)
    tmp = study_dir / f"fp_model.{os.getpid()}.tmp"
    torch.save(model.state_dict(), tmp)
    try:
        os.link(tmp, path)  # atomic publish-if-absent
    except FileExistsError:
        pass
    except OSError:
        if not path.exists():
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return str(path)


def check_inputs(cfg: SearchConfig, cost_models: list[CostModel], target: float | None = None) -> None:
    """Fail before anything is written if no trial could succeed: the device, the dataset, the
    model, the checkpoint, every cost model pricing every layer (a lookup table needs each
    signature), and an absolute ``target`` the first cost model can approach."""
    check_device(cfg.device)
    bundle = build_dataset(cfg.data, cfg.data_dir, cfg.subset, cfg.seed)
    model = build_model(cfg.model, bundle.num_classes, bundle.in_channels, bundle.image_size)
    if cfg.checkpoint is not None:
        load_weights_into(model, load_state_dict_file(cfg.checkpoint), f"--checkpoint {cfg.checkpoint}")
    example = next(iter(make_loader(bundle.train, 2, False, cfg.seed, 0)))[0]
    order, shapes = searchable_shapes(model, example)
    plain = CompressionConfig([LayerDecision(shapes[n], 8, 8) for n in order], batch=cfg.cost_batch)
    for cm in cost_models:  # every result reports the uniform 8-bit and full-precision costs
        plain.cost(cm)
        plain.full_precision().cost(cm)
    if target is not None and cost_models:
        check_target(target, plain.cost(cost_models[0]), cost_models[0].unit)
