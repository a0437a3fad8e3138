"""Typed exceptions: every user-facing failure is one of these, so the CLI can print one line."""

from __future__ import annotations

from cost_models.errors import CostModelError
from hardware_profiles.errors import ConfigError, HwsbsError, ProfileError

__all__ = [
    "HwsbsError",
    "ConfigError",
    "ProfileError",
    "CostModelError",
    "DataError",
    "ModelError",
    "CheckpointError",
    "SearchDivergedError",
]


class DataError(HwsbsError):
    """A dataset that is unknown, missing or malformed."""


class ModelError(HwsbsError):
    """A model that is unknown, cannot be built, or does not match a config or checkpoint."""


class CheckpointError(HwsbsError):
    """A checkpoint that cannot be read or does not match the run."""


class SearchDivergedError(HwsbsError, FloatingPointError):
    """The loss became NaN or infinite; the search stops instead of training on garbage."""
