"""What one layer-wide width step is worth: uniform (w, a) pairs fine-tuned with the frontier's schedule.

At uniform 4-bit's BOPs a mixed configuration over {2, 4, 8} must pay for every layer it raises
to 8-bit weights (or activations), twice the BOPs, with layers lowered to 2 bits (half the BOPs).
Whether any such trade can beat uniform 4-bit is a question of exchange rates: the accuracy that
8/4 and 4/8 gain over 4/4 against what 4/2 and 2/4 lose, all layers at once and with the same
fine-tuning. This script measures them::

    .venv/bin/python benchmarks/uniform_pairs.py --out-dir runs/channel_compare --seeds 0 1 2 \\
        --json benchmarks/results/uniform_pairs.json

Protocol: frontier.py's (splits, the shared full-precision ResNet-20 in ``--out-dir``, reused when
there, its one fine-tune schedule, first and last layers 8-bit); every pair fine-tuned from the
full-precision weights; ``--seeds`` seeds, mean and standard deviation of test (and validation)
top-1; BOPs relative to uniform 4-bit. Fine-tunes are cached in ``--out-dir``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from cost_models import build_cost_model
from hwsbs.sbs.config_io import CompressionConfig, LayerDecision
from hwsbs.sbs.convert import searchable_shapes

sys.path.insert(0, str(Path(__file__).resolve().parent))

from frontier import add_protocol_arguments, cached_accuracies, finetune, schedule, setup  # noqa: E402
from search_overhead import machine_info  # noqa: E402

__all__ = ["PAIRS", "pair_config", "main"]

#: (w_bits, a_bits) of every searched layer; 4/4 is the reference.
PAIRS = ((8, 8), (8, 4), (4, 8), (4, 4), (4, 2), (2, 4), (8, 2), (2, 8), (2, 2))


def pair_config(fp: Any, example: Any, w_bits: int, a_bits: int) -> CompressionConfig:
    """Every layer at ``w_bits``/``a_bits`` except the first and last (8/8, as the frontier pins)."""
    order, shapes = searchable_shapes(fp, example)
    edge = {order[0], order[-1]}
    return CompressionConfig(
        [LayerDecision(shapes[n], 8 if n in edge else w_bits, 8 if n in edge else a_bits) for n in order]
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pairs", nargs="+", default=[f"{w}/{a}" for w, a in PAIRS], help="W/A pairs, e.g. 8/4")
    p.add_argument("--model", default="resnet20", help="built-in model")
    add_protocol_arguments(p)  # --search-epochs is accepted and unused: nothing is searched here
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out-dir", default="runs/uniform_pairs")
    p.add_argument("--json", default="benchmarks/results/uniform_pairs.json")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        pairs = [tuple(int(v) for v in text.split("/")) for text in args.pairs]
    except ValueError:
        raise SystemExit(f"--pairs: expected W/A pairs such as 8/4, got {args.pairs}") from None
    st = setup(args)
    bops = build_cost_model("bops")
    reference = pair_config(st.fp, st.example, 4, 4).cost(bops)
    rows: list[dict[str, Any]] = []
    for w, a in pairs:
        config = pair_config(st.fp, st.example, w, a)
        accs = []
        for seed in args.seeds:
            cache = st.out / f"seed{seed}" / f"pair-w{w}a{a}" / "finetune.json"
            cache.parent.mkdir(parents=True, exist_ok=True)
            accs.append(
                cached_accuracies(
                    cache, finetune, args.model, st.fp_state, config, None, seed, args.finetune_epochs,
                    st.search_dir, st.eval_dir,
                )
            )  # fmt: skip
            print(f"seed {seed} w{w}a{a}: val {accs[-1][0]:.4f} test {accs[-1][1]:.4f}", file=sys.stderr, flush=True)
        tests, vals = [t for _, t in accs], [v for v, _ in accs]
        rows.append(
            {
                "pair": f"{w}/{a}",
                "bops_vs_uniform4": config.cost(bops) / reference,
                "test_accuracy": statistics.fmean(tests),
                "test_accuracy_std": statistics.stdev(tests) if len(tests) > 1 else 0.0,
                "val_accuracy": statistics.fmean(vals),
                "seeds": args.seeds,
            }
        )
    lines = ["| w/a (every searched layer) | BOPs / uniform 4-bit | test top-1 (mean +- std) | val top-1 |"]
    lines.append("|---|---:|---:|---:|")
    for r in rows:
        lines.append(
            f"| {r['pair']} | {r['bops_vs_uniform4']:.2f} | {100 * r['test_accuracy']:.2f} +- "
            f"{100 * r['test_accuracy_std']:.2f} | {100 * r['val_accuracy']:.2f} |"
        )
    report = {
        "machine": machine_info(),
        "command": " ".join(["benchmarks/uniform_pairs.py", *(argv if argv is not None else sys.argv[1:])]),
        "fp_test_accuracy": st.fp_acc,
        "test_images": st.test_images,
        "schedule": {k: v for k, v in schedule(args, "pairs").items() if k != "search_epochs"},
        "rows": rows,
        "markdown": "\n".join(lines),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(report["markdown"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
