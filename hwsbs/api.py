"""The one-call Python API: ``hwsbs.search(model, train_data, val_data, hw=...)``."""

from __future__ import annotations

import copy
from typing import Any

from torch import nn
from torch.utils.data import DataLoader, Dataset

from hwsbs.config import SearchConfig, parse_target
from hwsbs.defaults import API_DATA, API_MODEL_PREFIX
from hwsbs.pipeline import run_search
from hwsbs.result import SearchResult

__all__ = ["search", "API_MODEL_PREFIX", "API_DATA"]


def search(
    model: nn.Module,
    train_data: DataLoader | Dataset,
    val_data: DataLoader | Dataset,
    hw: str = "a100",
    *,
    factory: str | None = None,
    **options: Any,
) -> SearchResult:
    """Search per-layer bits and pruning for ``model`` on the hardware profile ``hw``.

    Args:
        model: a full-precision model; it is trained for ``pretrain_epochs`` first (pass
            ``pretrain_epochs=0`` when it is already trained). It is not modified.
        train_data: training DataLoader (used as is) or Dataset (batched with ``batch_size``).
        val_data: validation DataLoader or Dataset; every reported accuracy is measured on it.
        hw: built-in profile name or path to a profile YAML.
        factory: the built-in name or ``package.module:factory`` that builds ``model``; recorded
            so ``hwsbs export --run`` can rebuild it. Without it the run records the model's
            class, and export asks for ``--model``.
        **options: any :class:`SearchConfig` field (``lam``, ``target``, ``bits``,
            ``search_epochs``, ``out``, ...); ``target`` also takes the command line's text
            (``"30%"`` of uniform 8-bit, or an absolute cost ``"2.5e-8"``).

    Returns:
        A :class:`SearchResult` with the same content as ``result.json``, the configuration and
        the fine-tuned compressed model.

    Raises:
        HwsbsError: for bad options, profiles, models or data (a subclass says which).
    """
    if isinstance(options.get("target"), str):  # "30%" or "2.5e9", as on the command line
        options["target"], options["target_fraction"] = parse_target(options["target"])
    options.setdefault("progress", False)
    options["model"] = factory if factory is not None else API_MODEL_PREFIX + type(model).__name__
    options.setdefault("data", API_DATA)
    config = SearchConfig.from_dict({"hw": hw, **options})
    return run_search(config, model=copy.deepcopy(model), train_data=train_data, val_data=val_data)
