"""Issue 5's table: ResNet-20 on CIFAR-10 with a schedule that fits this machine.

Full-precision accuracy; SBS at two or more lambdas; uniform 8-bit and 4-bit at the same epochs;
accuracy, BOPs and the a100 (roofline) and bismo (bit_serial) cost of each, as a Markdown table.

Usage::

    .venv/bin/python benchmarks/cifar_resnet20.py --lambdas 0.05 0.2 1.0 --out-dir runs/frontier

It is :mod:`frontier` restricted to those methods, with the same defaults and ``--out-dir``: runs
the frontier already finished are read back, so the two scripts share one set of runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cost_models import cost_model_for
from hwsbs.sbs.config_io import load_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
import frontier  # noqa: E402

__all__ = ["markdown_table", "main"]


def markdown_table(report: dict) -> str:
    """The issue-5 table from a frontier report."""
    rows = report["runs"]
    fp_bops = rows[0]["bops_fp"] if rows else float("nan")
    lines = ["| configuration | top-1 accuracy | BOPs | x fewer BOPs than FP | a100 roofline (us) | bismo (ms) |",
             "|---|---:|---:|---:|---:|---:|"]
    first = Path(report["out_dir"]) / rows[0]["label"] / "config.yaml" if rows else None
    if first is not None and first.is_file():
        fp_cfg = load_config(first).full_precision()
        lines.append(f"| full precision (FP32) | {report['fp_accuracy']:.4f} | {fp_bops:.3g} | 1.0 | "
                     f"{fp_cfg.cost(cost_model_for('a100')) * 1e6:.2f} | {fp_cfg.cost(cost_model_for('bismo')) * 1e3:.3f} |")
    for r in rows:
        lines.append(f"| {r['label']} | {r['accuracy']:.4f} | {r['bops']:.3g} | {fp_bops / r['bops']:.1f} | "
                     f"{r['a100_s'] * 1e6:.2f} | {r['bismo_s'] * 1e3:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--methods" not in argv:
        argv = ["--methods", "sbs", "uniform8", "uniform4", *argv]
    parser = frontier.build_parser()
    args = parser.parse_args(argv)
    if "--json" not in argv:
        argv += ["--json", "benchmarks/results/cifar_resnet20.json"]
    if "--png" not in argv:
        argv += ["--png", ""]
    out = Path(args.out_dir)
    frontier.main(argv)
    report = json.loads(Path(argv[argv.index("--json") + 1]).read_text())
    report["out_dir"] = str(out)
    print(markdown_table(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
