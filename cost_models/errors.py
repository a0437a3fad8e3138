"""The cost models' error type (re-exported by ``hwsbs.errors``)."""

from __future__ import annotations

from hardware_profiles.errors import HwsbsError

__all__ = ["CostModelError"]


class CostModelError(HwsbsError, LookupError):
    """An unknown cost model, or a cost model that cannot cost a layer (e.g. a missing LUT entry)."""
