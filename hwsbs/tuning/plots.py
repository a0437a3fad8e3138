"""Pictures of a study: the accuracy-cost scatter with its Pareto front (PNG, and HTML when plotly is there)."""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from hwsbs.tuning.front import non_dominated

if TYPE_CHECKING:
    from hwsbs.tuning.report import StudyReport

__all__ = ["plot_png", "plot_html", "private_tmp"]


def private_tmp(path: Path) -> Path:
    """A temporary sibling of ``path`` that only this thread writes: several study workers
    share one output directory and finish together, and a shared temporary name lets one
    worker's rename take the file another is still writing (then its own rename fails)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


def plot_png(report: StudyReport, path: Path) -> None:
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
                [t.scores["compressed"] for t in feas],
                c="0.6",
                s=22,
                label="dominated trial",
            )
        if infeas:
            ax.scatter(
                [t.cost(label) for t in infeas],
                [t.scores["compressed"] for t in infeas],
                c="tab:red",
                marker="x",
                s=26,
                label="over budget",
            )
        if report.front:
            xs = [t.cost(label) for t in report.front]
            ys = [t.scores["compressed"] for t in report.front]
            ax.scatter(xs, ys, c="tab:blue", s=40, zorder=3, label="Pareto front")
            at: dict[tuple[float, float], list[str]] = {}
            for t, x, y in zip(report.front, xs, ys):
                at.setdefault((x, y), []).append(str(t.number))
            for (x, y), numbers in at.items():  # trials at the same point share one label
                ax.annotate("#" + ",".join(numbers), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
            stair = sorted((xs[i], ys[i]) for i in non_dominated([(x, -y) for x, y in zip(xs, ys)]))
            ax.step([p[0] for p in stair], [p[1] for p in stair], where="post", c="tab:blue", lw=1)
        if complete:
            u8 = float(cast("dict[str, Any]", complete[0].costs)[label]["uniform_8bit"])
            ax.axvline(u8, c="0.3", ls=":", lw=1, label="uniform 8-bit")
            fp = [t.scores["full_precision"] for t in complete if math.isfinite(t.scores["full_precision"])]
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
                budget_trial.cost(label) / (cast(float, budget_trial.constraint) + 1.0),
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
    tmp = private_tmp(path)
    fig.savefig(tmp, dpi=110, format="png")
    tmp.replace(path)  # workers finishing together never leave a torn file


def plot_html(report: StudyReport, path: Path) -> bool:
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
                    y=[t.scores["compressed"] for t in group],
                    mode="markers",
                    name=name,
                    marker={"color": color},
                    showlegend=col == 1,
                    text=[
                        f"trial {t.number}<br>" + "<br>".join(f"{k}={v}" for k, v in t.params.items()) for t in group
                    ],
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text=f"{obj['metric']} ({obj['unit']})", row=1, col=col)
        fig.update_yaxes(title_text="compressed accuracy", row=1, col=col)
    fig.update_layout(title=f"{report.study_name}: hypervolume {report.hypervolume:.4g}")
    tmp = private_tmp(path)
    fig.write_html(str(tmp), include_plotlyjs=True)
    tmp.replace(path)
    return True
