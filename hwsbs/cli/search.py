"""``hwsbs search``: one SBS search (or baseline) from the command line."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.table import Table

from hwsbs.config import SearchConfig, parse_target
from hwsbs.errors import ConfigError
from hwsbs.methods import list_methods
from hwsbs.pipeline import run_search
from hwsbs.progress import console
from hwsbs.result import SearchResult

__all__ = ["add_parser", "add_search_options", "config_from_args", "print_summary"]


def _bits(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.replace(" ", "").split(",") if t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 2,4,8, got {text!r}") from None


def add_search_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``search`` and the Optuna commands (their inner searches)."""
    d = SearchConfig()
    g = p.add_argument_group("what and where")
    g.add_argument("--model", default=d.model, help="built-in model or package.module:factory (default: %(default)s)")
    g.add_argument(
        "--data",
        default=d.data,
        help="dataset: digits (built in), cifar10, cifar100, imagefolder (default: %(default)s)",
    )
    g.add_argument("--data-dir", default=None, help="directory of a file-based dataset")
    g.add_argument("--subset", type=int, default=None, help="use at most N training samples")
    g.add_argument("--workers", type=int, default=d.workers, help="DataLoader workers (default: %(default)s)")
    g.add_argument("--checkpoint", default=None, help="trained full-precision state_dict; skips pretraining")
    g.add_argument("--cost", default=None, help="cost model overriding the profile's default")
    g = p.add_argument_group("search space and objective")
    g.add_argument("--bits", type=_bits, default=d.bits, help="candidate bit widths, doubling (default: 2,4,8)")
    g.add_argument(
        "--lambda", dest="lam", type=float, default=d.lam, help="weight of log-cost in the loss (default: %(default)s)"
    )
    g.add_argument("--target", default=None, help="cost budget: absolute (2.5e9) or share of uniform 8-bit (30%%)")
    g.add_argument(
        "--temperature", type=float, default=d.temperature, help="gate surrogate temperature (default: %(default)s)"
    )
    g.add_argument(
        "--group-size", type=int, default=d.group_size, help="channels per pruning group (default: %(default)s)"
    )
    g.add_argument(
        "--max-prune-fraction",
        type=float,
        default=d.max_prune_fraction,
        help="cap on pruned groups per layer (default: %(default)s)",
    )
    g.add_argument("--no-prune", dest="prune", action="store_false", help="search bit widths only")
    g.add_argument(
        "--no-pin-first-last", dest="pin_first_last", action="store_false", help="search the first and last layers too"
    )
    g.add_argument(
        "--pin-bits", type=int, default=d.pin_bits, help="bits of the pinned first/last layers (default: %(default)s)"
    )
    g.add_argument(
        "--cost-batch", type=int, default=d.cost_batch, help="batch size the cost is priced at (default: %(default)s)"
    )
    g = p.add_argument_group("schedule")
    g.add_argument(
        "--pretrain-epochs", type=int, default=d.pretrain_epochs, help="full-precision epochs (default: %(default)s)"
    )
    g.add_argument("--search-epochs", type=int, default=d.search_epochs, help="search epochs (default: %(default)s)")
    g.add_argument(
        "--finetune-epochs", type=int, default=d.finetune_epochs, help="fine-tuning epochs (default: %(default)s)"
    )
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="(default: %(default)s)")
    g.add_argument(
        "--lr", type=float, default=d.lr, help="SGD lr for pretraining and fine-tuning (default: %(default)s)"
    )
    g.add_argument(
        "--search-lr", type=float, default=d.search_lr, help="SGD lr for weights in the search (default: %(default)s)"
    )
    g.add_argument(
        "--threshold-lr",
        type=float,
        default=d.threshold_lr,
        help="SGD lr for gate thresholds, in units of the cost gradient's RMS (default: %(default)s)",
    )
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="(default: %(default)s)")
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=d.seed, help="seeds every random source (default: %(default)s)")
    g.add_argument("--device", default=d.device, help="torch device (default: %(default)s)")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def config_from_args(args: argparse.Namespace, **overrides) -> SearchConfig:
    """A validated :class:`SearchConfig` from parsed arguments."""
    target, fraction = parse_target(args.target) if args.target is not None else (None, None)
    values = dict(
        hw=getattr(args, "hw", None) or "a100",
        cost=args.cost,
        model=args.model,
        data=args.data,
        data_dir=args.data_dir,
        subset=args.subset,
        workers=args.workers,
        checkpoint=args.checkpoint,
        bits=args.bits,
        lam=args.lam,
        target=target,
        target_fraction=fraction,
        temperature=args.temperature,
        group_size=args.group_size,
        max_prune_fraction=args.max_prune_fraction,
        prune=args.prune,
        pin_first_last=args.pin_first_last,
        pin_bits=args.pin_bits,
        cost_batch=args.cost_batch,
        pretrain_epochs=args.pretrain_epochs,
        search_epochs=args.search_epochs,
        finetune_epochs=args.finetune_epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        search_lr=args.search_lr,
        threshold_lr=args.threshold_lr,
        weight_decay=args.weight_decay,
        seed=args.seed,
        device=args.device,
        progress=args.progress,
    )
    values.update(overrides)
    return SearchConfig(**values)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "search",
        help="search per-layer bits and pruning for a model on a device",
        description="Train full precision, search with SBS, fine-tune, evaluate.",
    )
    p.add_argument("--hw", required=True, help="hardware profile: built-in name (a100) or YAML path")
    p.add_argument("--method", default="sbs", help=f"search method: {', '.join(list_methods())} (default: %(default)s)")
    p.add_argument(
        "--uniform-bits", type=int, default=None, help="bit width for --method uniform (default: the widest of --bits)"
    )
    p.add_argument(
        "--init",
        default="8bit",
        choices=("8bit", "ilp"),
        help="where SBS's gates start: 8bit (every gate open, the paper) or ilp (the sensitivity + integer-program "
        "configuration, then searched further) (default: %(default)s)",
    )
    p.add_argument("--out", default=None, help="run directory (default: runs/<timestamp>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out (default: the newest in runs/)")
    p.add_argument("--json", action="store_true", help="print result.json to stdout")
    add_search_options(p)
    p.set_defaults(handler=_handle)


