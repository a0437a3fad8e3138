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
import os
import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial
from rich.console import Console
from rich.table import Table

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

#: Reference point of the hypervolume: (accuracy, cost / uniform 8-bit cost of each profile).
HV_REFERENCE = (0.0, 1.1)


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

    def cost(self, label: str) -> float:
        assert self.costs is not None
        return float(self.costs[label]["compressed"])

    def ratio(self, label: str) -> float:
        """Cost divided by the uniform 8-bit cost on the same profile."""
        assert self.costs is not None
        u8 = float(self.costs[label]["uniform_8bit"])
        return self.cost(label) / u8 if u8 > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "number": self.number,
            "state": self.state,
            "params": self.params,
            "options": self.options,
            "weights": self.weights,
            "accuracy": self.accuracy,
            "costs": self.costs,
        }
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
                {
                    "name": o["label"],
                    "direction": "minimize",
                    "unit": o["unit"],
                    "metric": o["metric"],
                }
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


def non_dominated(vectors: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the vectors no other vector dominates (all objectives minimised)."""
    keep = []
    for i, v in enumerate(vectors):
        dominated = any(
            all(a <= b for a, b in zip(w, v)) and any(a < b for a, b in zip(w, v))
            for j, w in enumerate(vectors)
            if j != i
        )
        if not dominated:
            keep.append(i)
    return keep


def _hv(points: list[tuple[float, ...]], ref: tuple[float, ...]) -> float:
    if len(ref) == 1:
        return ref[0] - min(p[0] for p in points)
    if len(ref) == 2:
        volume, best_y = 0.0, ref[1]
        for x, y in sorted(points):
            if y < best_y:
                volume += (ref[0] - x) * (best_y - y)
                best_y = y
        return volume
    pts = sorted(points, key=lambda p: p[-1])
    volume = 0.0
    for i, p in enumerate(pts):
        upper = pts[i + 1][-1] if i + 1 < len(pts) else ref[-1]
        if upper > p[-1]:
            volume += (upper - p[-1]) * _hv([q[:-1] for q in pts[: i + 1]], ref[:-1])
    return volume


def hypervolume(points: Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """Exact volume dominated by ``points`` and bounded by ``reference`` (all minimised).

    Points that do not strictly dominate the reference in every coordinate add nothing.
    """
    ref = tuple(float(r) for r in reference)
    inside = [tuple(float(x) for x in p) for p in points if all(x < r for x, r in zip(p, ref))]
    return _hv(inside, ref) if inside else 0.0


def _record(t: FrozenTrial, study_attrs: dict[str, Any]) -> TrialRecord:
    ua = t.user_attrs
    constraint = ua.get("constraint")
    reason = ua.get("fail_reason") or study_attrs.get(f"lost:{t.number}")
    if ua.get("surplus"):
        reason = "surplus: the study already had its trials when this one started"
    return TrialRecord(
        number=t.number,
        state=t.state.name,
        params=dict(t.params),
        options=dict(ua.get("options", {})),
        weights=dict(ua.get("weights", {})),
        accuracy=ua.get("accuracy"),
        costs=ua.get("costs"),
        constraint=float(constraint[0]) if constraint else None,
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
        and math.isfinite(t.accuracy["compressed"])
    ]
    vectors = [(-t.accuracy["compressed"], *(t.cost(label) for label in labels)) for t in ok]
    front = sorted(
        (ok[i] for i in non_dominated(vectors)), key=lambda t: (t.cost(labels[0]), t.number)
    )
    hv_points = [(-t.accuracy["compressed"], *(t.ratio(label) for label in labels)) for t in front]
    hv = hypervolume(hv_points, (-HV_REFERENCE[0], *([HV_REFERENCE[1]] * len(labels))))
    best = max(
        ok, key=lambda t: (t.accuracy["compressed"], -t.cost(labels[0]), -t.number), default=None
    )
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


def _plot_png(report: StudyReport, path: Path) -> None:
    from matplotlib.figure import Figure

    labels = report.labels
    fig = Figure(figsize=(5.0 * len(labels), 4.2))
    axes = fig.subplots(1, len(labels), squeeze=False)[0]
    complete = [t for t in report.trials if t.complete]
    front_ids = {t.number for t in report.front}
    for ax, obj in zip(axes, report.objectives):
        label = obj["label"]
        others = [t for t in complete if t.number not in front_ids]
        feas = [t for t in others if t.feasible]
        infeas = [t for t in others if not t.feasible]
        if feas:
            ax.scatter(
                [t.cost(label) for t in feas],
                [t.accuracy["compressed"] for t in feas],
                c="0.6",
                s=22,
                label="dominated trial",
            )
        if infeas:
            ax.scatter(
                [t.cost(label) for t in infeas],
                [t.accuracy["compressed"] for t in infeas],
                c="tab:red",
                marker="x",
                s=26,
                label="over budget",
            )
        if report.front:
            xs = [t.cost(label) for t in report.front]
            ys = [t.accuracy["compressed"] for t in report.front]
            ax.scatter(xs, ys, c="tab:blue", s=40, zorder=3, label="Pareto front")
            at: dict[tuple[float, float], list[str]] = {}
            for t, x, y in zip(report.front, xs, ys):
                at.setdefault((x, y), []).append(str(t.number))
            for (x, y), numbers in at.items():  # trials at the same point share one label
                ax.annotate(
                    "#" + ",".join(numbers),
                    (x, y),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=7,
                )
            stair = sorted((xs[i], ys[i]) for i in non_dominated([(x, -y) for x, y in zip(xs, ys)]))
            ax.step([p[0] for p in stair], [p[1] for p in stair], where="post", c="tab:blue", lw=1)
        if complete:
            u8 = float(complete[0].costs[label]["uniform_8bit"])
            ax.axvline(u8, c="0.3", ls=":", lw=1, label="uniform 8-bit")
            fp = [
                t.accuracy["full_precision"]
                for t in complete
                if math.isfinite(t.accuracy["full_precision"])
            ]
            if fp:
                ax.axhline(sum(fp) / len(fp), c="tab:green", ls="--", lw=1, label="full precision")
            costs = [t.cost(label) for t in complete] + [u8]
            if min(costs) > 0 and max(costs) / min(costs) > 20:
                ax.set_xscale("log")
            else:
                ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
        budget_trial = next((t for t in complete if t.constraint is not None), None)
        if budget_trial is not None and label == report.labels[0]:
            ax.axvline(
                budget_trial.cost(label) / (budget_trial.constraint + 1.0),
                c="tab:red",
                ls="--",
                lw=1,
                label="budget",
            )
        ax.set_xlabel(f"{obj['metric']} ({obj['unit']})")
        ax.set_ylabel("compressed accuracy")
        ax.set_title(label, fontsize=10)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{report.study_name}: hypervolume {report.hypervolume:.4g}", fontsize=10)
    fig.tight_layout()
    tmp = _private_tmp(path)
    fig.savefig(tmp, dpi=110, format="png")
    tmp.replace(path)  # workers finishing together never leave a torn file


def _plot_html(report: StudyReport, path: Path) -> bool:
    try:
        from plotly import graph_objects as go
        from plotly.subplots import make_subplots
    except ImportError:
        return False
    labels = report.labels
    fig = make_subplots(rows=1, cols=len(labels), subplot_titles=labels)
    front_ids = {t.number for t in report.front}
    complete = [t for t in report.trials if t.complete]
    for col, obj in enumerate(report.objectives, start=1):
        label = obj["label"]
        for name, group, color in (
            ("trial", [t for t in complete if t.number not in front_ids], "gray"),
            ("Pareto front", report.front, "royalblue"),
        ):
            fig.add_trace(
                go.Scatter(
                    x=[t.cost(label) for t in group],
                    y=[t.accuracy["compressed"] for t in group],
                    mode="markers",
                    name=name,
                    marker={"color": color},
                    showlegend=col == 1,
                    text=[
                        f"trial {t.number}<br>"
                        + "<br>".join(f"{k}={v}" for k, v in t.params.items())
                        for t in group
                    ],
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text=f"{obj['metric']} ({obj['unit']})", row=1, col=col)
        fig.update_yaxes(title_text="compressed accuracy", row=1, col=col)
    fig.update_layout(title=f"{report.study_name}: hypervolume {report.hypervolume:.4g}")
    tmp = _private_tmp(path)
    fig.write_html(str(tmp), include_plotlyjs=True)
    tmp.replace(path)
    return True


def _private_tmp(path: Path) -> Path:
    """A temporary sibling of ``path`` that only this thread writes: several study workers
    share one output directory and finish together, and a shared temporary name lets one
    worker's rename take the file another is still writing (then its own rename fails)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


def _write_text_atomically(path: Path, text: str) -> None:
    tmp = _private_tmp(path)
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
            tmp = _private_tmp(best_dir / name)
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
        _plot_png(report, out / "pareto.png")
        written.append(out / "pareto.png")
        if _plot_html(report, out / "pareto.html"):
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
    names = sorted(
        {k for t in report.front for k in t.params}, key=lambda k: (k.startswith("weight:"), k)
    )
    title = f"{report.study_name}: Pareto front ({len(report.front)} of {sum(t.complete for t in report.trials)} complete trials)"
    table = Table(title=title)
    table.add_column("trial", justify="right")
    for name in names:
        table.add_column(name.replace("weight:", "w "), justify="right")
    table.add_column("accuracy", justify="right")
    for obj in report.objectives:
        table.add_column(f"{obj['label']} ({obj['unit']})", justify="right")
    for t in report.front:
        mark = (
            " *"
            if report.best is not None and t.number == report.best.number and report.kind == "tune"
            else ""
        )
        table.add_row(
            f"{t.number}{mark}",
            *(_fmt(t.params.get(n, "")) for n in names),
            f"{t.accuracy['compressed']:.4f}",
            *(f"{t.cost(lbl):.4g} ({t.ratio(lbl):.2f}x u8)" for lbl in report.labels),
        )
    console.print(table)
    counts = ", ".join(f"{n} {state}" for state, n in sorted(report.counts().items()))
    over = sum(1 for t in report.trials if t.complete and not t.feasible)
    console.print(
        f"trials: {counts or 'none'}" + (f" ({over} complete but over budget)" if over else "")
    )
    console.print(
        f"hypervolume {report.hypervolume:.4f} (accuracy x cost/uniform-8-bit per profile; "
        f"reference accuracy {HV_REFERENCE[0]}, cost ratio {HV_REFERENCE[1]})"
    )
    failed = [t for t in report.trials if t.state == "FAIL"]
    for t in failed[:5]:
        console.print(f"trial {t.number} failed: {t.fail_reason or 'no reason recorded'}")
    if report.kind == "tune":
        over = [t for t in report.trials if t.complete and not t.feasible]
        if report.best is None and over:
            closest = min(over, key=lambda t: t.constraint)
            console.print(
                f"no complete trial meets the budget; closest: trial {closest.number}, "
                f"{100 * closest.constraint:.0f}% over it at {closest.ratio(report.labels[0]):.2f}x uniform 8-bit"
            )
        elif report.best is None:
            console.print("no complete trial yet")
        else:
            b, label = report.best, report.labels[0]
            console.print(
                f"best feasible: trial {b.number}, accuracy {b.accuracy['compressed']:.4f}, "
                f"{label} {b.cost(label):.4g} {report.objectives[0]['unit']} ({b.ratio(label):.2f}x uniform 8-bit), "
                f"params {', '.join(f'{k}={_fmt(v)}' for k, v in b.params.items())}"
            )
