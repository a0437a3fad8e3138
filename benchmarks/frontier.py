"""Accuracy against cost on CIFAR-10 for ResNet-20: SBS at several lambdas and every baseline.

Usage::

    .venv/bin/python benchmarks/frontier.py --subset 8000 --pretrain-epochs 20 --search-epochs 3 \
        --finetune-epochs 2 --lambdas 0.05 0.2 1.0 --out-dir runs/frontier \
        --json benchmarks/results/frontier.json --png benchmarks/results/frontier.png

Schedule (fits a 2-core CPU): the CIFAR-10 JPEG archive is unpacked once
(:func:`hwsbs.data.ensure_cifar10_jpeg`), ``--subset`` training images and a quarter as many test
images are used; a full-precision ResNet-20 is trained once and its state_dict passed to every
method as ``--checkpoint``, so all methods start from the same model. Then each method gets the
same budget of epochs on the same data:

* ``sbs`` at each ``--lambdas`` value and ``multipath`` at ``--multipath-lambdas``: search epochs +
  fine-tune epochs;
* ``uniform`` 2/4/8 bits: search + fine-tune epochs, all fine-tuning (it has nothing to search);
* ``random`` and ``optuna`` at each ``--budgets`` (a share of the uniform 8-bit BOPs, or ``u4``
  for the cost of uniform 4-bit): candidates scored without training, their number matched to
  the search epochs' compute (see ``hwsbs.methods.random_search.default_trials``), then the
  fine-tune epochs.

Every found configuration is priced in BOPs (the searched cost), and on a100 (roofline) and
bismo (bit_serial). Runs already finished in ``--out-dir`` are read back, not re-run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cost_models import cost_model_for
from hwsbs.config import SearchConfig
from hwsbs.data import build_dataset, ensure_cifar10_jpeg, find_cifar10_archive, make_loader
from hwsbs.methods import get_method
from hwsbs.models import build_model
from hwsbs.pipeline import run_search
from hwsbs.progress import PhaseProgress
from hwsbs.sbs.config_io import load_config
from hwsbs.training import evaluate, make_sgd, split_decay, train_epoch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_overhead import machine_info  # noqa: E402

__all__ = ["RunSpec", "plan", "pretrain", "run_all", "plot", "main"]


@dataclass
class RunSpec:
    """One method run of the frontier."""

    label: str  # directory name and legend entry
    method: str  # --method
    options: dict[str, Any] = field(default_factory=dict)  # SearchConfig overrides


def plan(methods: list[str], lambdas: list[float], mp_lambdas: list[float], budgets: list[str],
         search_epochs: int, finetune_epochs: int) -> list[RunSpec]:
    """The runs for the requested method families."""
    specs: list[RunSpec] = []
    for m in methods:
        if m == "sbs":
            specs += [RunSpec(f"sbs-lam{lam:g}", "sbs", {"lam": lam}) for lam in lambdas]
        elif m == "multipath":
            specs += [RunSpec(f"multipath-lam{lam:g}", "multipath", {"lam": lam}) for lam in mp_lambdas]
        elif m.startswith("uniform"):
            bits = [int(m[len("uniform"):])] if m != "uniform" else [2, 4, 8]
            specs += [RunSpec(f"uniform{b}", "uniform", {"uniform_bits": b, "search_epochs": 0,
                                                          "finetune_epochs": search_epochs + finetune_epochs}) for b in bits]
        elif m in ("random", "optuna"):
            for b in budgets:
                opts: dict[str, Any] = {} if b == "u4" else {"target_fraction": float(b.rstrip("%")) / 100}
                specs.append(RunSpec(f"{m}-{b.replace('%', 'pct')}", m, opts))
        else:
            raise SystemExit(f"unknown method family {m!r}")
    return specs


def pretrain(data_dir: Path, subset: int, epochs: int, lr: float, seed: int, path: Path,
             device: str = "cpu", workers: int = 0) -> tuple[float, int]:
    """Train the shared full-precision ResNet-20 once; returns its test accuracy and test-set size."""
    bundle = build_dataset("imagefolder", data_dir, subset, seed)
    torch.manual_seed(seed)
    dev = torch.device(device)
    model = build_model("resnet20", bundle.num_classes, bundle.in_channels, bundle.image_size).to(dev)
    if path.is_file():
        model.load_state_dict(torch.load(path, map_location=dev, weights_only=True))
    else:
        opt = make_sgd(*split_decay(model), lr, 5e-4)
        steps = epochs * len(make_loader(bundle.train, 64, True, seed))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
        with PhaseProgress(False) as progress:
            for epoch in range(epochs):
                loss = train_epoch(model, make_loader(bundle.train, 64, True, seed + epoch, workers), opt, sched,
                                   dev, progress, f"pretrain epoch {epoch + 1}")
                print(f"pretrain epoch {epoch + 1}/{epochs}: loss {loss:.4f}", file=sys.stderr, flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return evaluate(model, make_loader(bundle.val, 256, False, seed, workers), dev), len(bundle.val)


def _timed_method(name: str, sink: dict[str, float]):
    """Context: wall time of the registered method's own run (the search phase alone)."""
    method = get_method(name)
    original = method.run

    def timed(ctx):
        t0 = time.perf_counter()
        try:
            return original(ctx)
        finally:
            sink["search_s"] = time.perf_counter() - t0

    class _Patch:
        def __enter__(self):
            method.run = timed

        def __exit__(self, *exc):
            method.run = original

    return _Patch()


