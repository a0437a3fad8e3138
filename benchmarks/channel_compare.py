"""Layer-wise vs channel-wise weight bits on ResNet-20 / CIFAR-10, at equal cost per device (issue 17).

Recommended CPU schedule (frontier.py's; about 40 min on 2 idle cores, 3 seeds as 2-3 processes)::

    .venv/bin/python benchmarks/channel_compare.py --seeds 0 1 2 --json benchmarks/results/channel_compare.json

Smoke test (about 2 min)::

    .venv/bin/python benchmarks/channel_compare.py --train-per-class 20 --val-per-class 5 --test-per-class 10 \\
        --pretrain-epochs 1 --search-epochs 1 --finetune-epochs 1 --seeds 0 --out-dir runs/channel_smoke \\
        --json runs/channel_smoke/channel_compare.json

Protocol: frontier.py's, whose functions this script imports (splits, the shared full-precision
model, searches in child processes, the one fine-tune schedule, summaries):

1. **Budgets per device** (``--budgets``): ``bismo@u4`` and ``bismo@u2`` are the cost of uniform
   4-bit and 2-bit (first and last layers 8-bit, as in the frontier) on the BISMO bit-serial
   overlay, which streams output channels, so narrower channel groups are real savings there;
   ``a100@u4`` is uniform 4-bit's roofline latency on an A100, which runs a layer at one precision
   (no built-in GPU profile declares ``channel_split``), so a mixed layer costs its widest group.
2. **Rows**: at each budget, SBS with ``--granularity layer`` (``sbs-layer``) and with
   ``--granularity channel`` (``sbs-channel``), both with ``--group-size 8`` (BISMO's d_m: a
   narrower group pays a whole tile there), ``--target`` at that cost and the device's own cost
   model; plus ``uniform4`` and ``uniform2`` (no search).
3. **Fine-tune** every configuration with frontier.py's identical schedule from the full-precision
   weights; the searched rows also from their searched weights (``-searched``).
4. ``--seeds``: mean and standard deviation per row; every choice sees the validation split only.

Columns: test and validation top-1, the row's cost on its device (relative to uniform 4-bit
there), MBOPs, the number of layers whose groups ended at different weight widths, search time.
Finished searches and fine-tunes are read back from ``--out-dir``, so an interrupted run continues.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from cost_models import build_cost_model, cost_model_for
from hwsbs.checkpoint import load_checkpoint
from hwsbs.sbs.config_io import CompressionConfig, LayerDecision, load_config
from hwsbs.sbs.convert import searchable_shapes

sys.path.insert(0, str(Path(__file__).resolve().parent))

from frontier import Job, add_protocol_arguments, cached_accuracies, finetune, schedule, search, setup, summarise  # noqa: E402
from search_overhead import machine_info  # noqa: E402

__all__ = ["BUDGETS", "plan", "uniform_cost", "mixed_layers", "summarise_rows", "markdown", "main"]

#: ``device@budget`` names: the device whose cost is searched, and whose uniform width sets the cost.
BUDGETS = ("bismo@u4", "bismo@u2", "a100@u4")
#: Output channels per group, for both granularities (pruning groups too, so only the bit
#: granularity differs): BISMO tiles output rows by d_m = 8, so a narrower group saves nothing there.
GROUP_SIZE = 8
#: Uniform rows (no search), priced on every device of the budgets.
UNIFORM_BITS = (4, 2)


def _parse_budget(budget: str) -> tuple[str, int]:
    """``"bismo@u4"`` -> (``"bismo"``, 4)."""
    device, _, uniform = budget.partition("@")
    if not device or not uniform.startswith("u") or not uniform[1:].isdigit():
        raise ValueError(f"budget {budget!r}: expected DEVICE@uBITS, e.g. bismo@u4")
    return device, int(uniform[1:])


def plan(budgets: list[str] | tuple[str, ...] = BUDGETS, group_size: int = GROUP_SIZE) -> list[Job]:
    """The uniform rows, then ``sbs-layer`` and ``sbs-channel`` at every budget, both with
    ``group_size`` output channels per pruning (and, channel-wise, weight-width) group.

    Raises:
        ValueError: a budget that is not ``DEVICE@uBITS``.
    """
    jobs = [Job(f"uniform{b}", "uniform", None, {"uniform_bits": b}) for b in UNIFORM_BITS]
    for budget in budgets:
        device, _ = _parse_budget(budget)
        for granularity in ("layer", "channel"):
            opts = {"hw": device, "cost": None, "granularity": granularity, "group_size": group_size}
            jobs.append(Job(f"sbs-{granularity}@{budget}", "sbs", budget, opts))
    return jobs


def uniform_cost(fp: nn.Module, example: Tensor, device: str, bits: int) -> float:
    """Cost on ``device`` (its default cost model) of uniform ``bits``, first and last layers 8-bit."""
    order, shapes = searchable_shapes(fp, example)
    edge = {order[0], order[-1]}
    decisions = [LayerDecision(shapes[n], 8 if n in edge else bits, 8 if n in edge else bits) for n in order]
    return CompressionConfig(decisions).cost(cost_model_for(device))


def mixed_layers(config: CompressionConfig) -> int:
    """Layers whose kept output-channel groups ended at more than one weight width."""
    return sum(1 for d in config.layers if len({bits for bits, _ in d.state.w_bits_groups}) > 1)


def _row(
    label: str,
    method: str,
    config: CompressionConfig,
    accs: tuple[float, float],
    stats: dict[str, float],
    devices: list[str],
) -> dict[str, Any]:
    return {
        "label": label,
        "method": method,
        "val_accuracy": accs[0],
        "test_accuracy": accs[1],
        "bops": config.cost(build_cost_model("bops")),
        **{f"{d}_cost": config.cost(cost_model_for(d)) for d in devices},
        "mixed_layers": mixed_layers(config),
        **stats,
    }


def summarise_rows(rows: list[dict[str, Any]], devices: list[str]) -> list[dict[str, Any]]:
    """frontier.summarise (mean and std over seeds per label) plus the per-device costs."""
    out = summarise(rows)
    for entry in out:
        group = [r for r in rows if r["label"] == entry["label"]]
        for key in [f"{d}_cost" for d in devices] + ["mixed_layers"]:
            values = [r[key] for r in group]
            entry[key] = statistics.fmean(values)
            entry[key + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return out


def markdown(summary: list[dict[str, Any]], reference: dict[str, float]) -> str:
    """The table; each row's cost is on its budget's device (uniform rows: on every device),
    relative to uniform 4-bit's cost on that device (``reference``)."""
    lines = [
        "| configuration | test top-1 (mean +- std) | val top-1 | cost / uniform 4-bit | MBOPs | mixed layers | search (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summary:
        budget = s["label"].split("@", 1)[1] if "@" in s["label"] else None
        devices = [budget.split("@")[0]] if budget else list(reference)
        cost = ", ".join(f"{d} {s[f'{d}_cost'] / reference[d]:.3f}" for d in devices)
        lines.append(
            f"| {s['label']} | {100 * s['test_accuracy']:.2f} +- {100 * s['test_accuracy_std']:.2f} | "
            f"{100 * s['val_accuracy']:.2f} | {cost} | {s['bops'] / 1e6:.1f} | {s['mixed_layers']:.1f} | "
            f"{s.get('search_s', 0):.0f} |"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budgets", nargs="+", default=list(BUDGETS), help="DEVICE@uBITS, e.g. bismo@u4")
    p.add_argument("--group-size", type=int, default=GROUP_SIZE, help="output channels per group (both rows)")
    p.add_argument("--model", default="resnet20", help="built-in model")
    add_protocol_arguments(p)
    p.add_argument("--skip-searched", action="store_true", help="no -searched rows (fine-tunes from FP only)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out-dir", default="runs/channel_compare")
    p.add_argument("--json", default="benchmarks/results/channel_compare.json")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    jobs = plan(args.budgets, args.group_size)  # validates --budgets before any work
    st = setup(args)
    devices = list(dict.fromkeys(_parse_budget(b)[0] for b in args.budgets))
    targets = {b: uniform_cost(st.fp, st.example, *_parse_budget(b)) for b in args.budgets}
    reference = {d: uniform_cost(st.fp, st.example, d, 4) for d in devices}
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        for job in jobs:
            run_dir = st.out / f"seed{seed}" / job.label
            stats = search(job, st.base, targets.get(job.budget) if job.budget else None, seed, run_dir)
            config = load_config(run_dir / "config.yaml")
            variants = [(job.label, job.label.split("@")[0])]
            if job.method == "sbs" and not args.skip_searched:
                variants.append((job.label.replace("@", "-searched@", 1), variants[0][1] + "-searched"))
            for label, method in variants:
                init = load_checkpoint(run_dir)["model"] if method.endswith("-searched") else None
                accs = cached_accuracies(
                    run_dir / f"finetune-{method}.json",
                    finetune,
                    args.model,
                    st.fp_state,
                    config,
                    init,
                    seed,
                    args.finetune_epochs,
                    st.search_dir,
                    st.eval_dir,
                )
                row = _row(label, method, config, accs, stats, devices)
                rows.append({**row, "seed": seed})
                print(
                    f"seed {seed} {label:32s} test {row['test_accuracy']:.4f} val {row['val_accuracy']:.4f} "
                    f"mixed {row['mixed_layers']} search {stats['search_s']:5.0f} s  "
                    f"({time.perf_counter() - st.t0:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
    summary = summarise_rows(rows, devices)
    report = {
        "machine": machine_info(),
        "command": " ".join(["benchmarks/channel_compare.py", *(argv if argv is not None else sys.argv[1:])]),
        "schedule": schedule(args, "budgets", "group_size", "skip_searched"),
        "test_images": st.test_images,
        "fp_test_accuracy": st.fp_acc,
        "budget_costs": targets,
        "uniform4_costs": reference,
        "summary": summary,
        "runs": rows,
        "markdown": markdown(summary, reference),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(report["markdown"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
