"""``hwsbs tune``: Optuna over the outer hyperparameters, maximising accuracy under a cost budget.

The study options and the run-and-report flow are shared with ``hwsbs pareto``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import optuna
from optuna.trial import FrozenTrial

from hwsbs.cli.profiles import stdout_console
from hwsbs.cli.search import add_search_options, config_from_args
from hwsbs.pipeline import Objective
from hwsbs.progress import console
from hwsbs.tuning.attrs import read_trial_attrs
from hwsbs.tuning.report import collect, print_report, write_report
from hwsbs.tuning.space import TuningSpace
from hwsbs.tuning.study import SAMPLERS, StudySettings, run_study

__all__ = ["add_parser", "add_study_options", "run_and_report"]

#: The options whose dest names the StudySettings field they set, value unchanged (``--target``
#: too: StudySettings takes its text).
_SETTINGS_OPTIONS = ("target", "inner_budget", "storage", "study_name", "sampler", "out")


def add_study_options(p: argparse.ArgumentParser) -> None:
    """Options of the Optuna study (shared by ``tune`` and ``pareto``)."""
    g = p.add_argument_group("study")
    g.add_argument(
        "--trials",
        type=int,
        required=True,
        help="total trials the study should hold; re-running or extra workers add up to it",
    )
    g.add_argument(
        "--space", default=None, help="search-space YAML (default: lambda, temperature, threshold-lr, group size, bits)"
    )
    g.add_argument(
        "--storage",
        default=None,
        help="Optuna storage: sqlite:///f.db, postgresql://..., mysql://..., or journal:PATH (default: sqlite in --out)",
    )
    g.add_argument("--study-name", default=None, help="study name (default: derived from the command and profiles)")
    g.add_argument(
        "--sampler", choices=SAMPLERS, default="tpe", help="Optuna sampler, seeded by --seed (default: %(default)s)"
    )
    g.add_argument("--out", default=None, help="study directory (default: runs/<study name>)")
    g.add_argument(
        "--constraint-only",
        dest="inner_budget",
        action="store_false",
        help="--target only filters trials; by default each inner search also aims at it (budget loss)",
    )


def _trial_printer() -> Callable[[optuna.Study, FrozenTrial], None]:
    started = time.perf_counter()

    def show(study: optuna.Study, trial: FrozenTrial) -> None:
        ua = trial.user_attrs
        got = read_trial_attrs(ua)
        elapsed = f"[{time.perf_counter() - started:.0f} s]"
        if trial.state.name == "COMPLETE" and got["costs"] is not None and got["accuracy"] is not None:
            costs = ", ".join(
                f"{label} {c['compressed']:.4g} {c['unit']} ({c['compressed'] / c['uniform_8bit']:.2f}x u8)"
                for label, c in got["costs"].items()
                if c.get("uniform_8bit")
            )
            violation = got["constraint"]
            budget = "" if violation is None else (" within budget" if violation <= 0 else " OVER budget")
            console.print(
                f"trial {trial.number}: accuracy {got['accuracy']['compressed']:.4f}, {costs}{budget} {elapsed}",
                soft_wrap=True,
            )
        elif trial.state.name == "FAIL":
            console.print(
                f"trial {trial.number} failed: {ua.get('fail_reason', 'unknown error')} {elapsed}", soft_wrap=True
            )
        elif ua.get("surplus"):
            console.print(f"trial {trial.number} skipped: the study already has its trials {elapsed}")

    return show


def _show_wait(numbers: list[int], grace: int) -> None:
    console.print(
        f"waiting for trial(s) {', '.join(map(str, numbers))}: running in another worker, or lost with "
        f"a stopped one (then failed after {grace} s without heartbeat and replaced)",
        soft_wrap=True,
    )


def run_and_report(args: argparse.Namespace, objectives: list[Objective], multi_objective: bool) -> int:
    """Build the settings from ``args``, run the study, write and print its report."""
    if not getattr(args, "debug", False):
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # trial lines and failures are printed here
    space = TuningSpace.from_file(args.space) if args.space else TuningSpace.default()
    base = config_from_args(args, hw=objectives[0].hw, cost=objectives[0].cost, target=None, target_fraction=None)
    options = {name: getattr(args, name) for name in _SETTINGS_OPTIONS}
    settings = StudySettings(
        base=base, objectives=objectives, n_trials=args.trials, multi_objective=multi_objective, space=space, **options
    )
    run = run_study(settings, callbacks=[_trial_printer()], on_wait=_show_wait)
    report = collect(run.study, run.storage_url)
    written = write_report(report, run.out_dir)
    print_report(report, stdout_console())
    console.print(
        f"study {run.study.study_name} in {run.storage_url}: {len(report.trials)} trials "
        f"({run.new_trials} run now); artefacts: {', '.join(str(p) for p in written)}",
        soft_wrap=True,
    )
    return 0


def _handle(args: argparse.Namespace) -> int:
    return run_and_report(args, [Objective(args.hw, args.cost)], multi_objective=False)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``hwsbs tune``."""
    p = subparsers.add_parser(
        "tune",
        help="Optuna search over lambda, temperature, group size, bits... for the best accuracy under a budget",
        description="Each trial runs one search with sampled outer hyperparameters; the objective is the compressed "
        "accuracy, --target is a cost budget (an Optuna constraint). The best feasible trial is copied to "
        "<out>/best/.",
    )
    p.add_argument("--hw", required=True, help="hardware profile: built-in name (a100) or YAML path")
    add_study_options(p)
    add_search_options(p)
    p.set_defaults(handler=_handle)
