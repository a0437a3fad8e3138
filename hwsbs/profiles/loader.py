"""Find and load hardware profiles by built-in name or path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

import hardware_profiles
from hwsbs.errors import ProfileError

from .schema import HardwareProfile
from .yaml_io import load_yaml

__all__ = ["BUILTIN_DIR", "builtin_profile_names", "resolve_profile_path", "load_profile", "validate_profile_data"]

#: Directory of the profiles shipped with hwsbs.
BUILTIN_DIR = Path(hardware_profiles.__file__).resolve().parent


def builtin_profile_names() -> list[str]:
    """Names of the built-in profiles (file stems in ``hardware_profiles/``)."""
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def resolve_profile_path(name_or_path: str | Path) -> Path:
    """A profile file for a built-in name (``a100``) or a path (``profiles/a100.yaml``).

    Raises:
        ProfileError: neither an existing file nor a built-in name.
    """
    text = str(name_or_path)
    path = Path(text)
    if path.suffix in {".yaml", ".yml"} or "/" in text or "\\" in text:
        if path.is_file():
            return path
        raise ProfileError(f"{text}: hardware profile file not found")
    builtin = BUILTIN_DIR / f"{text}.yaml"
    if builtin.is_file():
        return builtin
    raise ProfileError(f"unknown hardware profile {text!r}; known: {', '.join(builtin_profile_names())}")


def _format_validation_error(source: str, exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "<root>"
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown field (misspelled?)"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{source}: {loc}: {msg}{more}"


def validate_profile_data(data: Any, source: str) -> HardwareProfile:
    """Validate already-parsed YAML as a profile; errors name ``source`` and the field."""
    if not isinstance(data, dict):
        raise ProfileError(f"{source}: a hardware profile must be a mapping, got {type(data).__name__}")
    try:
        return HardwareProfile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(_format_validation_error(source, exc)) from None


def load_profile(name_or_path: str | Path) -> HardwareProfile:
    """Load and validate a profile by built-in name or file path.

    Raises:
        ProfileError: missing file, bad YAML, duplicate keys or a field that fails validation;
            the message names the file, the field and the problem.
    """
    path = resolve_profile_path(name_or_path)
    try:
        data = load_yaml(path)
    except ProfileError:
        raise
    except Exception as exc:  # ConfigError from YAML parsing -> a ProfileError for the same file
        raise ProfileError(str(exc)) from None
    return validate_profile_data(data, str(path))
