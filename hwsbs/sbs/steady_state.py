"""The search's answer is its steady state, not its last step.

Gates near their thresholds flip from batch to batch (activation statistics are per batch, and a
budget-form loss pushes only while the cost is over budget), so the last step's gate state is a
sample, and the running-mean statistics that would re-derive it can disagree with what the cost
term priced. :class:`ChoiceRecorder` counts the configurations the cost term priced during the
last search epoch; :func:`steady_choice` returns the most frequent one (within the budget, when
there is one), and :func:`fit_to_budget` lowers it step by step when no recorded configuration
fits a reachable budget.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from cost_models.base import CostModel
from hwsbs.budget import BUDGET_SLACK

from .config_io import CompressionConfig
from .convert import SearchSpace
from .cost_term import Choice

__all__ = ["ChoiceRecorder", "steady_choice", "fit_to_budget", "choice_to_config", "price_choice", "set_gates_to"]


class ChoiceRecorder:
    """How often each discrete configuration was priced during the current epoch."""

    def __init__(self) -> None:
        self.epoch = -1  # the epoch the counts belong to
        self.counts: dict[Choice, int] = {}  # configuration -> steps it was in

    def start_epoch(self, epoch: int) -> None:
        """Forget earlier epochs (a resumed epoch restarts its counts too)."""
        self.epoch = int(epoch)
        self.counts = {}

    def record(self, choice: Choice | None) -> None:
        if choice is not None:
            self.counts[choice] = self.counts.get(choice, 0) + 1

    def state_dict(self) -> dict[str, Any]:
        """Plain lists and ints: loadable with ``torch.load(weights_only=True)``."""
        rows = [
            [[[b[0], _plain(b[1]), b[2]] for b in bits], [[p, list(g)] for p, g in pruned], n]
            for (bits, pruned), n in self.counts.items()
        ]
        return {"epoch": self.epoch, "counts": rows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.counts = {}
        for bits, pruned, n in state["counts"]:
            key = (
                tuple((str(a), _widths(w), int(x)) for a, w, x in bits),
                tuple((str(p), tuple(int(i) for i in g)) for p, g in pruned),
            )
            self.counts[key] = int(n)


def _plain(w: int | tuple[int, ...]) -> int | list[int]:
    return list(w) if isinstance(w, tuple) else w


def _widths(w: Any) -> int | tuple[int, ...]:
    """A recorded weight width: an int, or a channel-wise layer's per-group widths."""
    return tuple(int(b) for b in w) if isinstance(w, list | tuple) else int(w)


def choice_to_config(
    space: SearchSpace, choice: Choice, make: Callable[[list], CompressionConfig]
) -> CompressionConfig:
    """The :class:`CompressionConfig` of a recorded choice (``make`` adds the run's metadata)."""
    bits, pruned = choice
    return make(space.decisions({n: (w, a) for n, w, a in bits}, {p: list(g) for p, g in pruned}))


def price_choice(space: SearchSpace, choice: Choice, cost_model: CostModel, batch: int) -> float:
    return choice_to_config(space, choice, lambda d: CompressionConfig(d, batch=batch)).cost(cost_model)


def steady_choice(counts: dict[Choice, int], price: Callable[[Choice], float], target: float | None) -> Choice | None:
    """The most frequent configuration (ties: the cheaper), within ``target`` when one is given.

    Returns:
        None when nothing was recorded, or when no recorded configuration fits the target.
    """
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], price(kv[0])))
    for choice, _ in ranked:
        if target is None or price(choice) <= target * (1 + BUDGET_SLACK):
            return choice
    return None


