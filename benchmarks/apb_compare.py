"""APB against SBS and uniform 2-bit on ResNet-20 / CIFAR-10: accuracy, memory and latency at one size.

Recommended CPU schedule (frontier.py's; about 30 min on 2 idle cores, 3 seeds)::

    .venv/bin/python benchmarks/apb_compare.py --seeds 0 1 2 --json benchmarks/results/apb_compare.json

(``--out-dir runs/frontier`` reuses the frontier's splits and full-precision model when they are
there, so these rows share its FP model; ``--skip-searched`` halves the fine-tunes if pressed.)
Smoke test (about 2 min)::

    .venv/bin/python benchmarks/apb_compare.py --train-per-class 20 --val-per-class 5 --test-per-class 10 \\
        --pretrain-epochs 1 --search-epochs 1 --finetune-epochs 1 --seeds 0 --out-dir runs/apb_smoke \\
        --json runs/apb_smoke/apb_compare.json

Protocol: frontier.py's, whose functions this script imports (splits, pretraining, searches in
child processes, fine-tuning, summaries):

1. **Splits**: ``--train-per-class`` training and ``--val-per-class`` validation images from the
   CIFAR-10 archive's training split, ``--test-per-class`` of its test split; every choice (SBS's
   and APB's configuration, ``--target`` fitting) sees the validation split only.
2. **One full-precision ResNet-20** (``--pretrain-epochs``), the start of every row.
3. **Rows** (``--rows``): ``uniform2`` (uniform 2-bit, first and last layers 8-bit, as in the
   frontier); ``sbs@u2size``: SBS with ``--cost size --target`` = uniform 2-bit's model size (bits
   2/4/8 and pruning); ``apb@u2size``: ``--method apb --cost size`` at the same target (binary
   weights plus full-precision outliers, first/last 8-bit, 8-bit activations); ``apb``: APB with
   ``--cost size`` and the default lambda, no target (as many outliers as accuracy buys).
4. **Fine-tune** every configuration with frontier.py's identical schedule (``--finetune-epochs``,
   SGD, cosine, lr 0.01) from the full-precision weights; SBS and APB also from their searched
   weights (``-searched`` rows). From FP weights an APB layer gets APB's initial ``alpha`` (mean
   ``|w|``) and exactly the configuration's outlier count, the weights farthest from alpha
   (APB's band rule at the delta giving that count), frozen as in the pipeline's fine-tuning.
5. ``--seeds``: mean and standard deviation per row.

Columns: test and validation top-1, model size (``size`` cost model, kB), ``apb_cpu`` latency
(one x86 core, batch 1: bitwise GEMM + CSR outliers for APB layers, int8/FP32 GEMMs otherwise),
``a100`` roofline latency (APB rows marked: the roofline runs w1a8 on the INT8 tensor core and does
not price the outliers), binary fraction of APB rows, search wall time. Finished searches and
fine-tunes are read back from ``--out-dir``, so an interrupted run continues.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from torch import Tensor, nn

from cost_models import build_cost_model, cost_model_for
from hwsbs.apb.decision import binary_fraction, is_apb_decision
from hwsbs.apb.format import make_apb_layer
from hwsbs.checkpoint import load_checkpoint
from hwsbs.lut.apb import freeze_outliers
from hwsbs.quant.layers import SBSLayerMixin
from hwsbs.sbs.config_io import CompressionConfig, LayerDecision, load_config
from hwsbs.sbs.convert import searchable_shapes

sys.path.insert(0, str(Path(__file__).resolve().parent))

import frontier  # noqa: E402
from frontier import Job, add_protocol_arguments, cached_accuracies, finetune, schedule, search, setup, summarise  # noqa: E402
from search_overhead import machine_info  # noqa: E402

__all__ = ["ROWS", "plan", "uniform_size_bits", "apb_compressed_model", "summarise_rows", "markdown", "main"]

#: The rows, in table order (``--rows``).
ROWS = ("uniform2", "sbs@u2size", "apb@u2size", "apb")
#: Name of the budget every sized row searches at: uniform 2-bit's model size.
SIZE_BUDGET = "u2size"
#: Columns this script adds to frontier.summarise's means and standard deviations.
EXTRA_KEYS = ("size_bits", "apb_cpu_s", "binary_fraction")


def plan(rows: list[str] | tuple[str, ...] = ROWS) -> list[Job]:
    """The searches of ``rows`` (frontier Jobs; sized rows search at :data:`SIZE_BUDGET`).

    Raises:
        ValueError: an unknown row name.
    """
    jobs = {
        "uniform2": Job("uniform2", "uniform", None, {"uniform_bits": 2}),
        "sbs@u2size": Job("sbs@u2size", "sbs", SIZE_BUDGET, {"cost": "size"}),
        "apb@u2size": Job("apb@u2size", "apb", SIZE_BUDGET, {"cost": "size"}),
        "apb": Job("apb", "apb", None, {"cost": "size"}),
    }
    unknown = [r for r in rows if r not in jobs]
    if unknown:
        raise ValueError(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    return [jobs[r] for r in ROWS if r in rows]


def uniform_size_bits(fp: nn.Module, example: Tensor, bits: int = 2, pinned_bits: int = 8) -> float:
    """Model size in bits (``size`` cost model) of uniform ``bits``-bit, first and last layers at
    ``pinned_bits``: the uniform row's configuration, and the budget of the sized rows."""
    order, shapes = searchable_shapes(fp, example)
    edge = {order[0], order[-1]}
    decisions = [LayerDecision(shapes[n], pinned_bits if n in edge else bits, 8 if n in edge else bits) for n in order]
    return CompressionConfig(decisions).cost(build_cost_model("size"))


