"""``hwsbs pareto``: a multi-objective study, accuracy against the cost on one or more profiles."""

from __future__ import annotations

import argparse

from hwsbs.cli.search import add_search_options
from hwsbs.cli.tune import add_study_options, run_and_report
from hwsbs.errors import ConfigError
from hwsbs.pipeline import Objective

__all__ = ["add_parser", "parse_hw_spec"]


def parse_hw_spec(text: str, default_cost: str | None = None) -> Objective:
    """``name`` or ``name:costmodel`` (a profile path may hold ``/``; a cost model name may not)."""
    spec = text.strip()
    hw, sep, cost = spec.rpartition(":")
    if not sep or not cost or not hw or any(c in cost for c in "/\\.") or hw.endswith(":"):
        hw, cost = spec, ""
    if not hw:
        raise ConfigError(f"--hw {text!r}: expected a profile name or path, optionally :costmodel")
    return Objective(hw, cost or default_cost)


def _handle(args: argparse.Namespace) -> int:
    objectives = [parse_hw_spec(h, args.cost) for h in args.hw]
    return run_and_report(args, objectives, multi_objective=True)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``hwsbs pareto``."""
    p = subparsers.add_parser(
        "pareto",
        help="multi-objective Optuna study: accuracy vs cost on one or more profiles",
        description="Maximise accuracy and minimise the cost on each --hw profile. With several profiles the inner "
        "loss weighs their log-costs with sampled weights. The front is written to <out>/pareto.json and "
        "pareto.png.",
    )
    p.add_argument(
        "--hw",
        action="append",
        required=True,
        metavar="PROFILE[:COSTMODEL]",
        help="hardware profile, optionally with a cost model (a100:size); repeat for several. "
        "--cost sets the cost model of those without one",
    )
    add_study_options(p)
    add_search_options(p)
    p.set_defaults(handler=_handle)
