"""What result.json reports of APB layers: a :class:`LayerDecision` with ``fp_weights >= 0``.

The full-precision count is a field of every :class:`~hwsbs.sbs.config_io.LayerDecision`
(``-1``: not an APB layer), so ``config.yaml`` stores it, ``hwsbs cost`` and a resumed run price
it, and ``LayerDecision.state`` hands it to the cost models.
"""

from __future__ import annotations

from typing import Any

from hwsbs.sbs.config_io import CompressionConfig, LayerDecision

__all__ = ["apb_summary", "binary_fraction", "is_apb_decision"]


def is_apb_decision(decision: LayerDecision) -> bool:
    """True for an APB layer's decision (binary weights plus ``fp_weights`` full-precision ones)."""
    return decision.fp_weights >= 0


def _weights(decision: LayerDecision) -> int:
    return decision.shape.weight_count(decision.state.kept_in, decision.kept_out)


def apb_summary(decision: LayerDecision) -> dict[str, Any]:
    """result.json's extra per-layer fields of an APB layer (none for another layer)."""
    if not is_apb_decision(decision):
        return {}
    return {"fp_weights": decision.fp_weights, "weights": _weights(decision)}


def binary_fraction(config: CompressionConfig) -> float | None:
    """Share of the APB layers' weights that are binary (None without APB layers)."""
    apb = [d for d in config.layers if is_apb_decision(d)]
    if not apb:
        return None
    return 1.0 - sum(d.fp_weights for d in apb) / max(sum(_weights(d) for d in apb), 1)
