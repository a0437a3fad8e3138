"""Hardware profiles: the YAML schema, the safe loader and name/path resolution."""

from __future__ import annotations

from .loader import builtin_profile_names, load_profile, resolve_profile_path, validate_profile_data
from .schema import SCHEMA_VERSION, HardwareProfile

__all__ = [
    "SCHEMA_VERSION",
    "HardwareProfile",
    "builtin_profile_names",
    "load_profile",
    "resolve_profile_path",
    "validate_profile_data",
]
