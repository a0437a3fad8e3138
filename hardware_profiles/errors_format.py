"""Turn a pydantic ValidationError into the one line users see: ``FILE: field.path: problem``."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

__all__ = ["format_loc", "format_validation_error"]

# Messages pydantic words for programmers, reworded for someone editing a YAML file.
_REWORDED = {"extra_forbidden": "unknown field (misspelled?)", "missing": "required field is missing"}


def format_loc(loc: tuple[Any, ...]) -> str:
    """``("precisions", 0, "ops_per_s")`` -> ``precisions[0].ops_per_s``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<root>"


def _shown_input(value: Any) -> str:
    """The offending value, when it is short enough to help (scalars only)."""
    if isinstance(value, bool) or value is None or isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str) and len(value) <= 40:
        return repr(value)
    return ""


def format_validation_error(source: str, exc: ValidationError) -> str:
    """One line naming ``source``, the first bad field and its problem (and how many more)."""
    err = exc.errors()[0]
    loc = format_loc(tuple(err["loc"]))
    msg = _REWORDED.get(err["type"], err["msg"])
    ctx = err.get("ctx") or {}
    if err["type"] == "union_tag_invalid":  # e.g. cost_model.name: a misspelled model name
        key = str(ctx.get("discriminator", "")).strip("'")
        loc = f"{loc}.{key}" if key else loc
        msg = f"unknown value {ctx.get('tag')!r}; expected one of {ctx.get('expected_tags')}"
    elif err["type"] == "value_error":
        msg = msg.removeprefix("Value error, ")
    elif err["type"] not in _REWORDED and err["type"] != "extra_forbidden":
        shown = _shown_input(err.get("input"))
        if shown:
            msg = f"{msg}, got {shown}"
    if msg:
        msg = msg[0].lower() + msg[1:]
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{source}: {loc}: {msg}{more}"
