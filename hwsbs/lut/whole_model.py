"""Whole-model terms: what a sum of per-layer table latencies misses, fitted per model and batch.

A table times each layer alone; a whole model adds per-inference overhead (session call, input
quantisation, the head) and glue between layers (requantisation, residual adds, layout), and
the runtime fuses layers differently in context. ``measured ~ overhead_s + scale * sum(table)``
is fitted by least squares on a few random configurations measured end to end at ``lut build``
time and stored in the table (:class:`~hardware_profiles.lut_table.WholeModelTerm`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hardware_profiles.lut_table import LookupTable, WholeModelTerm

__all__ = ["fit_term", "apply_term", "predict_whole"]


def fit_term(model: str, batch: int, layer_sums: Sequence[float], measured: Sequence[float]) -> WholeModelTerm:
    """Least-squares ``measured ~ overhead + scale * layer_sum`` (scale kept > 0; with fewer than
    two distinct sums, scale 1 and the mean difference as overhead)."""
    x, y = np.asarray(layer_sums, float), np.asarray(measured, float)
    scale, overhead = 1.0, float(np.mean(y - x)) if len(x) else 0.0
    if len(x) >= 2 and float(np.ptp(x)) > 0:
        slope, intercept = np.polyfit(x, y, 1)
        if slope > 0:
            scale, overhead = float(slope), float(intercept)
    return WholeModelTerm(model=model, batch=batch, overhead_s=overhead, scale=scale, configs=len(x))


def apply_term(term: WholeModelTerm | None, layer_sum: float) -> float:
    """``overhead_s + scale * layer_sum`` (``layer_sum`` itself without a term; never below a tenth of it)."""
    if term is None:
        return layer_sum
    return max(term.overhead_s + term.scale * layer_sum, 0.1 * layer_sum)


def predict_whole(table: LookupTable, model: str, batch: int, layer_sum: float) -> float:
    """A whole-model prediction from the table's term for ``model`` at ``batch`` (if any)."""
    return apply_term(table.whole_model_term(model, batch), layer_sum)
