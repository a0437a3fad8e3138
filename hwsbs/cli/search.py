"""``hwsbs search``: one SBS search (or baseline) from the command line."""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

from rich.table import Table

from hwsbs.config import SBS_COMPLETIONS, SearchConfig, parse_target
from hwsbs.distributed import is_main
from hwsbs.errors import ConfigError
from hwsbs.methods import list_methods
from hwsbs.pipeline import run_search
from hwsbs.progress import console
from hwsbs.quant.compiled import compile_quantizers
from hwsbs.result import SearchResult
from hwsbs.sbs.channel_config import show_w_bits

__all__ = ["add_parser", "add_search_options", "config_from_args", "print_summary"]


def _bits(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.replace(" ", "").split(",") if t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 2,4,8, got {text!r}") from None


def add_search_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``search`` and the Optuna commands (their inner searches)."""
    d = SearchConfig()

    def option(g: argparse._ArgumentGroup, flag: str, kind: type, text: str = "", dest: str | None = None) -> None:
        """``flag`` setting the SearchConfig field ``dest`` (default: named as the flag), which is
        also its default; --help shows ``text`` and the default."""
        name = dest or flag.removeprefix("--").replace("-", "_")
        shown = f"{text} (default: %(default)s)" if text else "(default: %(default)s)"
        g.add_argument(flag, dest=name, type=kind, default=getattr(d, name), help=shown)

    g = p.add_argument_group("what and where")
    option(g, "--model", str, "built-in model or package.module:factory")
    option(g, "--data", str, "dataset: digits (built in), cifar10, cifar100, imagefolder")
    g.add_argument("--data-dir", default=None, help="directory of a file-based dataset")
    g.add_argument("--subset", type=int, default=None, help="use at most N training samples")
    option(g, "--workers", int, "DataLoader workers")
    g.add_argument("--checkpoint", default=None, help="trained full-precision state_dict; skips pretraining")
    g.add_argument("--cost", default=None, help="cost model overriding the profile's default")
    g = p.add_argument_group("search space and objective")
    g.add_argument("--bits", type=_bits, default=d.bits, help="candidate bit widths, doubling (default: 2,4,8)")
    option(g, "--lambda", float, "weight of log-cost in the loss", dest="lam")
    g.add_argument("--target", default=None, help="cost budget: absolute (2.5e9) or share of uniform 8-bit (30%%)")
    option(g, "--temperature", float, "gate surrogate temperature")
    option(g, "--group-size", int, "channels per pruning group")
    option(g, "--granularity", str, "weight bits per layer, or per output-channel group (channel)")
    option(g, "--max-prune-fraction", float, "cap on pruned groups per layer")
    g.add_argument("--no-prune", dest="prune", action="store_false", help="search bit widths only")
    g.add_argument(
        "--curvature",
        action="store_true",
        help="SBS gates also see the Fisher curvature of each flip (prices low widths the first-order gradient misses)",
    )
    g.add_argument(
        "--flip-probe",
        type=int,
        default=d.flip_probe,
        metavar="N",
        help="SBS bit gates learn from loss differences measured every N steps, not the linear gradient (0: off)",
    )
    g.add_argument(
        "--weight-only",
        action="store_true",
        help="search weight bits only; activations stay float at --act-float-bits (LLM practice)",
    )
    option(g, "--act-float-bits", int, "with --weight-only: float width of activations, 16 or 32")
    g.add_argument(
        "--weight-group",
        type=int,
        default=d.weight_group,
        help="weights per FP16 scale along the input dimension, e.g. 128 (default: 0, one clip per layer)",
    )
    g.add_argument(
        "--no-pin-first-last", dest="pin_first_last", action="store_false", help="search the first and last layers too"
    )
    option(g, "--pin-bits", int, "bits of the pinned first/last layers")
    option(g, "--cost-batch", int, "batch size the cost is priced at")
    g = p.add_argument_group("schedule")
    option(g, "--pretrain-epochs", int, "full-precision epochs")
    option(g, "--search-epochs", int, "search epochs")
    option(g, "--finetune-epochs", int, "fine-tuning epochs")
    option(g, "--batch-size", int)
    option(g, "--lr", float, "SGD lr for pretraining and fine-tuning")
    option(g, "--search-lr", float, "SGD lr for weights in the search")
    option(g, "--threshold-lr", float, "SGD lr for gate thresholds, in units of the cost gradient's RMS")
    option(g, "--weight-decay", float)
    g = p.add_argument_group("run")
    option(g, "--seed", int, "seeds every random source")
    option(g, "--device", str, "torch device")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    g.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=d.compile,
        help="torch.compile the quantiser kernels; falls back to eager without a compiler (default: off)",
    )


#: The options of :func:`add_search_options`, by group, whose dest names the SearchConfig field they
#: set, value unchanged (``--target`` is parsed first; each command has its own ``--hw``).
_FIELD_OPTIONS = (
    ("cost", "model", "data", "data_dir", "subset", "workers", "checkpoint"),
    ("bits", "lam", "temperature", "group_size", "max_prune_fraction", "prune", "weight_only", "act_float_bits"),
    ("weight_group", "curvature", "flip_probe", "pin_first_last", "pin_bits", "cost_batch", "granularity"),
    ("pretrain_epochs", "search_epochs", "finetune_epochs", "batch_size", "lr", "search_lr", "threshold_lr"),
    ("weight_decay", "seed", "device", "progress", "compile"),
)


def config_from_args(args: argparse.Namespace, **overrides) -> SearchConfig:
    """A validated :class:`SearchConfig` from parsed arguments."""
    target, fraction = parse_target(args.target) if args.target is not None else (None, None)
    values = {name: getattr(args, name) for group in _FIELD_OPTIONS for name in group}
    values.update(hw=getattr(args, "hw", None) or "a100", target=target, target_fraction=fraction)
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
    p.add_argument(
        "--completion",
        default="ilp",
        choices=SBS_COMPLETIONS,
        help="when no configuration of SBS's last epoch fits --target: ilp (the least-sensitive assignment at or "
        "below the search's choice, on the searched weights), ilp-widths (only the widths are ceilings) or greedy (largest cost saving first) "
        "(default: %(default)s)",
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
            show_w_bits(layer["w_bits"]),
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
    if result.coverage is not None:
        left = result.coverage.get("float_compute") or []
        console.print(
            f"coverage: {result.coverage['coverage']:.1%} of the model's MACs quantised and priced"
            + (f"; left in float: {', '.join(left[:5])}" if left else "")
        )
    if result.perplexity is not None:  # a language model: accuracy is next-token accuracy
        console.print(f"compressed: next-token accuracy {a['compressed']:.4f}, perplexity {result.perplexity:.4g}")
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
        args,
        method=args.method,
        uniform_bits=args.uniform_bits,
        init=args.init,
        completion=args.completion,
        out=out,
        resume=args.resume,
    )
    started = time.perf_counter()
    compile_quantizers(cfg.compile)  # a process-wide switch the quantiser layers read
    if not is_main():  # another rank of a torchrun job: rank 0 prints and writes
        warnings.simplefilter("ignore")
    result = run_search(cfg)
    if not is_main():
        return 0
    print_summary(result)
    c, a = result.cost, result.accuracy
    ratio = c["uniform_8bit"] / c["compressed"] if c["compressed"] else float("inf")
    line = (
        f"hwsbs: {result.hardware}/{result.cost_model}: accuracy {a['compressed']:.4f} "
        f"(full precision {a['full_precision']:.4f}), cost {c['compressed']:.4g} {result.unit} "
        f"= {ratio:.2f}x cheaper than uniform 8-bit, in {time.perf_counter() - started:.0f} s"
    )
    if result.perplexity is not None:
        line += f", perplexity {result.perplexity:.4g}"
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        console.print(line)
    else:
        print(line)
    return 0
