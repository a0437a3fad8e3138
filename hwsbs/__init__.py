"""hwsbs: hardware-aware mixed-precision quantisation and pruning with Single-path Bit Sharing.

Python API::

    import hwsbs
    result = hwsbs.search(model, train_loader, val_loader, hw="a100", lam=0.3)
    print(result.cost["compressed"], result.accuracy["compressed"])

Layers: ``hardware_profiles`` (schema, loader, tables) <- ``cost_models`` (what a layer costs)
<- ``hwsbs`` (quantisation, the search, methods, tuning, data, models, CLI).
"""

from __future__ import annotations

from hwsbs.api import search
from hwsbs.config import SearchConfig
from hwsbs.errors import HwsbsError
from hwsbs.pipeline import Objective, run_search
from hwsbs.result import SearchResult
from hwsbs.sbs.config_io import CompressionConfig, load_config, save_config

__all__ = [
    "search",
    "run_search",
    "SearchConfig",
    "SearchResult",
    "CompressionConfig",
    "Objective",
    "HwsbsError",
    "load_config",
    "save_config",
]

__version__ = "0.1.0"