def _row(spec: RunSpec, run_dir: Path, times: dict[str, float]) -> dict[str, Any]:
    result = json.loads((run_dir / "result.json").read_text())
    config = load_config(run_dir / "config.yaml")
    layers = config.layers
    searchable = layers[1:-1]
    kept = sum(d.kept_out for d in layers) / sum(d.shape.out_channels for d in layers)
    return {
        "label": spec.label, "method": spec.method, "options": spec.options,
        "accuracy": result["accuracy"]["compressed"], "fp_accuracy": result["accuracy"]["full_precision"],
        "bops": result["cost"]["compressed"], "bops_uniform8": result["cost"]["uniform_8bit"],
        "bops_fp": result["cost"]["full_precision"],
        "a100_s": config.cost(cost_model_for("a100")), "bismo_s": config.cost(cost_model_for("bismo")),
        "mean_w_bits": sum(d.w_bits for d in searchable) / len(searchable),
        "mean_a_bits": sum(d.a_bits for d in searchable) / len(searchable),
        "kept_channel_share": kept,
        **times,
    }


def run_all(specs: list[RunSpec], base: dict[str, Any], out_dir: Path) -> list[dict[str, Any]]:
    """Run (or read back) every spec; one row per run."""
    rows = []
    for spec in specs:
        run_dir = out_dir / spec.label
        times_path = run_dir / "times.json"
        if not (run_dir / "result.json").is_file() or not times_path.is_file():
            times: dict[str, float] = {}
            t0 = time.perf_counter()
            with _timed_method(spec.method, times):
                run_search(SearchConfig(**{**base, **spec.options}, method=spec.method, out=str(run_dir)))
            times["total_s"] = time.perf_counter() - t0
            times_path.write_text(json.dumps(times))
        row = _row(spec, run_dir, json.loads(times_path.read_text()))
        rows.append(row)
        print(f"{spec.label:22s} acc {row['accuracy']:.4f}  {row['bops'] / 1e6:9.1f} MBOPs  a100 {row['a100_s'] * 1e6:7.2f} us  "
              f"bismo {row['bismo_s'] * 1e3:7.3f} ms  search {row.get('search_s', 0):6.0f} s  total {row['total_s']:6.0f} s",
              file=sys.stderr, flush=True)
    return rows


