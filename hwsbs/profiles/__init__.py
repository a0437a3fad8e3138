"""Hardware profiles for hwsbs users: the public names of :mod:`hardware_profiles`.

The schema, loader and tables live in the top-level ``hardware_profiles`` package (the lowest
layer, which ``cost_models`` builds on); this module only re-exports its public API under the
``hwsbs`` namespace, plus the precision fallback the cost models use.
"""

from __future__ import annotations

from cost_models.precision import ExecutedPrecision, executed_precision
from hardware_profiles import (
    BUILTIN_DIR,
    SCHEMA_VERSION,
    HardwareProfile,
    LookupTable,
    LutEntry,
    builtin_profile_names,
    load_lookup_table,
    load_profile,
    profile_json_schema,
    resolve_lookup_table,
    resolve_profile_path,
    save_lookup_table,
    validate_profile_data,
    write_json_schema,
)

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
