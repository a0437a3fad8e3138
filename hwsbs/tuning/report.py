"""Study reports from storage alone: pareto.json, pareto.png, pareto.html, a table, hypervolume.

The front is the set of COMPLETE, feasible trials no other such trial dominates in (accuracy up,
every objective's cost down); for ``pareto`` studies it equals Optuna's ``study.best_trials``.

Hypervolume: each front point is mapped to (accuracy, cost_1 / uniform8_1, ..., cost_K /
uniform8_K), the costs divided by the same profile's uniform 8-bit cost, and the volume it
dominates is measured exactly against the reference point (accuracy 0, every cost ratio 1.1),
i.e. the box from "useless and 10 % dearer than uniform 8-bit" to each point. A point at
accuracy 1 and zero cost would score 1.1^K. It is exact for any number of objectives
(hypervolume-by-slicing: one sweep in 2-D, recursive slices beyond).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import optuna
from optuna.trial import FrozenTrial
from rich.console import Console
from rich.table import Table

from hwsbs.tuning.attrs import read_trial_attrs
from hwsbs.tuning.front import HV_REFERENCE, hypervolume, non_dominated
from hwsbs.tuning.plots import plot_html, plot_png, private_tmp
from hwsbs.tuning.storage import STUDY_ATTR

__all__ = [
    "TrialRecord",
    "StudyReport",
    "collect",
    "write_report",
    "print_report",
    "hypervolume",
    "non_dominated",
    "HV_REFERENCE",
]


@dataclass
class TrialRecord:
    """What the storage holds about one trial."""

    number: int
    state: str
    params: dict[str, Any]
    options: dict[str, Any]
    weights: dict[str, float]
    accuracy: dict[str, float] | None
    costs: dict[str, dict[str, Any]] | None
    constraint: float | None
    run_dir: str | None
    config_path: str | None
    result_path: str | None
    fail_reason: str | None

    @property
    def complete(self) -> bool:
        return self.state == "COMPLETE" and self.accuracy is not None and self.costs is not None

    @property
    def feasible(self) -> bool:
        return self.constraint is None or self.constraint <= 0.0

    @property
    def scores(self) -> dict[str, float]:
        """``accuracy``, read only where the trial is complete (so it is not None)."""
        return cast("dict[str, float]", self.accuracy)

    def cost(self, label: str) -> float:
        assert self.costs is not None
        return float(self.costs[label]["compressed"])

    def ratio(self, label: str) -> float:
        """Cost divided by the uniform 8-bit cost on the same profile."""
        assert self.costs is not None
        u8 = float(self.costs[label]["uniform_8bit"])
        return self.cost(label) / u8 if u8 > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        # the stored fields as they are, up to the costs; the derived ratios come next, then the rest
        stored = ("number", "state", "params", "options", "weights", "accuracy", "costs")
        out: dict[str, Any] = {name: getattr(self, name) for name in stored}
        if self.costs is not None:
            out["cost_vs_uniform_8bit"] = {label: self.ratio(label) for label in self.costs}
        out.update(
            {
                "constraint": self.constraint,
                "feasible": self.feasible,
                "run_dir": self.run_dir,
                "config": self.config_path,
                "result": self.result_path,
            }
        )
        if self.fail_reason:
            out["fail_reason"] = self.fail_reason
        return out


@dataclass
class StudyReport:
    """A study summarised: every trial, the front, its hypervolume, the best feasible trial."""

    study_name: str
    kind: str  # "tune" or "pareto"
    objectives: list[dict[str, Any]]  # label, unit, metric (hw, cost)
    target: dict[str, Any] | None
    trials: list[TrialRecord]
    front: list[TrialRecord]
    hypervolume: float
    best: TrialRecord | None
    storage: str
    out: str | None

    @property
    def labels(self) -> list[str]:
        return [o["label"] for o in self.objectives]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials:
            out[t.state.lower()] = out.get(t.state.lower(), 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "study": self.study_name,
            "kind": self.kind,
            "storage": self.storage,
            "objectives": [{"name": "accuracy", "direction": "maximize"}]
            + [
                {"name": o["label"], "direction": "minimize", "unit": o["unit"], "metric": o["metric"]}
                for o in self.objectives
            ],
            "target": self.target,
            "trials": self.counts(),
            "hypervolume": {
                "value": self.hypervolume,
                "reference": {"accuracy": HV_REFERENCE[0], "cost_vs_uniform_8bit": HV_REFERENCE[1]},
                "space": "(accuracy, cost / uniform 8-bit cost of each profile)",
            },
            "best": None if self.best is None else self.best.number,
            "front": [t.to_dict() for t in self.front],
        }


def _record(t: FrozenTrial, study_attrs: dict[str, Any]) -> TrialRecord:
    ua = t.user_attrs
    got = read_trial_attrs(ua)
    reason = ua.get("fail_reason") or study_attrs.get(f"lost:{t.number}")
    if ua.get("surplus"):
        reason = "surplus: the study already had its trials when this one started"
    return TrialRecord(
        number=t.number,
        state=t.state.name,
        params=dict(t.params),
        options=got["options"],
        weights=got["weights"],
        accuracy=got["accuracy"],
        costs=got["costs"],
        constraint=got["constraint"],
        run_dir=ua.get("run_dir"),
        config_path=ua.get("config_path"),
        result_path=ua.get("result_path"),
        fail_reason=reason,
    )


def collect(study: optuna.Study, storage: str = "") -> StudyReport:
    """Summarise ``study`` from what its storage holds."""
    info = study.user_attrs.get(STUDY_ATTR, {})
    objectives = list(info.get("objectives", []))
    labels = [o["label"] for o in objectives]
    attrs = study.user_attrs
    trials = [_record(t, attrs) for t in study.get_trials(deepcopy=False)]
    ok = [
        t
        for t in trials
        if t.complete
        and t.feasible
        and all(label in (t.costs or {}) for label in labels)
        and math.isfinite(t.scores["compressed"])
    ]
    vectors = [(-t.scores["compressed"], *(t.cost(label) for label in labels)) for t in ok]
    front = sorted((ok[i] for i in non_dominated(vectors)), key=lambda t: (t.cost(labels[0]), t.number))
    hv_points = [(-t.scores["compressed"], *(t.ratio(label) for label in labels)) for t in front]
    hv = hypervolume(hv_points, (-HV_REFERENCE[0], *([HV_REFERENCE[1]] * len(labels))))
    best = max(ok, key=lambda t: (t.scores["compressed"], -t.cost(labels[0]), -t.number), default=None)
    return StudyReport(
        study.study_name,
        info.get("kind", "tune"),
        objectives,
        info.get("target"),
        trials,
        front,
        hv,
        best,
        storage,
        info.get("out"),
    )


def _write_text_atomically(path: Path, text: str) -> None:
    tmp = private_tmp(path)
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _write_best(report: StudyReport, out_dir: Path) -> Path | None:
    best = report.best
    if best is None:
        return None
    best_dir = out_dir / "best"
    best_dir.mkdir(parents=True, exist_ok=True)
    for name in ("config.yaml", "result.json", "layers.png"):
        src = Path(best.run_dir or "") / name
        if best.run_dir and src.is_file():
            tmp = private_tmp(best_dir / name)
            shutil.copy2(src, tmp)
            tmp.replace(best_dir / name)
    _write_text_atomically(best_dir / "trial.json", json.dumps(best.to_dict(), indent=2))
    return best_dir


def write_report(report: StudyReport, out_dir: str | Path) -> list[Path]:
    """Write pareto.json, pareto.png, pareto.html (when plotly is installed) and, for ``tune``,
    ``best/`` (config.yaml, result.json, layers.png and trial.json of the best feasible trial).

    Returns:
        The paths written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    _write_text_atomically(out / "pareto.json", json.dumps(report.to_dict(), indent=2))
    written.append(out / "pareto.json")
    if any(t.complete for t in report.trials):
        plot_png(report, out / "pareto.png")
        written.append(out / "pareto.png")
        if plot_html(report, out / "pareto.html"):
            written.append(out / "pareto.html")
    if report.kind == "tune":
        best_dir = _write_best(report, out)
        if best_dir is not None:
            written.append(best_dir)
    return written


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def print_report(report: StudyReport, console: Console) -> None:
    """The front as a table, the trial counts, the hypervolume and the best feasible trial."""
    names = sorted({k for t in report.front for k in t.params}, key=lambda k: (k.startswith("weight:"), k))
    title = f"{report.study_name}: Pareto front ({len(report.front)} of {sum(t.complete for t in report.trials)} complete trials)"
    table = Table(title=title)
    table.add_column("trial", justify="right")
    for name in names:
        table.add_column(name.replace("weight:", "w "), justify="right")
    table.add_column("accuracy", justify="right")
    for obj in report.objectives:
        table.add_column(f"{obj['label']} ({obj['unit']})", justify="right")
    for t in report.front:
        mark = " *" if report.best is not None and t.number == report.best.number and report.kind == "tune" else ""
        table.add_row(
            f"{t.number}{mark}",
            *(_fmt(t.params.get(n, "")) for n in names),
            f"{t.scores['compressed']:.4f}",
            *(f"{t.cost(lbl):.4g} ({t.ratio(lbl):.2f}x u8)" for lbl in report.labels),
        )
    console.print(table)
    counts = ", ".join(f"{n} {state}" for state, n in sorted(report.counts().items()))
    over = sum(1 for t in report.trials if t.complete and not t.feasible)
    console.print(f"trials: {counts or 'none'}" + (f" ({over} complete but over budget)" if over else ""))
    console.print(
        f"hypervolume {report.hypervolume:.4f} (accuracy x cost/uniform-8-bit per profile; "
        f"reference accuracy {HV_REFERENCE[0]}, cost ratio {HV_REFERENCE[1]})"
    )
    failed = [t for t in report.trials if t.state == "FAIL"]
    for t in failed[:5]:
        console.print(f"trial {t.number} failed: {t.fail_reason or 'no reason recorded'}")
    if report.kind == "tune":
        over_budget = [t for t in report.trials if t.complete and not t.feasible]
        if report.best is None and over_budget:
            # not feasible: every constraint is a number > 0
            closest = min(over_budget, key=lambda t: cast(float, t.constraint))
            console.print(
                f"no complete trial meets the budget; closest: trial {closest.number}, "
                f"{100 * cast(float, closest.constraint):.0f}% over it at {closest.ratio(report.labels[0]):.2f}x uniform 8-bit"
            )
        elif report.best is None:
            console.print("no complete trial yet")
        else:
            b, label = report.best, report.labels[0]
            console.print(
                f"best feasible: trial {b.number}, accuracy {b.scores['compressed']:.4f}, "
                f"{label} {b.cost(label):.4g} {report.objectives[0]['unit']} ({b.ratio(label):.2f}x uniform 8-bit), "
                f"params {', '.join(f'{k}={_fmt(v)}' for k, v in b.params.items())}"
            )
