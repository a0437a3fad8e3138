"""``hwsbs report``: regenerate a study's pareto.json/png/html, table and best/ from its storage."""

from __future__ import annotations

import argparse
from pathlib import Path

from hwsbs.cli.profiles import stdout_console
from hwsbs.progress import console
from hwsbs.tuning.report import collect, print_report, write_report
from hwsbs.tuning.storage import load_study, mask_url, study_dir_name

__all__ = ["add_parser"]


def _handle(args: argparse.Namespace) -> int:
    study = load_study(args.storage, args.study_name)
    report = collect(study, mask_url(args.storage))
    out = Path(args.out) if args.out else Path(report.out or Path("runs") / study_dir_name(study.study_name))
    written = write_report(report, out)
    print_report(report, stdout_console())
    console.print(f"written: {', '.join(str(p) for p in written)}", soft_wrap=True)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``hwsbs report``."""
    p = subparsers.add_parser(
        "report",
        help="report of a tune/pareto study from its storage alone",
        description="Read a study from its Optuna storage and write pareto.json, pareto.png, "
        "pareto.html (with plotly) and, for tune studies, best/.",
    )
    p.add_argument("--storage", required=True, help="Optuna storage URL, journal:PATH, or a .db file")
    p.add_argument("--study-name", default=None, help="study to report (default: the only one in the storage)")
    p.add_argument("--out", default=None, help="where to write (default: the study's directory)")
    p.set_defaults(handler=_handle)
