"""Hardware awareness: the same budget searched on every built-in profile, every result priced on every profile.

For each profile P the search runs with ``--target`` (default 30% of P's uniform 8-bit cost)
from one shared full-precision model; the found configuration C_P is then priced on every
profile Q. ``matrix[P][Q] = cost_Q(C_P) / cost_Q(C_Q)``: 1 on the diagonal, > 1 where Q's own
configuration is cheaper on Q than P's. Two shares are reported:

* ``share_own_cheapest``: pairs where Q's own configuration is the cheapest on Q (ties count:
  two devices may rightly agree). Under a budget this is the wrong question on its own: a search
  that meets Q's budget stops there, and a device whose 30% needs 2-bit layers (a100's roofline)
  finds a configuration that is cheaper still on a bit-serial device, and less accurate.
* ``share_best_use_of_budget``: for every pair, P's configuration either does not fit Q's budget
  on Q, or Q's own configuration keeps at least as much precision (BOPs, the bit-weighted
  multiply-accumulates) within that budget: no other device's answer is a better use of Q's budget.

Usage (digits, the built-in data; about 5 minutes on 2 CPU cores)::

    .venv/bin/python benchmarks/awareness.py --json benchmarks/results/awareness_digits.json \
        --png benchmarks/results/awareness_digits.png

ResNet-20 on a CIFAR-10 subset (unpacked from the shared archive)::

    .venv/bin/python benchmarks/awareness.py --model resnet20 --data cifar10-archive --subset 3000 \
        --pretrain-epochs 8 --search-epochs 4 --json benchmarks/results/awareness_resnet20.json \
        --png benchmarks/results/awareness_resnet20.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from cost_models import build_cost_model, cost_model_for
from hardware_profiles.loader import builtin_profile_names
from hwsbs.config import SearchConfig, parse_target
from hwsbs.data import build_dataset, ensure_cifar10_jpeg, find_cifar10_archive, make_loader
from hwsbs.models import build_model
from hwsbs.pipeline import run_search
from hwsbs.progress import PhaseProgress
from hwsbs.sbs.config_io import CompressionConfig, load_config
from hwsbs.training import make_sgd, split_decay, train_epoch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_overhead import add_output_options, machine_info  # noqa: E402

__all__ = ["price_matrix", "share_own_cheapest", "share_best_use_of_budget", "main"]

_TIE = 1e-9  # relative: equal costs count as "own is cheapest"


def price_matrix(configs: dict[str, CompressionConfig]) -> dict[str, dict[str, float]]:
    """``m[p][q]``: cost on q of p's configuration over the cost on q of q's own."""
    models = {q: cost_model_for(q) for q in configs}
    own = {q: configs[q].cost(models[q]) for q in configs}
    return {p: {q: configs[p].cost(models[q]) / own[q] for q in configs} for p in configs}


def share_own_cheapest(matrix: dict[str, dict[str, float]]) -> tuple[int, int]:
    """``(pairs where q's own config is no dearer on q than p's, all pairs p != q)``."""
    pairs = [(p, q) for p in matrix for q in matrix if p != q]
    good = sum(1 for p, q in pairs if matrix[p][q] >= 1.0 - _TIE)
    return good, len(pairs)


def share_best_use_of_budget(configs: dict[str, CompressionConfig], fraction: float) -> tuple[int, int]:
    """``(pairs where p's config misses q's budget on q or keeps no more BOPs than q's own, all pairs)``."""
    bops = build_cost_model("bops")
    good = total = 0
    for q in configs:
        cm = cost_model_for(q)
        budget = fraction * configs[q].uniform(8).cost(cm)
        for p in configs:
            if p == q:
                continue
            total += 1
            fits = configs[p].cost(cm) <= budget * (1 + _TIE)
            good += (not fits) or configs[q].cost(bops) >= configs[p].cost(bops) * (1 - _TIE)
    return good, total


def plot(matrix: dict[str, dict[str, float]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(matrix)
    data = [[matrix[p][q] for q in names] for p in names]
    fig, ax = plt.subplots(figsize=(1.0 * len(names) + 2, 0.8 * len(names) + 1.5))
    im = ax.imshow(data, cmap="RdYlGn_r", vmin=0.5, vmax=2.0)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("priced on (Q)")
    ax.set_ylabel("searched for (P)")
    for i, row in enumerate(data):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, label="cost on Q / cost of Q's own config on Q")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(matrix: dict[str, dict[str, float]]) -> str:
    names = list(matrix)
    lines = ["| searched for \\ priced on | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for p in names:
        lines.append(f"| {p} | " + " | ".join(f"{matrix[p][q]:.2f}" for q in names) + " |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--profiles", nargs="+", default=None, help="default: every built-in profile")
    p.add_argument("--target", default="30%")
    p.add_argument("--model", default="small_cnn")
    p.add_argument("--data", default="digits", help="digits, or cifar10-archive (the shared CIFAR-10 JPEG archive)")
    p.add_argument("--subset", type=int, default=None)
    p.add_argument("--pretrain-epochs", type=int, default=15)
    p.add_argument("--search-epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    add_output_options(p, "awareness", "awareness_digits")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    profiles = args.profiles or builtin_profile_names()
    out = Path(args.out_dir) / f"{args.model}-{args.data}"
    data: dict[str, Any] = {"data": args.data}
    if args.data == "cifar10-archive":
        data = {"data": "imagefolder", "data_dir": str(ensure_cifar10_jpeg(find_cifar10_archive()))}
    base = dict(model=args.model, subset=args.subset, seed=args.seed, progress=False, **data)
    fp_state = out / "fp.pt"
    pretrain(args.model, data, args.subset, args.seed, args.pretrain_epochs, fp_state)
    target, fraction = parse_target(args.target)
    configs: dict[str, CompressionConfig] = {}
    t0 = time.perf_counter()
    for name in profiles:
        run_dir = out / name
        if not (run_dir / "config.yaml").is_file():
            run_search(
                SearchConfig(
                    **base,
                    hw=name,
                    target=target,
                    target_fraction=fraction,
                    checkpoint=str(fp_state),
                    pretrain_epochs=0,
                    search_epochs=args.search_epochs,
                    finetune_epochs=0,
                    out=str(run_dir),
                )
            )
        configs[name] = load_config(run_dir / "config.yaml")
        print(f"{name:12s} searched ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    matrix = price_matrix(configs)
    good, total = share_own_cheapest(matrix)
    best_use = share_best_use_of_budget(configs, fraction) if fraction else None
    own_share = {q: configs[q].cost(cost_model_for(q)) / configs[q].uniform(8).cost(cost_model_for(q)) for q in configs}
    report = {
        "machine": machine_info(),
        "command": " ".join(["benchmarks/awareness.py", *(argv if argv is not None else sys.argv[1:])]),
        "target": args.target,
        "model": args.model,
        "data": args.data,
        "search_epochs": args.search_epochs,
        "matrix": matrix,
        "own_cost_vs_uniform8": own_share,
        "own_cheapest": good,
        "pairs": total,
        "share_own_cheapest": good / total if total else None,
        "best_use_of_budget": best_use[0] if best_use else None,
        "share_best_use_of_budget": best_use[0] / best_use[1] if best_use else None,
        "budget_met": {
            q: configs[q].cost(cost_model_for(q))
            <= (fraction or 0) * configs[q].uniform(8).cost(cost_model_for(q)) * (1 + _TIE)
            for q in configs
        },
        "markdown": markdown(matrix),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    plot(
        matrix,
        f"{args.model}/{args.data}, --target {args.target}: own config cheapest in {good}/{total} pairs",
        Path(args.png),
    )
    print(report["markdown"])
    print(f"own configuration cheapest (or tied) in {good} of {total} pairs ({100 * good / max(total, 1):.0f}%)")
    if best_use:
        print(
            f"own configuration the best use of the budget in {best_use[0]} of {best_use[1]} pairs "
            f"({100 * best_use[0] / max(best_use[1], 1):.0f}%)"
        )
    return 0


def pretrain(model_name: str, data: dict[str, Any], subset: int | None, seed: int, epochs: int, path: Path) -> None:
    """One shared full-precision model (SGD, cosine, lr 0.05, as the pipeline trains)."""
    if path.is_file():
        return
    bundle = build_dataset(data["data"], data.get("data_dir"), subset, seed)
    torch.manual_seed(seed)
    model = build_model(model_name, bundle.num_classes, bundle.in_channels, bundle.image_size)
    opt = make_sgd(*split_decay(model), 0.05, 5e-4)
    steps = epochs * len(make_loader(bundle.train, 64, True, seed))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    for epoch in range(epochs):
        train_epoch(
            model,
            make_loader(bundle.train, 64, True, seed + epoch),
            opt,
            sched,
            torch.device("cpu"),
            PhaseProgress(False),
            "pretrain",
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)


if __name__ == "__main__":
    raise SystemExit(main())
