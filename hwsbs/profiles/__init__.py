"""Hardware profiles for hwsbs users: the public names of :mod:`hardware_profiles`.

The schema, loader and tables live in the top-level ``hardware_profiles`` package (the lowest
layer, which ``cost_models`` builds on); this module only re-exports its public API under the
``hwsbs`` namespace, plus the precision fallback the cost models use.
"""

from __future__ import annotations

import hardware_profiles
from cost_models.precision import ExecutedPrecision, executed_precision
from hardware_profiles import *  # noqa: F403  (the whole public API, as listed in its __all__)

__all__ = ["ExecutedPrecision", "executed_precision"]
__all__ += hardware_profiles.__all__  # its own list: the two cannot drift apart
