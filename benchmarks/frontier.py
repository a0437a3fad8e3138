"""A fair accuracy-cost frontier: ResNet-20 on CIFAR-10, every method at the same costs.

Protocol (the paper's, made explicit):

1. **Splits.** From the CIFAR-10 JPEG archive: ``--train-per-class`` training images and
   ``--val-per-class`` held-out validation images, both from the archive's *training* split, and
   ``--test-per-class`` images of its *test* split (``0`` = all 1,000 per class). Every choice a
   method makes (random/Optuna candidates, everything the pipeline reports) sees the validation
   split only; the test split is read once per fine-tuned model, for the table.
2. **One full-precision ResNet-20** is trained once (``--pretrain-epochs``) and every method starts
   from it.
3. **Search** (``finetune_epochs=0``), each run in its own process so its wall time and peak
   resident memory are its own: SBS, ILP (sensitivity + integer program), random, Optuna and
   multipath, each with ``--target`` at the same absolute BOPs budgets: the cost of uniform 4-bit
   (``u4``), of uniform 2-bit (``u2``) and below it (``u2x0.75``: three quarters of uniform 2-bit, reachable
   only by pruning). SBS also runs with ``--max-prune-fraction`` swept.
4. **Fine-tune** every configuration, uniform 2/4/8 included, with one identical schedule
   (``--finetune-epochs``, SGD, cosine, lr 0.01) from the same full-precision weights; SBS also
   from its own searched weights (``sbs-searched``), as the paper does.
5. ``--seeds`` seeds (search and fine-tune data order); mean and standard deviation per row.

Usage (the CPU schedule recorded in BENCHMARKS.md)::

    .venv/bin/python benchmarks/frontier.py --seeds 0 1 2 --json benchmarks/results/frontier.json \
        --png benchmarks/results/frontier.png

Finished runs in ``--out-dir`` are read back, so an interrupted benchmark continues.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from cost_models import build_cost_model, cost_model_for
from hwsbs.checkpoint import load_checkpoint
from hwsbs.config import SearchConfig
from hwsbs.data import build_dataset, ensure_cifar10_jpeg, find_cifar10_archive, make_loader
from hwsbs.models import build_model
from hwsbs.pipeline import build_compressed_model, run_search
from hwsbs.progress import PhaseProgress
from hwsbs.sbs.config_io import CompressionConfig, LayerDecision, load_config
from hwsbs.sbs.convert import searchable_shapes
from hwsbs.training import evaluate, make_sgd, split_decay, train_epoch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from search_overhead import add_output_options, machine_info  # noqa: E402

__all__ = [
    "Job",
    "Setup",
    "plan",
    "prepare_splits",
    "setup",
    "cached_accuracies",
    "add_protocol_arguments",
    "schedule",
    "main",
]

FINETUNE_LR = 0.01  # the pipeline's fine-tuning rate (a fifth of training's 0.05)
BUDGETS = ("u4", "u2", "u2x0.75")
FLIP_PROBE_EVERY = 10  # sbs-flip: measure every 10 search steps (about 9 times in the 94-step search)


@dataclass
class Job:
    """One search of the frontier (uniform rows have nothing to search)."""

    label: str  # row name, e.g. "sbs@u4"
    method: str  # --method
    budget: str | None  # one of BUDGETS; None for uniform
    options: dict[str, Any] = field(default_factory=dict)  # SearchConfig overrides


def plan(methods: list[str], prune_fractions: list[float], budgets: tuple[str, ...] = BUDGETS) -> list[Job]:
    """The searches: every method at every budget, SBS also with its pruning cap swept."""
    jobs: list[Job] = []
    for m in methods:
        if m == "uniform":
            jobs += [Job(f"uniform{b}", "uniform", None, {"uniform_bits": b}) for b in (8, 4, 2)]
            continue
        if m == "sbs-curv":  # SBS whose gates also see each flip's Fisher curvature (--curvature)
            jobs += [Job(f"sbs-curv@{b}", "sbs", b, {"curvature": True}) for b in budgets]
            continue
        if m == "sbs-flip":  # SBS whose bit gates learn from measured flip differences (--flip-probe)
            jobs += [Job(f"sbs-flip@{b}", "sbs", b, {"flip_probe": FLIP_PROBE_EVERY}) for b in budgets]
            continue
        if m == "sbs-greedy":  # SBS completed by the loss-blind greedy descent (--completion greedy)
            jobs += [Job(f"sbs-greedy@{b}", "sbs", b, {"completion": "greedy"}) for b in budgets]
            continue
        if m == "sbs-iw":  # SBS completed under width ceilings only, pruning the program's
            jobs += [Job(f"sbs-iw@{b}", "sbs", b, {"completion": "ilp-widths"}) for b in budgets]
            continue
        if m == "sbs-flip-iw":
            opts = {"flip_probe": FLIP_PROBE_EVERY, "completion": "ilp-widths"}
            jobs += [Job(f"sbs-flip-iw@{b}", "sbs", b, opts) for b in budgets]
            continue
        if m == "sbs-flip-greedy":  # the same, with measured flip differences
            opts = {"flip_probe": FLIP_PROBE_EVERY, "completion": "greedy"}
            jobs += [Job(f"sbs-flip-greedy@{b}", "sbs", b, opts) for b in budgets]
            continue
        if m == "sbs-ilp":  # SBS started from the integer program's configuration (--init ilp)
            jobs += [Job(f"sbs-ilp@{b}", "sbs", b, {"init": "ilp"}) for b in budgets]
            continue
        jobs += [Job(f"{m}@{b}", m, b) for b in (budgets if m in ("sbs", "ilp") else ("u4",))]
        if m == "sbs" and "u2x0.75" in budgets:
            jobs += [Job(f"sbs@u2x0.75-mpf{f:g}", m, "u2x0.75", {"max_prune_fraction": f}) for f in prune_fractions]
    return jobs


def prepare_splits(root: Path, out: Path, train: int, val: int, test: int) -> tuple[Path, Path]:
    """Symlinked ImageFolder trees: ``search/{train,val}`` and ``eval/{train,test}``."""
    search, ev = out / "search", out / "eval"
    if (ev / "test").is_dir():
        return search, ev
    for cls in sorted(p.name for p in (root / "train").iterdir()):
        files = sorted((root / "train" / cls).iterdir())
        tests = sorted((root / "test" / cls).iterdir())
        picks = {
            search / "train": files[:train],
            search / "val": files[train : train + val],
            ev / "test": tests if test == 0 else tests[:test],
        }
        for split, chosen in picks.items():
            (split / cls).mkdir(parents=True, exist_ok=True)
            for f in chosen:
                (split / cls / f.name).symlink_to(f.resolve())
    (ev / "train").symlink_to((search / "train").resolve())  # class names only
    return search, ev


def pretrain(model_name: str, search_dir: Path, epochs: int, path: Path) -> None:
    """The shared full-precision model (seed 0), trained on the search training split."""
    if path.is_file():
        return
    bundle = build_dataset("imagefolder", search_dir, None, 0)
    torch.manual_seed(0)
    model = build_model(model_name, bundle.num_classes, bundle.in_channels, bundle.image_size)
    opt = make_sgd(*split_decay(model), 0.05, 5e-4)
    steps = epochs * len(make_loader(bundle.train, 64, True, 0))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    for epoch in range(epochs):
        loss = train_epoch(
            model,
            make_loader(bundle.train, 64, True, epoch),
            opt,
            sched,
            torch.device("cpu"),
            PhaseProgress(False),
            "pretrain",
        )
        print(f"pretrain epoch {epoch + 1}/{epochs}: loss {loss:.4f}", file=sys.stderr, flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)


def budget_costs(fp: torch.nn.Module, example: torch.Tensor) -> dict[str, float]:
    """Absolute BOPs of each budget name (first and last layers at 8 bits)."""
    order, shapes = searchable_shapes(fp, example)
    bops = build_cost_model("bops")

    def uniform(bits: int) -> float:
        return CompressionConfig(
            [
                LayerDecision(
                    shapes[n], 8 if n in (order[0], order[-1]) else bits, 8 if n in (order[0], order[-1]) else bits
                )
                for n in order
            ]
        ).cost(bops)

    return {"u4": uniform(4), "u2": uniform(2), "u2x0.75": 0.75 * uniform(2)}


def _search(config: dict[str, Any]) -> dict[str, float]:
    """Run in a child process: one search, its wall time and the process's peak memory."""
    torch.set_num_threads(int(os.environ.get("FRONTIER_THREADS", "2")))
    t0 = time.perf_counter()
    run_search(SearchConfig(**config))
    return {"search_s": time.perf_counter() - t0, "peak_rss_mb": _peak_rss_mb()}


