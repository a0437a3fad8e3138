"""Find and load hardware profiles by built-in name or path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from hardware_profiles.checked_io import checked_file
from hardware_profiles.errors import ConfigError, ProfileError

from .errors_format import format_validation_error
from .lut_table import LookupTable, load_lookup_table
from .schema import HardwareProfile
from .yaml_io import load_yaml

__all__ = [
    "BUILTIN_DIR",
    "builtin_profile_names",
    "resolve_profile_path",
    "load_profile",
    "validate_profile_data",
    "resolve_lookup_table",
]

#: Directory of the profiles shipped with hwsbs.
BUILTIN_DIR = Path(__file__).resolve().parent


def builtin_profile_names() -> list[str]:
    """Names of the built-in profiles (file stems in ``hardware_profiles/``)."""
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def resolve_profile_path(name_or_path: str | Path) -> Path:
    """A profile file for a built-in name (``a100``) or a path (``profiles/a100.yaml``).

    Raises:
        ProfileError: neither an existing file nor a built-in name, or a path that is not a
            regular file of at most ``TEXT_LIMIT`` bytes (a FIFO, a device, a directory).
    """
    text = str(name_or_path)
    path = Path(text)
    if path.suffix in {".yaml", ".yml"} or "/" in text or "\\" in text:
        return checked_file(path, "hardware profile file", error=ProfileError, label=text)
    builtin = BUILTIN_DIR / f"{text}.yaml"
    if builtin.is_file():
        return builtin
    raise ProfileError(f"unknown hardware profile {text!r}; known: {', '.join(builtin_profile_names())}")


def _format_validation_error(source: str, exc: ValidationError) -> str:
    """Kept for callers of the earlier private name; see :func:`format_validation_error`."""
    return format_validation_error(source, exc)


def validate_profile_data(data: Any, source: str, path: str | Path | None = None) -> HardwareProfile:
    """Validate already-parsed YAML as a profile; errors name ``source`` and the field.

    Args:
        data: the parsed mapping.
        source: how errors name the input (usually the file path).
        path: the profile's file, against which a relative ``lookup_table`` path resolves.
    """
    if not isinstance(data, dict):
        raise ProfileError(f"{source}: a hardware profile must be a mapping, got {type(data).__name__}")
    try:
        profile = HardwareProfile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(format_validation_error(source, exc)) from None
    return profile.with_source(path)


def load_profile(name_or_path: str | Path) -> HardwareProfile:
    """Load and validate a profile by built-in name or file path.

    Raises:
        ProfileError: missing file, bad YAML, duplicate keys or a field that fails validation;
            the message names the file, the field and the problem.
    """
    path = resolve_profile_path(name_or_path)
    try:
        data = load_yaml(path, what="hardware profile file", error=ProfileError)
    except ProfileError:
        raise
    except ConfigError as exc:  # YAML parsing -> a ProfileError for the same file
        raise ProfileError(str(exc)) from None
    return validate_profile_data(data, str(path), path)


def resolve_lookup_table(profile: HardwareProfile) -> tuple[LookupTable, str]:
    """The profile's measured latency table and a name for it in messages.

    A relative ``lookup_table`` path resolves against the profile's own file (against the working
    directory for a profile built in code).

    Raises:
        ProfileError: the profile has no table, or the table file is missing or invalid.
    """
    ref = profile.lookup_table
    if ref is None:
        raise ProfileError(
            f"profile {profile.name!r}: lookup_table: not set (the lut cost model needs a measured table)"
        )
    if isinstance(ref, LookupTable):
        return ref, f"profile {profile.name!r} (inline lookup_table)"
    path = Path(ref)
    if not path.is_absolute() and profile.source_path is not None:
        path = profile.source_path.parent / path
    return load_lookup_table(path), str(path)
