"""The random-search baseline, and the budget and candidate-evaluation helpers it shares with Optuna.

``--method random`` draws per-layer (w, a) bits from the candidate set and, for every prunable
producer, a random number of random channel groups under ``--max-prune-fraction``; a draw over the
budget is repaired by random downgrades (one bit step or one more pruned group at a time) until it
fits. Each candidate is scored by the validation accuracy of the quantised, pruned model, without
training, after its batch-norm statistics are re-estimated on a few training batches; the best
one is returned and the pipeline fine-tunes it like every other method's choice.

With ``--granularity channel`` a layer whose weight gates are per output-channel group (see
:func:`channel_wise_layers`) draws one weight width per group of ``--group-size`` channels, each
independently, and its repair lowers one kept group at a time; activations stay one width per
layer and pruning is unchanged.

Budget: the primary objective's ``--target`` (absolute, or a % of uniform 8-bit); without one,
the cost of uniform ``extra["budget_bits"]`` (default 4) bits with the pinned layers at their
pinned bits, i.e. the cost of ``--method uniform --uniform-bits 4``.

Options (``SearchConfig.extra``): ``candidates`` (default: compute-matched, see
:func:`default_trials`), ``bn_batches`` (8), ``eval_batches`` (all of the validation set),
``budget_bits`` (4).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from hwsbs.budget import BUDGET_SLACK, floor_config
from hwsbs.errors import ConfigError
from hwsbs.quant.layers import SBSLayerMixin
from hwsbs.sbs.config_io import CompressionConfig
from hwsbs.sbs.convert import SearchSpace
from hwsbs.sbs.derive import apply_config
from hwsbs.task import count_correct

from .base import MethodContext, register_method

__all__ = [
    "Candidate",
    "channel_wise_layers",
    "CandidateEvaluator",
    "CandidateSearch",
    "resolve_budget",
    "default_trials",
    "start_candidate_search",
    "candidate_search_method",
    "random_search",
]


@dataclass
class Candidate:
    """One point of the search space: bits per searchable layer, pruned groups per producer.

    A layer's weight bits are one width, or (``--granularity channel``) a tuple with one width per
    output-channel group, as :meth:`~hwsbs.sbs.convert.SearchSpace.decisions` reads them; a
    pruned group's entry is kept but priced at nothing.
    """

    # non-pinned layer -> (w_bits, a_bits); w_bits an int or a tuple of per-group ints. Typed Any
    # so layer-wise producers (the ILP's dict[str, tuple[int, int]]) still type-check: dict values
    # are invariant.
    bits: dict[str, tuple[Any, int]]
    pruned: dict[str, list[int]] = field(default_factory=dict)  # producer -> pruned group indices

    def to_state(self) -> dict:
        """A plain, checkpointable form (lists and ints: loadable with ``weights_only=True``)."""
        return {
            "bits": {k: [list(w) if isinstance(w, tuple) else w, a] for k, (w, a) in self.bits.items()},
            "pruned": {k: list(v) for k, v in self.pruned.items()},
        }

    @classmethod
    def from_state(cls, state: dict) -> Candidate:
        """The candidate :meth:`to_state` wrote (per-group weight widths come back as tuples)."""
        return cls(
            {k: (_widths(v[0]), int(v[1])) for k, v in state["bits"].items()},
            {k: [int(g) for g in v] for k, v in state["pruned"].items()},
        )


def _widths(w: Any) -> int | tuple[int, ...]:
    """Saved weight bits: an int, or a list of per-group widths (back to a tuple)."""
    return tuple(int(b) for b in w) if isinstance(w, list | tuple) else int(w)


def channel_wise_layers(ctx: MethodContext) -> dict[str, int]:
    """Searched layers with one weight width per output-channel group, and their group counts.

    The pipeline turns channel-wise weight gates on (``--granularity channel``) exactly where a
    layer can have them (not pinned, depthwise, grouped or an attention product); reading that
    flag makes the baselines sample the space SBS searches. The bit groups are the pruning groups
    (same ``group_size``), so pruned group ``g`` is weight entry ``g``. Empty at layer granularity.
    """
    return {n: layer.num_groups for n, layer in ctx.space.layers() if layer.channel_bits and not layer.pinned}


def _lowerable_groups(w: tuple[int, ...], pruned: list[int], lowest: int) -> list[int]:
    """The kept groups of a channel-wise layer above the lowest width (a pruned group saves nothing)."""
    gone = set(pruned)
    return [g for g, b in enumerate(w) if b > lowest and g not in gone]


def max_pruned_groups(layer: SBSLayerMixin) -> int:
    """Groups a producer may lose (its layer's pruning cap; kept for the baselines' call sites)."""
    return layer.max_pruned_groups


def candidate_config(ctx: MethodContext, cand: Candidate) -> CompressionConfig:
    """The configuration a candidate stands for (the search space's channel-coupling rule)."""
    return ctx.make_config(ctx.space.decisions(cand.bits, cand.pruned))


def resolve_budget(ctx: MethodContext) -> float:
    """The primary objective's target, else the cost of uniform ``budget_bits`` (default 4)."""
    obj = ctx.objectives[0]
    if obj.target is not None:
        return float(obj.target)
    bits = int(ctx.extra.get("budget_bits", 4))
    searchable = [n for n, layer in ctx.space.layers() if not layer.pinned]
    return candidate_config(ctx, Candidate({n: (bits, bits) for n in searchable})).cost(obj.cost_model)


def cheapest_candidate(ctx: MethodContext) -> Candidate:
    """Lowest bits everywhere and every producer pruned to its cap (its first, full-size groups)."""
    low = min(ctx.config.bits)
    per_group = channel_wise_layers(ctx)
    bits: dict[str, tuple[Any, int]] = {
        n: ((low,) * per_group[n] if n in per_group else low, low)
        for n, layer in ctx.space.layers()
        if not layer.pinned
    }
    pruned = {}
    for g in ctx.space.groups:
        layer = ctx.space.layer(g.producer)
        pruned[g.producer] = list(range(max_pruned_groups(layer)))
    return Candidate(bits, pruned)


def check_budget_reachable(ctx: MethodContext, budget: float) -> None:
    """Raise a ConfigError when even the cheapest configuration costs more than ``budget``."""
    cm = ctx.objectives[0].cost_model
    floor = floor_config(ctx.space, ctx.config.bits, ctx.config.cost_batch).cost(cm)
    if floor > budget * (1 + BUDGET_SLACK):
        raise ConfigError(
            f"--target {budget:.4g} {cm.unit}: below the cheapest configuration of this search space "
            f"({floor:.4g} {cm.unit}: {min(ctx.config.bits)} bits everywhere, maximal pruning)"
        )


def default_trials(ctx: MethodContext, bn_batches: int, eval_samples: int) -> int:
    """Candidates whose evaluation costs about what ``--search-epochs`` of training would.

    A training step is counted as three forward passes (forward + backward); a candidate costs
    ``bn_batches`` training batches plus the evaluated validation samples, all forward only.
    """
    cfg = ctx.config
    steps = len(ctx.train_loader("search", 0))
    train_samples = 3 * cfg.search_epochs * steps * cfg.batch_size
    per_trial = bn_batches * cfg.batch_size + eval_samples
    return max(2, round(train_samples / max(per_trial, 1)))


class CandidateEvaluator:
    """Accuracy of a fixed, pruned configuration without training (BN statistics re-estimated).

    Each candidate is applied to a copy of the converted model exactly as the pipeline applies
    the final choice (bits fixed, pruned channels physically removed), so the score is that of the
    model fine-tuning would start from. The same training batches re-estimate batch-norm for
    every candidate, so scores differ only through the configurations.
    """

    def __init__(self, ctx: MethodContext, bn_batches: int, eval_batches: int | None) -> None:
        self.ctx = ctx
        loader = ctx.train_loader("search", 0)
        self.bn_data: list[Tensor] = []
        for x, _ in loader:
            if len(self.bn_data) >= bn_batches:
                break
            self.bn_data.append(x)
        self.eval_batches = eval_batches
        self.evaluated = 0

    @property
    def eval_samples(self) -> int:
        loader = self.ctx.val_loader
        total = len(loader.dataset)  # type: ignore[arg-type]  # torch's Dataset declares no __len__; ours are sized
        if self.eval_batches is None:
            return total
        return min(total, self.eval_batches * (loader.batch_size or 1))

    @torch.no_grad()
    def __call__(self, config: CompressionConfig) -> float:
        space = self.ctx.space
        copy_space = dataclasses.replace(space, model=copy.deepcopy(space.model))
        model = apply_config(copy_space, config, "candidate")
        _reestimate_batchnorm(model, self.bn_data, self.ctx.device)
        model.eval()
        correct = count = 0
        for i, (x, y) in enumerate(self.ctx.val_loader):
            if self.eval_batches is not None and i >= self.eval_batches:
                break
            x, y = x.to(self.ctx.device), y.to(self.ctx.device)
            right, n = count_correct(model(x), y)
            correct += right
            count += n
        self.evaluated += 1
        return correct / max(count, 1)


def _reestimate_batchnorm(model: nn.Module, batches: list[Tensor], device: torch.device) -> None:
    """Replace batch-norm running statistics by their plain average over ``batches``.

    Quantisation and pruning shift every layer's output distribution; statistics collected on the
    full-precision model would misjudge a candidate that fine-tuning would quickly fix.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms or not batches:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the given batches
    model.train()
    for x in batches:
        model(x.to(device))
    for m, mom in zip(norms, momenta):
        m.momentum = mom


def _sample(ctx: MethodContext, rng: random.Random) -> Candidate:
    """Uniform bits per layer (per group for channel-wise weights), then random pruned groups."""
    bits = list(ctx.config.bits)
    per_group = channel_wise_layers(ctx)
    chosen: dict[str, tuple[Any, int]] = {}
    for n, layer in ctx.space.layers():
        if layer.pinned:
            continue
        # weights before activations: at layer granularity this is the draw order of every earlier
        # version, so seeded layer-wise runs pick the same candidates as before
        w = tuple(rng.choice(bits) for _ in range(per_group[n])) if n in per_group else rng.choice(bits)
        chosen[n] = (w, rng.choice(bits))
    pruned = {}
    for g in ctx.space.groups:
        layer = ctx.space.layer(g.producer)
        k = rng.randint(0, max_pruned_groups(layer))
        pruned[g.producer] = sorted(rng.sample(range(layer.num_groups), k))
    return Candidate(chosen, pruned)


def _repair(ctx: MethodContext, cand: Candidate, budget: float, rng: random.Random) -> Candidate:
    """Random downgrades (a bit step, or one more pruned group) until the candidate fits.

    A channel-wise layer's weight move lowers one random kept group by one step: one move per
    layer, not per group, so weights, activations and pruning stay as likely to be picked as at
    layer granularity (per-group moves would bias the repair towards weights of wide layers).
    """
    bits = sorted(ctx.config.bits)
    cm = ctx.objectives[0].cost_model
    space: SearchSpace = ctx.space
    while candidate_config(ctx, cand).cost(cm) > budget:
        moves: list[tuple[str, str]] = []
        for name, (w, a) in cand.bits.items():
            if isinstance(w, tuple):
                if _lowerable_groups(w, cand.pruned.get(name, []), bits[0]):
                    moves.append((name, "w"))
            elif w > bits[0]:
                moves.append((name, "w"))
            if a > bits[0]:
                moves.append((name, "a"))
        for g in space.groups:
            if len(cand.pruned[g.producer]) < max_pruned_groups(space.layer(g.producer)):
                moves.append((g.producer, "p"))
        if not moves:  # cannot happen once check_budget_reachable passed
            raise ConfigError(f"random search: no configuration fits the budget {budget:.4g} {cm.unit}")
        name, what = rng.choice(moves)
        w, a = cand.bits.get(name, (0, 0))
        if what == "w" and isinstance(w, tuple):
            i = rng.choice(_lowerable_groups(w, cand.pruned.get(name, []), bits[0]))
            cand.bits[name] = (w[:i] + (bits[bits.index(w[i]) - 1],) + w[i + 1 :], a)
        elif what == "w":
            cand.bits[name] = (bits[bits.index(w) - 1], a)
        elif what == "a":
            cand.bits[name] = (w, bits[bits.index(a) - 1])
        else:
            free = [i for i in range(space.layer(name).num_groups) if i not in cand.pruned[name]]
            cand.pruned[name] = sorted([*cand.pruned[name], rng.choice(free)])
    return cand


@dataclass
class CandidateSearch:
    """A black-box search over candidates (random and Optuna share it): what it starts from, and
    the best candidate scored so far."""

    ctx: MethodContext
    budget: float  # the resolved, reachable budget
    evaluator: CandidateEvaluator  # scores a configuration without training
    count: int  # candidates to evaluate
    best: tuple[float, float, Candidate] | None = None  # (accuracy, cost, candidate)

    def score(self, cand: Candidate, config: CompressionConfig, cost: float) -> float:
        """The accuracy of ``cand`` (its ``config``, costing ``cost``); it becomes the best when it
        beats the best so far (ties go to the cheaper one). Shown on the progress bar."""
        acc = self.evaluator(config)
        if self.best is None or (acc, -cost) > (self.best[0], -self.best[1]):
            self.best = (acc, cost, cand)
        unit = self.ctx.objectives[0].cost_model.unit
        self.ctx.progress.update(acc=acc, best=self.best[0], cost=f"{cost:.3g} {unit}")
        return acc

    def finish(self, **stats: Any) -> CompressionConfig:
        """Save the best candidate (and ``stats``) as the finished search's state; its configuration."""
        assert self.best is not None, "no candidate was scored"
        acc, cost, cand = self.best
        self.ctx.save_state(
            self.ctx.config.search_epochs, {"best": cand.to_state()}, {"acc": acc, "cost": cost, **stats}
        )
        return candidate_config(self.ctx, cand)


def start_candidate_search(ctx: MethodContext, count_option: str) -> CompressionConfig | CandidateSearch:
    """The resumed result when the run finished its search, else the budget, scorer and count."""
    if ctx.resume_state is not None and "best" in ctx.resume_state:
        return candidate_config(ctx, Candidate.from_state(ctx.resume_state["best"]))
    budget = resolve_budget(ctx)
    check_budget_reachable(ctx, budget)
    evaluator = CandidateEvaluator(ctx, int(ctx.extra.get("bn_batches", 8)), ctx.extra.get("eval_batches"))
    n = int(ctx.extra.get(count_option) or default_trials(ctx, len(evaluator.bn_data), evaluator.eval_samples))
    return CandidateSearch(ctx, budget, evaluator, n)


#: The body of a candidate-search method: ``fn(ctx, search) -> configuration``.
CandidateSearchBody = Callable[[MethodContext, CandidateSearch], CompressionConfig]


def candidate_search_method(
    name: str, count_option: str, description: str
) -> Callable[[CandidateSearchBody], Callable[[MethodContext], CompressionConfig]]:
    """Decorator registering ``fn(ctx, search)`` as search method ``name``: a black-box search
    over candidates, which prunes and meets the target.

    The registered method returns the saved result when the run already finished its search;
    otherwise it calls ``fn`` with the :class:`CandidateSearch` of :func:`start_candidate_search`
    (``count_option``: the ``extra`` option counting the candidates to score).
    """

    def decorator(fn: CandidateSearchBody) -> Callable[[MethodContext], CompressionConfig]:
        @functools.wraps(fn)
        def method(ctx: MethodContext) -> CompressionConfig:
            search = start_candidate_search(ctx, count_option)
            return search if isinstance(search, CompressionConfig) else fn(ctx, search)

        return register_method(name, prunes=True, meets_target=True, description=description)(method)

    return decorator


@candidate_search_method(
    "random", "candidates", "best of N random bit/pruning configurations under the budget (no training per candidate)"
)
def random_search(ctx: MethodContext, search: CandidateSearch) -> CompressionConfig:
    """Sample, repair to the budget, score after BN re-estimation, return the best (seeded)."""
    rng = random.Random(ctx.config.seed)  # own stream: the pipeline reseeds torch's global RNG per loader
    ctx.progress.start("search", search.count, 0)
    for _ in range(search.count):
        cand = _repair(ctx, _sample(ctx, rng), search.budget, rng)
        config = candidate_config(ctx, cand)
        search.score(cand, config, config.cost(ctx.objectives[0].cost_model))
    return search.finish(candidates=search.count)