def _newest_run() -> str:
    runs = sorted(
        (d for d in Path("runs").glob("*") if (d / "checkpoint.pt").exists()), key=lambda d: d.stat().st_mtime
    )
    if not runs:
        raise ConfigError("--resume: no run with a checkpoint in runs/; pass --out RUN_DIR")
    return str(runs[-1])


def print_summary(result: SearchResult) -> None:
    """The per-layer table and the headline numbers, on the terminal."""
    table = Table(title=f"{result.method} on {result.hardware} — cost model {result.cost_model} ({result.unit})")
    for col in ("layer", "w bits", "a bits", "channels kept", "cost", "share"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    total = result.cost["compressed"] or 1.0
    for layer in result.layers:
        table.add_row(
            layer["name"],
            str(layer["w_bits"]),
            str(layer["a_bits"]),
            f"{layer['kept_out_channels']}/{layer['out_channels']}",
            f"{layer['cost']:.4g}",
            f"{100 * layer['cost'] / total:.1f}%",
        )
    console.print(table)
    c, a = result.cost, result.accuracy
    console.print(
        f"full precision: acc {a['full_precision']:.4f}, cost {c['full_precision']:.4g} {result.unit} | "
        f"uniform 8-bit: cost {c['uniform_8bit']:.4g} {result.unit}"
    )
    b = result.budget
    if b is not None and not b["met"]:
        why = (
            f"unreachable: the cheapest configuration of this search space costs {b['floor']:.4g} {result.unit}"
            if not b["reachable"]
            else "missed"
        )
        console.print(f"[bold yellow]budget {b['target']:.4g} {result.unit} not met ({why})[/]")
    console.print(f"artefacts: {result.run_dir}/ (result.json, config.yaml, layers.png)")


def _handle(args: argparse.Namespace) -> int:
    out = args.out
    if args.resume and out is None:
        out = _newest_run()
    cfg = config_from_args(
        args, method=args.method, uniform_bits=args.uniform_bits, init=args.init, out=out, resume=args.resume
    )
    started = time.perf_counter()
    result = run_search(cfg)
    print_summary(result)
    c, a = result.cost, result.accuracy
    ratio = c["uniform_8bit"] / c["compressed"] if c["compressed"] else float("inf")
    line = (
        f"hwsbs: {result.hardware}/{result.cost_model}: accuracy {a['compressed']:.4f} "
        f"(full precision {a['full_precision']:.4f}), cost {c['compressed']:.4g} {result.unit} "
        f"= {ratio:.2f}x cheaper than uniform 8-bit, in {time.perf_counter() - started:.0f} s"
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        console.print(line)
    else:
        print(line)
    return 0
