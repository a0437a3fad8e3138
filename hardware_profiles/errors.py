"""The error types every layer of hwsbs shares (the lowest package defines them).

``hwsbs.errors`` re-exports these with the rest of the hierarchy; the CLI prints any
:class:`HwsbsError` as one line with exit code 2.
"""

from __future__ import annotations

__all__ = ["HwsbsError", "ConfigError", "ProfileError"]


class HwsbsError(Exception):
    """Base class of every error hwsbs reports to a user (CLI exit code 2)."""


class ConfigError(HwsbsError, ValueError):
    """A bad option, argument or configuration file."""


class ProfileError(ConfigError):
    """A hardware profile that cannot be found, parsed or validated."""