def plot(rows: list[dict[str, Any]], fp_acc: float, path: Path) -> None:
    """Accuracy against BOPs, a100 latency and bismo latency; one colour per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    metrics = (("bops", "BOPs (searched cost)", 1.0), ("a100_s", "a100 roofline latency (us)", 1e6),
               ("bismo_s", "bismo bit-serial latency (ms)", 1e3))
    markers = {"sbs": "o", "multipath": "s", "uniform": "^", "random": "x", "optuna": "D"}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    for ax, (key, title, scale) in zip(axes, metrics):
        for method, marker in markers.items():
            pts = sorted((r[key] * scale, r["accuracy"], r["label"]) for r in rows if r["method"] == method)
            if not pts:
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, linestyle="-" if method == "sbs" else "none",
                    label=method, markersize=7)
            for x, y, label in pts:
                ax.annotate(label.split("-", 1)[-1] if "-" in label else label, (x, y), fontsize=6,
                            textcoords="offset points", xytext=(3, 3))
        ax.axhline(fp_acc, color="grey", linestyle=":", label="full precision")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor log labels collide on a 1-decade axis
        ax.set_xlabel(title)
        ax.set_ylabel("top-1 accuracy (CIFAR-10 test subset)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("ResNet-20 on CIFAR-10: accuracy against cost at equal epochs")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", nargs="+", default=["sbs", "uniform", "random", "optuna", "multipath"],
                   help="families: sbs, multipath, uniform (2/4/8) or uniform4 etc., random, optuna")
    p.add_argument("--lambdas", nargs="+", type=float, default=[0.05, 0.2, 1.0])
    p.add_argument("--multipath-lambdas", nargs="+", type=float, default=[0.2, 1.0])
    p.add_argument("--budgets", nargs="+", default=["u4", "12%"], help="random/optuna budgets: u4 or N%% of uniform 8-bit")
    p.add_argument("--subset", type=int, default=8000)
    p.add_argument("--pretrain-epochs", type=int, default=20)
    p.add_argument("--search-epochs", type=int, default=3)
    p.add_argument("--finetune-epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's); several frontier processes "
                   "with disjoint --methods and one thread each can share one --out-dir")
    p.add_argument("--device", default="cpu", help="torch device for every run (cpu or cuda)")
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes per run")
    p.add_argument("--out-dir", default="runs/frontier")
    p.add_argument("--json", default="benchmarks/results/frontier.json")
    p.add_argument("--png", default="benchmarks/results/frontier.png")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data_dir = ensure_cifar10_jpeg(find_cifar10_archive())
    out_dir = Path(args.out_dir)
    t0 = time.perf_counter()
    fp_path = out_dir / "fp_resnet20.pt"
    fp_acc, test_images = pretrain(data_dir, args.subset, args.pretrain_epochs, 0.05, args.seed, fp_path, args.device, args.workers)
    print(f"full precision: {fp_acc:.4f} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    base = dict(model="resnet20", data="imagefolder", data_dir=str(data_dir), subset=args.subset,
                checkpoint=str(fp_path), pretrain_epochs=0, search_epochs=args.search_epochs,
                finetune_epochs=args.finetune_epochs, hw="a100", cost="bops", seed=args.seed, progress=False,
                device=args.device, workers=args.workers)
    specs = plan(args.methods, args.lambdas, args.multipath_lambdas, args.budgets, args.search_epochs, args.finetune_epochs)
    rows = run_all(specs, base, out_dir)
    report = {"machine": machine_info(), "command": " ".join(["benchmarks/frontier.py", *(argv if argv is not None else sys.argv[1:])]),
              "schedule": {k: getattr(args, k) for k in ("subset", "pretrain_epochs", "search_epochs", "finetune_epochs", "seed", "threads",
                                                     "device", "workers")},
              "test_images": test_images, "fp_accuracy": fp_acc, "runs": rows}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.png:
        plot(rows, fp_acc, Path(args.png))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
