"""``hwsbs lut check``'s terminal report: the configurations and predicted-vs-measured tables."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from .profiles import stdout_console

__all__ = ["print_check_report"]


def _fmt(v: Any, pct: bool = False) -> str:
    if not isinstance(v, float) or v != v:
        return "-"
    return f"{100 * v:.1f}%" if pct else f"{v:.3f}"


def print_check_report(report: dict[str, Any]) -> None:
    """``hwsbs lut check``'s two tables: every configuration, then predicted vs measured per profile."""
    out = stdout_console()
    s = report["settings"]
    m = report["model"]
    detail = Table(
        title=f"{m['name']}: {s['configs']} random configurations, batch {s['batch']}, {s['threads']} threads"
    )
    detail.add_column("#", justify="right")
    for col in ("int8 layers", "MACs kept", "mean bits", "measured"):
        detail.add_column(col, justify="right")
    for p in report["profiles"]:
        detail.add_column(f"{p['profile']} ({p['cost_model']})", justify="right")
    for c in report["configs"]:
        row = [
            str(c["index"]),
            f"{c['int8_layers']}/{c['layers']}",
            f"{100 * c['mac_fraction']:.0f}%",
            f"{c['mean_bits']:.1f}",
            f"{c['measured_s'] * 1e3:.3f} ms",
        ]
        row += [
            f"{c['predicted'][p['profile']] * 1e3:.3f} ms"
            if p["unit"] == "s"
            else f"{c['predicted'][p['profile']]:.3g}"
            for p in report["profiles"]
        ]
        detail.add_row(*row)
    out.print(detail)
    summary = Table(title="predicted vs measured")
    for col in ("profile", "cost model", "Spearman", "MAPE", "within +-10%", "median pred/meas"):
        summary.add_column(col, justify="left" if col in ("profile", "cost model") else "right")
    for p in report["profiles"]:
        summary.add_row(
            p["profile"],
            p["cost_model"],
            _fmt(p.get("spearman")),
            _fmt(p.get("mape"), True),
            _fmt(p.get("within_10pct"), True),
            _fmt(p.get("median_ratio")),
        )
        lo = p.get("layers_only")
        if lo:
            summary.add_row(
                f"{p['profile']} (layers only)",
                p["cost_model"],
                _fmt(lo.get("spearman")),
                _fmt(lo.get("mape"), True),
                _fmt(lo.get("within_10pct"), True),
                _fmt(lo.get("median_ratio")),
            )
    out.print(summary)