def _peak_rss_mb() -> float:
    """This process's resident high-water mark (VmHWM: reset by exec, unlike ru_maxrss)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def search(job: Job, base: dict[str, Any], target: float | None, seed: int, run_dir: Path) -> dict[str, float]:
    done = run_dir / "search.json"
    if done.is_file():
        return json.loads(done.read_text())
    shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted search starts again
    opts = {**base, **job.options, "method": job.method, "seed": seed, "out": str(run_dir), "finetune_epochs": 0}
    if job.method == "uniform":
        opts["search_epochs"] = 0
    if target is not None:
        opts["target"] = target
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        stats = pool.submit(_search, opts).result()
    done.write_text(json.dumps(stats))
    return stats


def finetune(
    model_name: str,
    fp_state: dict,
    config: CompressionConfig,
    init: dict | None,
    seed: int,
    epochs: int,
    search_dir: Path,
    eval_dir: Path,
) -> tuple[float, float]:
    """The identical schedule for every configuration; returns (validation, test) accuracy."""
    model, val, test = finetune_model(model_name, fp_state, config, init, seed, epochs, search_dir, eval_dir)
    cpu = torch.device("cpu")
    return evaluate(model, val, cpu), evaluate(model, test, cpu)


def finetune_model(
    model_name: str,
    fp_state: dict,
    config: CompressionConfig,
    init: dict | None,
    seed: int,
    epochs: int,
    search_dir: Path,
    eval_dir: Path,
) -> tuple[torch.nn.Module, Any, Any]:
    """:func:`finetune`'s schedule; returns the fine-tuned model and the validation and test loaders."""
    torch.manual_seed(seed)  # before building: calibration samples activations with the global RNG
    random.seed(seed)
    bundle = build_dataset("imagefolder", search_dir, None, 0)
    test = build_dataset("imagefolder", eval_dir, None, 0, augment=False).val
    fp = build_model(model_name, bundle.num_classes, bundle.in_channels, bundle.image_size)
    fp.load_state_dict(fp_state)
    example = next(iter(make_loader(bundle.train, 64, True, 0)))[0]
    model = build_compressed_model(fp, config, example)
    if init is not None:
        model.load_state_dict(init)
    opt = make_sgd(*split_decay(model), FINETUNE_LR, 5e-4)
    steps = epochs * len(make_loader(bundle.train, 64, True, 0))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    torch.manual_seed(seed)
    for epoch in range(epochs):
        if hasattr(bundle.train, "reseed"):  # the augmentation stream restarts per (seed, epoch)
            bundle.train.reseed(seed * 1000 + epoch)
        train_epoch(
            model,
            make_loader(bundle.train, 64, True, seed * 1000 + epoch),
            opt,
            sched,
            torch.device("cpu"),
            PhaseProgress(False),
            "finetune",
        )
    return model, make_loader(bundle.val, 256, False, 0), make_loader(test, 256, False, 0)


