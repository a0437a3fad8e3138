"""Typed exceptions: every user-facing failure is one of these, so the CLI can print one line."""

from __future__ import annotations

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


class HwsbsError(Exception):
    """Base class of every error hwsbs reports to a user (CLI exit code 2)."""


class ConfigError(HwsbsError, ValueError):
    """A bad option, argument or configuration file."""


class ProfileError(ConfigError):
    """A hardware profile that cannot be found, parsed or validated."""


class CostModelError(HwsbsError, LookupError):
    """An unknown cost model, or a cost model that cannot cost a layer (e.g. a missing LUT entry)."""


class DataError(HwsbsError):
    """A dataset that is unknown, missing or malformed."""


class ModelError(HwsbsError):
    """A model that is unknown, cannot be built, or does not match a config or checkpoint."""


class CheckpointError(HwsbsError):
    """A checkpoint that cannot be read or does not match the run."""


class SearchDivergedError(HwsbsError, FloatingPointError):
    """The loss became NaN or infinite; the search stops instead of training on garbage."""
