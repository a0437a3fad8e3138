"""Conformance checks for search methods: what every ``--method`` must do, built-in or plugin.

Run :func:`check_search_method` on a registered name; it runs the method through the real
pipeline on the built-in digits data (seconds) and checks the contract the pipeline, ``hwsbs
cost`` and export rely on:

* the configuration names every layer of the model with its traced shape;
* searched layers use candidate bit widths, pinned layers their pinned bits;
* channel coupling holds (a consumer keeps its producer's channels, a depthwise layer between
  loses them in and out), pruning stays under ``--max-prune-fraction``, and a method registered
  with ``prunes=False`` prunes nothing;
* result.json's cost is the configuration's cost (what ``hwsbs cost`` reproduces);
* a method registered with ``meets_target=True`` ends within a reachable ``--target``;
* the same seed gives the same configuration, and resuming a finished run returns its result.

A method that cannot run the default schedule declares what it needs as a ``conformance`` dict
on its registered function (see :func:`method_needs`), e.g. APB::

    apb.conformance = {"cost": "size", "cost_flag": "prices_apb", "w_bits": (1,)}

The check then runs it with that cost model, holds its searched layers to those weight widths,
and checks that it refuses a cost model without the flag with a one-line ``ConfigError``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from cost_models import build_cost_model, get_cost_model_class
from hwsbs.config import SearchConfig
from hwsbs.errors import ConfigError
from hwsbs.methods import SearchMethod, get_method
from hwsbs.models import build_model
from hwsbs.pipeline import run_search
from hwsbs.sbs.config_io import CompressionConfig, load_config
from hwsbs.sbs.prunable import find_prunable_groups

from .cost_models import ConformanceError

__all__ = ["check_search_method", "method_needs", "METHOD_CHECK_OPTIONS", "NEEDS_KEYS"]

#: The tiny schedule the checks run (digits, small_cnn, BOPs, a 30% budget).
METHOD_CHECK_OPTIONS: dict[str, Any] = dict(
    subset=256,
    pretrain_epochs=1,
    search_epochs=1,
    finetune_epochs=0,
    progress=False,
    hw="a100",
    cost="bops",
    target_fraction=0.3,
    seed=0,
)


#: What a method may declare in its ``conformance`` dict: ``cost`` (the cost model the check runs
#: it with, unless the options name one it accepts), ``cost_flag`` (a class attribute a cost model
#: must set true for the method to accept it), ``w_bits`` (the weight widths of its searched layers,
#: instead of the candidate ``--bits``), ``a_bits`` (the same for activation widths).
NEEDS_KEYS = ("cost", "cost_flag", "w_bits", "a_bits")


def method_needs(method: SearchMethod) -> dict[str, Any]:
    """The ``conformance`` dict a method's registered function declares ({} for most methods).

    Raises:
        ConformanceError: the declaration is not a dict of :data:`NEEDS_KEYS`.
    """
    needs = getattr(method.run, "conformance", None) or {}
    if not isinstance(needs, dict) or set(needs) - set(NEEDS_KEYS):
        raise ConformanceError(f"search method {method.name!r}: conformance: expected a dict of {list(NEEDS_KEYS)}")
    return dict(needs)


def _accepts(cost: str | None, flag: str | None) -> bool:
    return flag is None or bool(getattr(get_cost_model_class(cost or "bops"), flag, False))


def _refusal_problems(name: str, cfg: SearchConfig, out: Path, flag: str) -> list[str]:
    """A method that needs ``flag`` must refuse the default cost model without it, in one line."""
    if _accepts(METHOD_CHECK_OPTIONS["cost"], flag):
        return []
    try:
        run_search(
            SearchConfig(
                **{**cfg.to_dict(), "cost": METHOD_CHECK_OPTIONS["cost"], "out": str(out), "bits": tuple(cfg.bits)}
            )
        )
    except ConfigError as exc:
        return [] if len(str(exc).splitlines()) == 1 else [f"its refusal of a cost model without {flag} spans lines"]
    return [f"it needs cost models with {flag} but accepted {METHOD_CHECK_OPTIONS['cost']!r}"]


def _coupling_problems(config: CompressionConfig, max_prune_fraction: float, prunes: bool) -> list[str]:
    problems = []
    model = build_model(config.model or "small_cnn", 10, 1, (8, 8))
    groups, _ = find_prunable_groups(model)
    layers = config.by_name()
    first, last = config.layers[0].shape.name, config.layers[-1].shape.name
    allowed = {g.producer for g in groups if g.producer not in (first, last)} | {
        p for g in groups for p in g.passthrough
    }
    for d in config.layers:
        if d.pruned_channels and (not prunes or d.shape.name not in allowed):
            problems.append(f"{d.shape.name} prunes channels but may not")
    for g in groups:
        producer = layers[g.producer]
        for other in [g.consumer, *g.passthrough]:
            if layers[other].state.kept_in != producer.kept_out:
                problems.append(
                    f"{other} keeps {layers[other].state.kept_in} inputs, its producer {g.producer} {producer.kept_out}"
                )
        n_groups = math.ceil(producer.shape.out_channels / config.group_size)
        cap = min(int(math.floor(max_prune_fraction * n_groups + 1e-9)), n_groups - 1)
        if len(producer.pruned_channels) > cap * config.group_size:
            problems.append(
                f"{g.producer} prunes {len(producer.pruned_channels)} channels, over the cap of {cap} groups"
            )
    return problems


def _decisions(config: CompressionConfig) -> list[tuple]:
    return [
        (d.shape.name, d.w_bits, d.a_bits, tuple(d.pruned_channels), d.kept_in, d.fp_weights) for d in config.layers
    ]


def check_search_method(name: str, out_dir: str | Path, **options: Any) -> CompressionConfig:
    """Run method ``name`` through the pipeline and check its contract.

    Args:
        name: a registered method (``hwsbs.methods.list_methods()``).
        out_dir: a writable directory for the runs.
        **options: :class:`SearchConfig` overrides of :data:`METHOD_CHECK_OPTIONS`.

    Returns:
        The configuration the method found.

    Raises:
        ConformanceError: listing every broken rule.
    """
    method = get_method(name)
    needs = method_needs(method)
    out = Path(out_dir)
    settings = {**METHOD_CHECK_OPTIONS, **options, "method": name, "out": str(out / f"{name}-a")}
    if "cost" in needs and not _accepts(settings["cost"], needs.get("cost_flag")):
        settings["cost"] = needs["cost"]
    cfg = SearchConfig(**settings)
    result = run_search(cfg)
    config = load_config(Path(cfg.out) / "config.yaml")  # type: ignore[arg-type]  # cfg.out (Optional) is set above
    problems: list[str] = []
    if not method.description.strip():
        problems.append("registered without a description")
    w_ok, a_ok = set(needs.get("w_bits", cfg.bits)), set(needs.get("a_bits", cfg.bits))
    for d in config.layers[1:-1] if cfg.pin_first_last else config.layers:
        if d.w_bits not in w_ok or d.a_bits not in a_ok:
            problems.append(
                f"{d.shape.name} at {d.w_bits}/{d.a_bits}, not among the weight/activation widths "
                f"{sorted(w_ok)}/{sorted(a_ok)}"
            )
    if cfg.pin_first_last:
        for d in (config.layers[0], config.layers[-1]):
            if (d.w_bits, d.a_bits) != (cfg.pin_bits, cfg.pin_bits):
                problems.append(
                    f"pinned layer {d.shape.name} at {d.w_bits}/{d.a_bits}, not {cfg.pin_bits}/{cfg.pin_bits}"
                )
    problems += _coupling_problems(config, cfg.max_prune_fraction, method.prunes)
    cm = build_cost_model(cfg.cost or "bops")
    cost = config.cost(cm)
    if not math.isclose(result.cost["compressed"], cost, rel_tol=1e-9):
        problems.append(f"result.json cost {result.cost['compressed']:.6g} is not the configuration's cost {cost:.6g}")
    target = (cfg.target_fraction * config.uniform(8).cost(cm)) if cfg.target_fraction else cfg.target
    if method.meets_target and target is not None and cost > target * (1 + 1e-9):
        problems.append(f"cost {cost:.6g} over the reachable target {target:.6g}")
    again = run_search(SearchConfig(**{**cfg.to_dict(), "out": str(out / f"{name}-b"), "bits": tuple(cfg.bits)}))
    if _decisions(again.config) != _decisions(result.config):
        problems.append("the same seed gave another configuration")
    resumed = run_search(SearchConfig(**{**cfg.to_dict(), "resume": True, "bits": tuple(cfg.bits)}))
    first = json.loads((Path(cfg.out) / "result.json").read_text())  # type: ignore[arg-type]  # cfg.out is set above
    if resumed.cost != result.cost or first["cost"] != result.cost:
        problems.append("resuming the finished run changed its result")
    if needs.get("cost_flag"):
        problems += _refusal_problems(name, cfg, out / f"{name}-refused", needs["cost_flag"])
    if problems:
        raise ConformanceError(f"search method {name!r}: " + "; ".join(problems))
    return config