_BUILD = frontier.build_compressed_model  # hwsbs.sbs.derive's, as frontier.finetune calls it


def apb_compressed_model(
    model: nn.Module, config: CompressionConfig, example: Tensor, source: str = "config.yaml"
) -> nn.Module:
    """frontier.py's ``build_compressed_model``, APB layers included: each gets APB's initial
    alpha and exactly its configured count of full-precision weights, frozen (fine-tuning then
    trains weights and alpha, as the pipeline's does). Other configurations are built unchanged."""
    built = _BUILD(model, config, example, source)
    for d in config.layers:
        if is_apb_decision(d):
            layer = cast(SBSLayerMixin, built.get_submodule(d.shape.name))
            make_apb_layer(layer)
            freeze_outliers(layer, d.fp_weights)
    return built


@contextmanager
def _apb_aware_finetune() -> Iterator[None]:
    """frontier.finetune (the one schedule) with APB layers built by :func:`apb_compressed_model`."""
    frontier.build_compressed_model = apb_compressed_model
    try:
        yield
    finally:
        frontier.build_compressed_model = _BUILD


def _row(
    label: str, method: str, config: CompressionConfig, accs: tuple[float, float], stats: dict[str, float]
) -> dict[str, Any]:
    fraction = binary_fraction(config)
    return {
        "label": label,
        "method": method,
        "val_accuracy": accs[0],
        "test_accuracy": accs[1],
        "size_bits": config.cost(build_cost_model("size")),
        "apb_cpu_s": config.cost(cost_model_for("x86-avx512", "apb_cpu")),
        "a100_s": config.cost(cost_model_for("a100")),
        "a100_prices_outliers": fraction is None,
        **({"binary_fraction": fraction} if fraction is not None else {}),
        **stats,
    }