def _downgrades(space: SearchSpace, choice: Choice) -> list[Choice]:
    """Every configuration one step cheaper: one bit width down, or one more group pruned."""
    bits, pruned = choice
    out: list[Choice] = []
    for i, (name, w, a) in enumerate(bits):
        layer = space.layer(name)
        if layer.pinned:
            continue
        ladder = sorted(layer.bits)
        if isinstance(w, tuple):  # channel-wise: one group's width down
            for g, value in enumerate(w):
                if value in ladder and ladder.index(value) > 0:
                    lowered = w[:g] + (ladder[ladder.index(value) - 1],) + w[g + 1 :]
                    out.append((bits[:i] + ((name, lowered, a),) + bits[i + 1 :], pruned))
            # and every group at the layer's widest width down together: where the device runs a
            # layer at its widest group (a GPU, a CPU) or tiles rows wider than one group (BISMO's
            # d_m), no single group's step saves, and without this the descent stops over budget
            widest = max(w)
            if w.count(widest) > 1 and widest in ladder and ladder.index(widest) > 0:
                down = ladder[ladder.index(widest) - 1]
                lowered = tuple(down if value == widest else value for value in w)
                out.append((bits[:i] + ((name, lowered, a),) + bits[i + 1 :], pruned))
        pairs: list[tuple[str, int]] = [("a", a)] if isinstance(w, tuple) else [("w", w), ("a", a)]
        for which, value in pairs:  # (a channel-wise layer's weights: group by group, above)
            if value in ladder and ladder.index(value) > 0:
                lower = ladder[ladder.index(value) - 1]
                new = (name, lower, a) if which == "w" else (name, w, lower)
                out.append((bits[:i] + (new,) + bits[i + 1 :], pruned))
    for i, (producer, groups) in enumerate(pruned):
        if len(groups) >= space.max_pruned_groups(producer):
            continue
        stats = space.layer(producer).pruning_statistics().tolist()
        free = sorted((s, g) for g, s in enumerate(stats) if g not in groups)
        if free:
            new_groups = tuple(sorted((*groups, free[0][1])))
            out.append((bits, pruned[:i] + ((producer, new_groups),) + pruned[i + 1 :]))
    return out


def _cheaper_step(space: SearchSpace, choice: Choice, price: Callable[[Choice], float]) -> Choice | None:
    """The cheapest one-step downgrade if it saves; else, across a flat corner, the cheapest
    two-step one if that saves (a GPU roofline prices 8/8 and 4/8 alike and 4/4 lower); else None."""
    cost = price(choice)
    options = _downgrades(space, choice)
    if not options:
        return None
    best = min(options, key=price)
    if price(best) < cost:
        return best
    two_steps = [second for first in options if price(first) == cost for second in _downgrades(space, first)]
    if two_steps:
        best = min(two_steps, key=price)
        if price(best) < cost:
            return best
    return None


def fit_to_budget(
    space: SearchSpace, choice: Choice, price: Callable[[Choice], float], target: float
) -> tuple[Choice, int]:
    """Lower ``choice`` greedily (the largest saving first) until it costs at most ``target``.

    Only steps that save are taken (across a flat corner, two equal-cost steps that then save):
    where fewer bits cost more (a measured CPU table at batch 1 runs sub-8-bit layers slower) or
    cost the same (h100 has no INT4), the descent stops instead of giving up bits for nothing.

    Returns:
        ``(choice, steps)``; the choice still costs more than ``target`` when no saving step is
        left (the budget is below what the search space can reach).
    """
    steps = 0
    while price(choice) > target * (1 + BUDGET_SLACK):
        lower = _cheaper_step(space, choice, price)
        if lower is None:
            break
        choice = lower
        steps += 1
    return choice, steps


@torch.no_grad()
def set_gates_to(space: SearchSpace, bits: dict[str, tuple[int, int]], pruned_groups: dict[str, int]) -> None:
    """Place every threshold so the gates select ``bits`` and prune ``pruned_groups[producer]`` groups.

    Open gates get their threshold one temperature below the statistic, closed ones one above it
    (well inside the reversibility clamp), so the search starts at this configuration and can
    still move away from it. Pruning keeps the gates' own order (the weakest groups go).
    """
    for name, layer in space.layers():
        if layer.pinned or layer.mode != "search":
            continue
        w_bits, a_bits = bits.get(name, (layer.bits[-1], layer.bits[-1]))
        w_stats = layer.weight_statistics()
        rows: list[tuple[Tensor, Tensor, int]] = [
            (layer.w_theta, w_stats, w_bits),
            (layer.a_theta, layer.a_residual_ema / layer.a_scale, a_bits),
        ]
        if layer.channel_bits:  # the same width for every group (a per-layer choice, e.g. --init ilp)
            rows = [(layer.w_theta[g], w_stats[g], w_bits) for g in range(w_stats.shape[0])] + rows[1:]
        for theta, stats, chosen in rows:
            for j, stat in enumerate(stats.tolist()):
                is_open = chosen > layer.bits[j]
                theta[j] = max(0.0, stat - layer.tau) if is_open else stat + layer.tau
        if layer.prunable:
            k = pruned_groups.get(name, 0)
            ranked = sorted(layer.pruning_statistics().tolist())
            layer.p_theta.fill_(
                ranked[0] - layer.tau if k == 0 else (ranked[k - 1] + ranked[min(k, len(ranked) - 1)]) / 2
            )
