"""Hardware profiles: the YAML schema, the safe loader, name/path resolution, lookup tables.

The built-in profiles (``*.yaml``) and their tables (``tables/``) live beside these modules. This
package is the lowest layer: it imports nothing from ``cost_models`` or ``hwsbs``.
"""

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
from .schema import FLOAT_BITS, SCHEMA_VERSION, HardwareProfile, profile_json_schema, write_json_schema

__all__ = [
    "FLOAT_BITS",
    "SCHEMA_VERSION",
    "BUILTIN_DIR",
    "HardwareProfile",
    "LookupTable",
    "LutEntry",
    "builtin_profile_names",
    "load_lookup_table",
    "load_profile",
    "profile_json_schema",
    "resolve_lookup_table",
    "resolve_profile_path",
    "save_lookup_table",
    "validate_profile_data",
    "write_json_schema",
]