def _row(
    label: str, method: str, config: CompressionConfig, accs: tuple[float, float], stats: dict[str, float]
) -> dict[str, Any]:
    searchable = config.layers[1:-1]
    return {
        "label": label,
        "method": method,
        "val_accuracy": accs[0],
        "test_accuracy": accs[1],
        "bops": config.cost(build_cost_model("bops")),
        "a100_s": config.cost(cost_model_for("a100")),
        "bismo_s": config.cost(cost_model_for("bismo")),
        "mean_w_bits": sum(d.w_bits for d in searchable) / len(searchable),
        "mean_a_bits": sum(d.a_bits for d in searchable) / len(searchable),
        "kept_channel_share": sum(d.kept_out for d in config.layers) / sum(d.shape.out_channels for d in config.layers),
        **stats,
    }


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds, per label."""
    out = []
    for label in dict.fromkeys(r["label"] for r in rows):
        group = [r for r in rows if r["label"] == label]
        entry: dict[str, Any] = {"label": label, "method": group[0]["method"], "seeds": len(group)}
        for key in (
            "test_accuracy",
            "val_accuracy",
            "bops",
            "a100_s",
            "bismo_s",
            "search_s",
            "peak_rss_mb",
            "kept_channel_share",
        ):
            values = [r[key] for r in group if key in r]
            if values:
                entry[key] = statistics.fmean(values)
                entry[key + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append(entry)
    return out


def markdown(summary: list[dict[str, Any]], fp_bops: float) -> str:
    lines = [
        "| configuration | test top-1 (mean +- std) | val top-1 | MBOPs | x fewer than FP | a100 (us) | bismo (ms) "
        "| kept ch. | search (s) | peak RSS (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summary:
        lines.append(
            f"| {s['label']} | {100 * s['test_accuracy']:.2f} +- {100 * s['test_accuracy_std']:.2f} | "
            f"{100 * s['val_accuracy']:.2f} | {s['bops'] / 1e6:.1f} | {fp_bops / s['bops']:.1f} | "
            f"{s['a100_s'] * 1e6:.3f} | {s['bismo_s'] * 1e3:.3f} | {s['kept_channel_share']:.2f} | "
            f"{s.get('search_s', 0):.0f} | {s.get('peak_rss_mb', 0):.0f} |"
        )
    return "\n".join(lines)


def plot(model_name: str, summary: list[dict[str, Any]], fp_acc: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markers = {
        "sbs": "o",
        "sbs-searched": "*",
        "sbs-ilp": "v",
        "sbs-flip": "h",
        "sbs-flip-searched": "H",
        "sbs-ilp-searched": "<",
        "sbs-greedy-searched": "1",
        "sbs-iw-searched": "3",
        "sbs-flip-iw-searched": "4",
        "sbs-flip-greedy-searched": "2",
        "ilp": "P",
        "uniform": "^",
        "random": "x",
        "optuna": "D",
        "multipath": "s",
    }
    fig, ax = plt.subplots(figsize=(8, 5))
    for method, marker in markers.items():
        pts = sorted(
            (s["bops"], s["test_accuracy"], s["test_accuracy_std"], s["label"])
            for s in summary
            if s["method"] == method
        )
        if pts:
            ax.errorbar(
                [p[0] for p in pts],
                [p[1] for p in pts],
                yerr=[p[2] for p in pts],
                marker=marker,
                linestyle="none",
                label=method,
                capsize=3,
            )
    ax.axhline(fp_acc, color="grey", linestyle=":", label="full precision")
    ax.set_xscale("log")
    ax.set_xlabel("BOPs")
    ax.set_ylabel("test top-1 (mean +- std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{model_name} / CIFAR-10: every configuration fine-tuned with one schedule")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--methods", nargs="+", default=["uniform", "sbs", "ilp", "random", "optuna", "multipath", "sbs-ilp"]
    )
    p.add_argument(
        "--prune-fractions",
        nargs="+",
        type=float,
        default=[0.75],
        help="extra SBS runs at u2x0.75 with these --max-prune-fraction values (the default run uses 0.5)",
    )
    p.add_argument("--model", default="resnet20", help="built-in model (resnet20, vit_tiny, ...)")
    p.add_argument(
        "--budgets", nargs="+", choices=BUDGETS, default=list(BUDGETS), help="the budgets every method searches at"
    )
    add_protocol_arguments(p)
    add_output_options(p, "frontier", "frontier")
    return p


#: The protocol's options (:func:`add_protocol_arguments`), recorded in every report's ``schedule``.
PROTOCOL_KEYS = (
    "train_per_class",
    "val_per_class",
    "test_per_class",
    "pretrain_epochs",
    "search_epochs",
    "finetune_epochs",
    "seeds",
    "threads",
)


def add_protocol_arguments(p: argparse.ArgumentParser) -> None:
    """The splits, schedule and seeds every frontier-style benchmark shares (the CPU schedule)."""
    p.add_argument("--train-per-class", type=int, default=300)
    p.add_argument("--val-per-class", type=int, default=50)
    p.add_argument("--test-per-class", type=int, default=200, help="0 = the whole test split")
    p.add_argument("--pretrain-epochs", type=int, default=15)
    p.add_argument("--search-epochs", type=int, default=2)
    p.add_argument("--finetune-epochs", type=int, default=2)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])


def schedule(args: argparse.Namespace, *extra: str) -> dict[str, Any]:
    """The report's ``schedule``: the protocol's options and ``extra`` ones, as given."""
    return {k: getattr(args, k) for k in (*PROTOCOL_KEYS, *extra)}


@dataclass
class Setup:
    """What every row of a frontier-style benchmark starts from (frontier.py, apb_compare.py)."""

    out: Path  # --out-dir: splits, the FP model and every run
    search_dir: Path  # ImageFolder train/val the searches and fine-tunes see
    eval_dir: Path  # ImageFolder with the test split, read only for the table
    fp_state: dict  # the shared full-precision ResNet's state_dict
    fp: torch.nn.Module  # that model, built and loaded
    fp_acc: float  # its test accuracy
    test_images: int  # size of the test split
    example: torch.Tensor  # one training batch (shapes for budgets)
    base: dict[str, Any]  # SearchConfig options every search shares
    t0: float  # perf_counter at the start, for progress lines


def setup(args: argparse.Namespace) -> Setup:
    """Threads, splits, the shared FP model (trained once) and the common search options."""
    torch.set_num_threads(args.threads)
    os.environ["FRONTIER_THREADS"] = str(args.threads)  # the search children read it
    out = Path(args.out_dir)
    search_dir, eval_dir = prepare_splits(
        ensure_cifar10_jpeg(find_cifar10_archive()),
        out / "data",
        args.train_per_class,
        args.val_per_class,
        args.test_per_class,
    )
    fp_path = out / f"fp_{args.model}.pt"
    t0 = time.perf_counter()
    pretrain(args.model, search_dir, args.pretrain_epochs, fp_path)
    fp_state = torch.load(fp_path, weights_only=True)
    bundle = build_dataset("imagefolder", search_dir, None, 0)
    fp = build_model(args.model, bundle.num_classes, bundle.in_channels, bundle.image_size)
    fp.load_state_dict(fp_state)
    test = build_dataset("imagefolder", eval_dir, None, 0, augment=False).val
    fp_acc = evaluate(fp, make_loader(test, 256, False, 0), torch.device("cpu"))
    example = next(iter(make_loader(bundle.train, 64, True, 0)))[0]
    base = dict(
        model=args.model,
        data="imagefolder",
        data_dir=str(search_dir),
        checkpoint=str(fp_path),
        pretrain_epochs=0,
        search_epochs=args.search_epochs,
        hw="a100",
        cost="bops",
        progress=False,
    )
    return Setup(out, search_dir, eval_dir, fp_state, fp, fp_acc, len(test), example, base, t0)


def cached_accuracies(cache: Path, run: Any, *run_args: Any) -> tuple[float, float]:
    """(validation, test) accuracy of one fine-tune: ``run(*run_args)`` once, read back after."""
    if not cache.is_file():
        cache.write_text(json.dumps(run(*run_args)))
    val, test = json.loads(cache.read_text())
    return val, test


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    st = setup(args)
    out, fp_state, search_dir, eval_dir, base, t0 = st.out, st.fp_state, st.search_dir, st.eval_dir, st.base, st.t0
    targets = budget_costs(st.fp, st.example)
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        for job in plan(args.methods, args.prune_fractions, tuple(args.budgets)):
            run_dir = out / f"seed{seed}" / job.label
            stats = search(job, base, targets.get(job.budget) if job.budget else None, seed, run_dir)
            config = load_config(run_dir / "config.yaml")
            family = job.label.split("@")[0] if job.method == "sbs" else job.method  # sbs or sbs-ilp
            variants = [(job.label, family, None)]
            if job.method == "sbs":
                searched = family + "-searched"
                variants.append((job.label.replace(family, searched, 1), searched, load_checkpoint(run_dir)["model"]))
            for label, method, init in variants:
                cache = run_dir / f"finetune-{method}.json"
                accs = cached_accuracies(
                    cache,
                    finetune,
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
                    f"seed {seed} {label:26s} test {row['test_accuracy']:.4f} val {row['val_accuracy']:.4f} "
                    f"{row['bops'] / 1e6:8.1f} MBOPs search {stats['search_s']:5.0f} s  ({time.perf_counter() - t0:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
    summary = summarise(rows)
    fp_bops = (
        load_config(out / f"seed{args.seeds[0]}" / "uniform8" / "config.yaml")
        .full_precision()
        .cost(build_cost_model("bops"))
    )
    report = {
        "machine": machine_info(),
        "command": " ".join(["benchmarks/frontier.py", *(argv if argv is not None else sys.argv[1:])]),
        "schedule": schedule(args),
        "test_images": st.test_images,
        "fp_test_accuracy": st.fp_acc,
        "fp_bops": fp_bops,
        "budgets_bops": targets,
        "summary": summary,
        "runs": rows,
        "markdown": markdown(summary, fp_bops),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    plot(args.model, summary, st.fp_acc, Path(args.png))
    print(report["markdown"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
