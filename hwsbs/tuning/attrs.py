"""A trial's results as flat scalar user attributes: what optuna-dashboard can show and sort.

One attribute per number (``accuracy``, ``cost/a100:roofline``, ``vs_uniform_8bit/a100:roofline``,
``option/lam``, ``weight/a100:roofline``, ``constraint``), and the reader that rebuilds the nested
records the report uses. Studies written before this layout (one JSON dict per attribute) are
read too, so continuing an old study keeps its trials.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["trial_result_attrs", "trial_sample_attrs", "read_trial_attrs", "COST_FIELDS"]

#: The fields of each objective's costs, and the attribute prefix of each (compressed: ``cost/``).
COST_FIELDS = {"compressed": "cost", "uniform_8bit": "uniform_8bit", "full_precision": "full_precision"}
_TEXT_FIELDS = ("unit", "metric")


def _scalar(value: Any) -> tuple[bool, Any]:
    """``(is_plain, value)``: plain scalars as they are, anything else as JSON text."""
    if value is None or isinstance(value, bool | int | float | str):
        return True, value
    return False, json.dumps(value, default=lambda v: list(v) if isinstance(v, tuple) else str(v))


def trial_sample_attrs(options: dict[str, Any], weights: dict[str, float]) -> dict[str, Any]:
    """``option/NAME`` (``option_json/NAME`` for lists) and ``weight/LABEL``."""
    out: dict[str, Any] = {}
    for name, value in options.items():
        plain, shown = _scalar(value)
        out[f"option/{name}" if plain else f"option_json/{name}"] = shown
    out.update({f"weight/{label}": float(w) for label, w in weights.items()})
    return out


def trial_result_attrs(accuracy: dict[str, float], costs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``accuracy``, ``accuracy_full_precision`` and per objective label its costs, ratio, unit and metric."""
    out: dict[str, Any] = {
        "accuracy": float(accuracy["compressed"]),
        "accuracy_full_precision": float(accuracy.get("full_precision", math.nan)),
    }
    for label, c in costs.items():
        for field, prefix in COST_FIELDS.items():
            out[f"{prefix}/{label}"] = float(c[field])
        u8 = float(c["uniform_8bit"])
        out[f"vs_uniform_8bit/{label}"] = float(c["compressed"]) / u8 if u8 > 0 else math.inf
        for field in _TEXT_FIELDS:
            out[f"{field}/{label}"] = str(c[field])
    return out


def read_trial_attrs(ua: dict[str, Any]) -> dict[str, Any]:
    """``{"options", "weights", "accuracy", "costs", "constraint"}`` from a trial's user attributes
    (flat, or the nested dicts of studies from before the flat layout); missing parts are None/empty."""
    options = dict(ua.get("options", {}))
    weights = dict(ua.get("weights", {}))
    accuracy = ua.get("accuracy") if isinstance(ua.get("accuracy"), dict) else None
    costs = ua.get("costs") if isinstance(ua.get("costs"), dict) else None
    constraint = ua.get("constraint")
    if isinstance(constraint, list):  # the nested layout stored [violation]
        constraint = constraint[0] if constraint else None
    for key, value in ua.items():
        kind, _, name = key.partition("/")
        if kind == "option":
            options[name] = value
        elif kind == "option_json":
            options[name] = json.loads(value)
        elif kind == "weight":
            weights[name] = float(value)
    if accuracy is None and "accuracy" in ua:
        accuracy = {"compressed": float(ua["accuracy"]), "full_precision": float(ua["accuracy_full_precision"])}
    if costs is None:
        labels = [k.partition("/")[2] for k in ua if k.startswith("cost/")]
        if labels:
            costs = {
                label: {
                    **{field: float(ua[f"{prefix}/{label}"]) for field, prefix in COST_FIELDS.items()},
                    **{field: ua[f"{field}/{label}"] for field in _TEXT_FIELDS},
                }
                for label in labels
            }
    return {
        "options": options,
        "weights": weights,
        "accuracy": accuracy,
        "costs": costs,
        "constraint": None if constraint is None else float(constraint),
    }
