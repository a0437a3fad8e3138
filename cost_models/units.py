"""Human-readable costs: ``0.000123 s`` -> ``123 us``, ``4.2e9 BOPs`` -> ``4.2 GBOPs``."""

from __future__ import annotations

import math

__all__ = ["format_cost"]

# Units measured in fractions (time, energy) get sub-unit prefixes; counts get k/M/G/T.
_SMALL_UNITS = {"s", "J"}
_SMALL_PREFIXES = ((1.0, ""), (1e-3, "m"), (1e-6, "u"), (1e-9, "n"), (1e-12, "p"))
_LARGE_PREFIXES = ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""))


def format_cost(value: float, unit: str, digits: int = 4) -> str:
    """``value`` in ``unit`` with an SI prefix and ``digits`` significant digits."""
    if not math.isfinite(value):
        return f"{value} {unit}".strip()
    if value == 0:
        return f"0 {unit}".strip()
    magnitude = abs(value)
    prefixes = _SMALL_PREFIXES if unit in _SMALL_UNITS and magnitude < 1 else _LARGE_PREFIXES
    factor, prefix = prefixes[-1]
    for f, p in prefixes:
        if magnitude >= f:
            factor, prefix = f, p
            break
    return f"{value / factor:.{digits}g} {prefix}{unit}".strip()
