"""One-line messages for a ``config.yaml`` that fails validation (used by :mod:`hwsbs.sbs.config_io`)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from hardware_profiles.errors_format import format_loc

__all__ = ["format_error"]


def _shown(value: Any) -> str:
    """The offending value in a message, if it is short."""
    text = repr(value)
    return f", got {text}" if isinstance(value, str | int | float | bool | type(None)) and len(text) <= 40 else ""


def _where(src: str, data: dict, loc: tuple[Any, ...]) -> str:
    """``FILE: layers[3] (layer1.conv2).shape.stride[0]`` for a pydantic location."""
    if len(loc) >= 2 and loc[0] == "layers" and isinstance(loc[1], int):
        raw = data.get("layers")
        entry = raw[loc[1]] if isinstance(raw, list) and loc[1] < len(raw) else None
        name = entry.get("name") if isinstance(entry, dict) else None
        head = f"layers[{loc[1]}]" + (f" ({name})" if isinstance(name, str) and name else "")
        rest = format_loc(loc[2:]) if loc[2:] else ""
        return f"{src}: {head}" + (("" if rest.startswith("[") else ".") + rest if rest else "")
    return f"{src}: {format_loc(loc)}"


_TYPE_WORDS = {
    "int_type": "expected an integer",
    "string_type": "expected a string",
    "list_type": "expected a list",
    "tuple_type": "expected a list of two integers",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
    "dict_type": "expected a mapping",
}
_LENGTH_WORDS = {"layers": "expected at least one layer", "bits": "expected at least one bit width"}


def _problem(loc: tuple[Any, ...], err: Any) -> str:
    """What is wrong with one field, worded for someone editing the YAML file."""
    kind, value = err["type"], err.get("input")
    if kind == "value_error":
        return str(err["msg"]).removeprefix("Value error, ")
    if kind in _TYPE_WORDS:
        return _TYPE_WORDS[kind] + _shown(value)
    if kind == "literal_error":
        return "expected " + str(err["ctx"]["expected"]) + _shown(value)
    if kind in ("too_short", "too_long"):
        return _LENGTH_WORDS.get(str(loc[-1]), "expected a list of two integers")
    return str(err["msg"]) + _shown(value)


def format_error(src: str, data: dict, exc: ValidationError) -> str:
    """One line: the file, the first bad field (with its layer's name) and the problem."""
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    if err["type"] == "missing":
        return f"{_where(src, data, loc[:-1]) if loc[:-1] else src}: missing field {loc[-1]!r}{more}"
    if err["type"] == "extra_forbidden":
        return f"{_where(src, data, loc)}: unknown field (misspelled?){more}"
    msg = _problem(loc, err)
    return f"{_where(src, data, loc)}: {msg[0].lower() + msg[1:]}{more}"
