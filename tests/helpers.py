"""Small shared test helpers: digits loaders, a quickly trained default CNN (cached per session),
tiny search schedules for the Python API and the command line, and a valid hardware profile."""

from __future__ import annotations

import copy
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

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


def tiny_schedule(**options: Any) -> dict[str, Any]:
    """Options of a tiny search (``SearchConfig`` fields, or ``hwsbs.search`` keywords): one epoch
    per phase, no progress bars; ``options`` override these or add others."""
    return {"pretrain_epochs": 1, "search_epochs": 1, "finetune_epochs": 1, "progress": False, **options}


def tiny_argv(
    command: str,
    *extra: str,
    hw: str | Path = "a100",
    subset: int = 256,
    epochs: tuple[int, int, int] | None = (1, 1, 1),
    progress: bool = False,
) -> list[str]:
    """The argv of ``hwsbs <command>`` (search, tune, pareto) on ``hw`` with a tiny digits schedule.

    Args:
        command: the subcommand.
        *extra: more arguments, placed right after ``--hw``.
        hw: the ``--hw`` profile.
        subset: ``--subset``.
        epochs: ``--pretrain-epochs``, ``--search-epochs``, ``--finetune-epochs``; None leaves the
            three out (the command's defaults).
        progress: keep the progress bars (else ``--no-progress``).
    """
    argv = [command, "--hw", str(hw), *extra, "--subset", str(subset)]
    if epochs is not None:
        pretrain, search, finetune = epochs
        argv += ["--pretrain-epochs", str(pretrain), "--search-epochs", str(search), "--finetune-epochs", str(finetune)]
    return argv if progress else [*argv, "--no-progress"]


def hwsbs_command(*argv: str) -> list[str]:
    """The command that runs ``hwsbs *argv`` in a subprocess, on this interpreter."""
    return [sys.executable, "-m", "hwsbs.cli.main", *argv]


def minimal_profile(**overrides: Any) -> dict[str, Any]:
    """A valid roofline hardware profile, as parsed YAML; ``overrides`` replace top-level fields."""
    data: dict[str, Any] = {
        "schema_version": 1,
        "name": "toy",
        "kind": "gpu",
        "cost_model": {"name": "roofline"},
        "precisions": [{"w_bits": 8, "a_bits": 8, "ops_per_s": 1.0e12}],
        "memory": [{"name": "dram", "bandwidth_bytes_per_s": 1.0e10}],
        "sources": ["test fixture"],
    }
    data.update(overrides)
    return data


def wait_until_past_search_checkpoint(run_dir: Path, timeout: float = 300.0) -> None:
    """Poll ``run_dir`` until its checkpoint is at or past a search epoch (to kill a run there)."""
    import time

    import torch

    ckpt = run_dir / "checkpoint.pt"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if ckpt.exists() and (run_dir / "options.json").exists():
            try:
                phase = torch.load(ckpt, weights_only=True)["phase"]
            except Exception:  # being replaced right now: read it again
                phase = None
            if phase in ("search", "finetune", "done"):
                return
        time.sleep(0.01)
