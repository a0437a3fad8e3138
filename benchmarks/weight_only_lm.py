"""Weight-only search on a language model: gpt_tiny on the built-in text, SBS vs uniform 4-bit.

Protocol (the frontier's, for a causal LM):

1. **Splits.** The ``text`` dataset (CPython's help texts, byte-level windows of 64 tokens): its
   training windows train; its validation windows are halved in order, the first half is the
   validation split every run reports and chooses on, the second half the test split, read once
   per fine-tuned model for the table.
2. **One full-precision gpt_tiny** (``--pretrain-epochs``), the start of every method.
3. **Search** with ``--weight-only --weight-group K`` (activations FP16, FP16 scales per K
   inputs): SBS with ``--target`` = the size of uniform B-bit weight-only for each B of
   ``--budget-bits`` (weights + scales, the ``size`` cost model: equal memory), ``--search-epochs``.
4. **Fine-tune** every configuration (uniform 4-bit and 8-bit weight-only included) from the same
   full-precision weights with one schedule (``--finetune-epochs``, the pipeline's SGD).
5. ``--seeds`` seeds; mean and std of test next-token accuracy and perplexity per row.

Usage (recorded in BENCHMARKS.md)::

    .venv/bin/python benchmarks/weight_only_lm.py --seeds 0 1 2 --json benchmarks/results/weight_only_lm.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

import hwsbs
from cost_models import build_cost_model, cost_model_for
from hwsbs.config import SearchConfig
from hwsbs.data import build_dataset, make_loader
from hwsbs.defaults import FINETUNE_LR_FACTOR
from hwsbs.lut.machine import machine_info
from hwsbs.models import build_model
from hwsbs.progress import PhaseProgress
from hwsbs.sbs.config_io import CompressionConfig
from hwsbs.sbs.derive import build_compressed_model
from hwsbs.training import evaluate_metrics, make_sgd, split_decay, train_epoch

LR = SearchConfig().lr  # the pipeline's SGD learning rate (fine-tuning uses FINETUNE_LR_FACTOR of it)


def _splits() -> tuple[Any, Any, Any, dict[str, Any]]:
    bundle = build_dataset("text", seed=0)
    half = len(bundle.val) // 2
    val = Subset(bundle.val, range(half))
    test = Subset(bundle.val, range(half, len(bundle.val)))
    return bundle.train, val, test, bundle.geometry()


def _train(model: torch.nn.Module, data: Any, epochs: int, lr: float, seed: int) -> None:
    torch.manual_seed(seed)
    opt = make_sgd(*split_decay(model), lr, 5e-4)
    loader = make_loader(data, 64, True, seed)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs * len(loader)))
    for _ in range(epochs):
        train_epoch(model, loader, opt, sched, torch.device("cpu"), PhaseProgress(False), "benchmark")


def _metrics(model: torch.nn.Module, data: Any) -> dict[str, float]:
    acc, loss = evaluate_metrics(model, make_loader(data, 256, False, 0), torch.device("cpu"))
    return {"accuracy": acc, "perplexity": math.exp(loss)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pretrain-epochs", type=int, default=6)
    p.add_argument("--search-epochs", type=int, default=2)
    p.add_argument("--finetune-epochs", type=int, default=2)
    p.add_argument("--weight-group", type=int, default=32)
    p.add_argument("--budget-bits", nargs="+", type=int, default=[4, 2], help="SBS at the memory of uniform B-bit")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out-dir", default="runs/bench_weight_only_lm")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, val, test, geometry = _splits()
    t0 = time.perf_counter()
    fp_path = out / "fp_gpt_tiny.pt"
    if not fp_path.is_file():
        torch.manual_seed(0)
        fp = build_model("gpt_tiny", **geometry)
        _train(fp, train, args.pretrain_epochs, LR, 0)
        torch.save(fp.state_dict(), fp_path)
    fp_state = torch.load(fp_path, weights_only=True)
    fp = build_model("gpt_tiny", **geometry)
    fp.load_state_dict(fp_state)
    rows: list[dict[str, Any]] = [{"method": "fp32", "seed": 0, **_metrics(fp, test)}]
    size = build_cost_model("size")
    a100 = cost_model_for("a100")
    common = dict(hw="a100", cost="size", weight_only=True, weight_group=args.weight_group, pretrain_epochs=0)
    for seed in args.seeds:
        searched: dict[str, CompressionConfig] = {}
        for bits in sorted({8, *args.budget_bits}, reverse=True):
            r = hwsbs.search(
                fp, train, val, method="uniform", uniform_bits=bits, search_epochs=0, finetune_epochs=0,
                seed=seed, out=str(out / f"seed{seed}" / f"uniform{bits}"), factory="gpt_tiny", **common,
            )  # fmt: skip
            searched[f"uniform{bits}"] = r.config
        for bits in args.budget_bits:
            r = hwsbs.search(
                fp, train, val, method="sbs", target=searched[f"uniform{bits}"].cost(size),
                search_epochs=args.search_epochs, finetune_epochs=0, seed=seed,
                out=str(out / f"seed{seed}" / f"sbs@u{bits}"), factory="gpt_tiny", **common,
            )  # fmt: skip
            searched[f"sbs@u{bits}"] = r.config
        for label, config in searched.items():
            example = next(iter(make_loader(train, 2, False, 0)))[0]
            model = build_model("gpt_tiny", **geometry)
            model.load_state_dict(fp_state)
            compressed = build_compressed_model(model, config, example)
            _train(compressed, train, args.finetune_epochs, LR * FINETUNE_LR_FACTOR, seed)
            row = {
                "method": label,
                "seed": seed,
                **_metrics(compressed, test),
                "val": _metrics(compressed, val),
                "size_bits": config.cost(size),
                "a100_latency_s": config.cost(a100),
                "w_bits": [d.w_bits for d in config.layers if d.shape.kind != "matmul"],
            }
            rows.append(row)
            print(
                f"seed {seed} {label:9s} test acc {row['accuracy']:.4f} ppl {row['perplexity']:.3f} "
                f"size {row['size_bits'] / 8e3:.1f} kB ({time.perf_counter() - t0:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    summary: dict[str, Any] = {}
    labels = ["uniform8"] + [f"{m}{b}" for b in args.budget_bits for m in ("uniform", "sbs@u")]
    for label in labels:
        got = [r for r in rows if r["method"] == label]
        summary[label] = {
            key: {"mean": statistics.mean(r[key] for r in got), "std": statistics.pstdev(r[key] for r in got)}
            for key in ("accuracy", "perplexity", "size_bits", "a100_latency_s")
        }
    doc = {
        "benchmark": "weight_only_lm",
        "machine": machine_info("cpu", args.threads),
        "protocol": vars(args),
        "fp32": rows[0],
        "summary": summary,
        "rows": rows,
        "seconds": time.perf_counter() - t0,
    }
    text = json.dumps(doc, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
