"""Hardware profiles: the YAML schema, the safe loader, name/path resolution and precision fallback."""

from __future__ import annotations

from .loader import (
    BUILTIN_DIR,
    builtin_profile_names,
    load_profile,
    resolve_lookup_table,
    resolve_profile_path,
    validate_profile_data,
)
from .lut_table import LookupTable, LutEntry, load_lookup_table, save_lookup_table
from .precision import ExecutedPrecision, executed_precision
from .schema import SCHEMA_VERSION, HardwareProfile, profile_json_schema, write_json_schema

__all__ = [
    "SCHEMA_VERSION",
    "BUILTIN_DIR",
    "HardwareProfile",
    "LookupTable",
    "LutEntry",
    "ExecutedPrecision",
    "builtin_profile_names",
    "executed_precision",
    "load_lookup_table",
    "load_profile",
    "profile_json_schema",
    "resolve_lookup_table",
    "resolve_profile_path",
    "save_lookup_table",
    "validate_profile_data",
    "write_json_schema",
]