def summarise_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """frontier.summarise (mean and std over seeds per label) plus this script's columns."""
    out = summarise(rows)
    for entry in out:
        group = [r for r in rows if r["label"] == entry["label"]]
        entry["a100_prices_outliers"] = all(r.get("a100_prices_outliers", True) for r in group)
        for key in EXTRA_KEYS:
            values = [r[key] for r in group if key in r]
            if values:
                entry[key] = statistics.fmean(values)
                entry[key + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return out


def markdown(summary: list[dict[str, Any]]) -> str:
    """The table: one line per row of :func:`summarise_rows`."""
    lines = [
        "| configuration | test top-1 (mean +- std) | val top-1 | size (kB) | apb_cpu (ms) | a100 (us) "
        "| binary fraction | search (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summary:
        a100 = f"{s['a100_s'] * 1e6:.3f}" + ("" if s.get("a100_prices_outliers", True) else "*")
        frac = f"{s['binary_fraction']:.4f}" if "binary_fraction" in s else "-"
        lines.append(
            f"| {s['label']} | {100 * s['test_accuracy']:.2f} +- {100 * s['test_accuracy_std']:.2f} | "
            f"{100 * s['val_accuracy']:.2f} | {s['size_bits'] / 8e3:.1f} | {s['apb_cpu_s'] * 1e3:.3f} | {a100} | "
            f"{frac} | {s.get('search_s', 0):.0f} |"
        )
    if any(not s.get("a100_prices_outliers", True) for s in summary):
        lines.append("")
        lines.append("\\* roofline: binary part only (w1a8 on the INT8 tensor core); the outliers are not priced.")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    p.add_argument("--model", default="resnet20", help="built-in model")
    add_protocol_arguments(p)
    p.add_argument("--skip-searched", action="store_true", help="no -searched rows (fine-tunes from FP only)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out-dir", default="runs/apb_compare")
    p.add_argument("--json", default="benchmarks/results/apb_compare.json")
    return p


def _finetune(*args: Any) -> tuple[float, float]:
    """frontier.py's fine-tune with APB layers rebuilt (see :func:`_apb_aware_finetune`)."""
    with _apb_aware_finetune():
        return finetune(*args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    st = setup(args)
    out, fp_state, search_dir, eval_dir, base, t0 = st.out, st.fp_state, st.search_dir, st.eval_dir, st.base, st.t0
    budget = uniform_size_bits(st.fp, st.example)
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        for job in plan(args.rows):
            run_dir = out / f"seed{seed}" / job.label
            stats = search(job, base, budget if job.budget == SIZE_BUDGET else None, seed, run_dir)
            config = load_config(run_dir / "config.yaml")
            variants = [(job.label, job.method)]
            if job.method in ("sbs", "apb") and not args.skip_searched:
                searched = job.method + "-searched"
                variants.append((job.label.replace(job.method, searched, 1), searched))
            for label, method in variants:
                init = load_checkpoint(run_dir)["model"] if method.endswith("-searched") else None
                cache = run_dir / f"finetune-{method}.json"
                accs = cached_accuracies(
                    cache,
                    _finetune,
                    args.model,
                    fp_state,
                    config,
                    init,
                    seed,
                    args.finetune_epochs,
                    search_dir,
                    eval_dir,
                )
                row = _row(label, method, config, accs, stats)
                rows.append({**row, "seed": seed})
                print(
                    f"seed {seed} {label:22s} test {row['test_accuracy']:.4f} val {row['val_accuracy']:.4f} "
                    f"{row['size_bits'] / 8e3:8.1f} kB search {stats['search_s']:5.0f} s  "
                    f"({time.perf_counter() - t0:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
    summary = summarise_rows(rows)
    report = {
        "machine": machine_info(),
        "command": " ".join(["benchmarks/apb_compare.py", *(argv if argv is not None else sys.argv[1:])]),
        "schedule": schedule(args, "rows", "skip_searched"),
        "test_images": st.test_images,
        "fp_test_accuracy": st.fp_acc,
        "budget_size_bits": budget,
        "summary": summary,
        "runs": rows,
        "markdown": markdown(summary),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(report["markdown"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
