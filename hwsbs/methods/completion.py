"""Completing an SBS search that ends above its budget: the integer program under the search's choice.

A short search can end with no configuration of its last epoch inside ``--target`` (the gates
were still descending; on the CPU ResNet-20 schedule the last epoch averages about twice the
budget). Something has to lower that configuration the rest of the way. A greedy descent by
largest cost saving does not see the loss and lowers weights to 2 bits first; this completion
keeps what the search decided as a *ceiling* and lets the loss decide the rest:

* every layer may keep or lower its steady-state widths, never raise them (``w <= w_s``,
  ``a <= a_s``), and every producer keeps at least the groups the search pruned;
* among those options, :func:`hwsbs.methods.ilp.assign` picks the assignment of least
  Fisher-Taylor sensitivity whose cost fits the budget, the sensitivities measured on the
  **searched** weights (the model the configuration is fine-tuned from).

Channel-wise searches (per-group weight widths) are not covered by the integer program; they,
and a ceiling under which nothing fits, return ``None`` and the caller falls back to the greedy
descent.
"""

from __future__ import annotations

from hwsbs.errors import ConfigError
from hwsbs.sbs.config_io import CompressionConfig
from hwsbs.sbs.cost_term import Choice

from .base import MethodContext
from .ilp import LayerChoices, Option, PrunePlan, assign, sensitivities
from .random_search import candidate_config

__all__ = ["complete_under_ceiling"]


def complete_under_ceiling(
    ctx: MethodContext, start: Choice, budget: float, keep_pruning: bool = True
) -> tuple[CompressionConfig, float] | None:
    """The least-sensitive configuration at or below ``start`` that fits ``budget``.

    Args:
        ctx: the run (its search space holds the searched weights).
        start: the search's steady-state configuration, over the budget.
        budget: the absolute cost budget.
        keep_pruning: every producer keeps at least the search's pruned groups (else the
            program chooses pruning freely and only the widths are ceilings).

    Returns:
        ``(config, cost)``, or ``None`` when ``start`` has channel-wise widths or nothing at or
        below it fits the budget.
    """
    bits, pruned = start
    ceiling: dict[str, tuple[int, int]] = {}
    for name, w, a in bits:
        if isinstance(w, tuple):  # channel-wise widths: not in the program's options
            return None
        ceiling[name] = (int(w), int(a))
    at_least = {producer: len(groups) for producer, groups in pruned} if keep_pruning else {}

    def admit(layer: LayerChoices, option: Option, plan: PrunePlan) -> bool:
        w_max, a_max = ceiling.get(layer.name, option.bits)
        if option.bits[0] > w_max or option.bits[1] > a_max:
            return False
        for producer, level in ((layer.own, option.own_level), (layer.source, option.in_level)):
            if producer is not None and level is not None and plan.ks[producer][level] < at_least.get(producer, 0):
                return False
        return True

    try:
        cand, cost, _ = assign(ctx, sensitivities(ctx), budget, admit)
    except ConfigError:
        return None
    return candidate_config(ctx, cand), cost
