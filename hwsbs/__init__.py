"""hwsbs: hardware-aware mixed-precision quantisation and pruning with Single-path Bit Sharing.

Python API::

    import hwsbs
    result = hwsbs.search(model, train_loader, val_loader, hw="a100", lam=0.1)
    print(result.cost["compressed"], result.accuracy["compressed"])
"""

from __future__ import annotations

import importlib
from typing import Any

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

# Lazy re-exports: ``cost_models`` imports ``hwsbs.errors``, so importing the pipeline eagerly
# here would make ``import cost_models`` circular.
_EXPORTS = {
    "search": "hwsbs.api",
    "run_search": "hwsbs.pipeline",
    "Objective": "hwsbs.pipeline",
    "SearchConfig": "hwsbs.config",
    "SearchResult": "hwsbs.result",
    "CompressionConfig": "hwsbs.sbs.config_io",
    "load_config": "hwsbs.sbs.config_io",
    "save_config": "hwsbs.sbs.config_io",
    "HwsbsError": "hwsbs.errors",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'hwsbs' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
