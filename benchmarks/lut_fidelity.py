"""Predicted vs measured latency of random exported configurations, for several profiles at once.

The same measurements (one per configuration: median of repeats, fixed threads) are compared with
each profile's cost model, so a measured table and an analytic roofline are judged on identical
data. Equivalent to ``hwsbs lut check --hw P1 --hw P2 --model M --configs N`` per model.

    python benchmarks/lut_fidelity.py --models small_cnn resnet20 --hw epyc-2c x86-avx512 \
        --configs 20 --batch 1 32 --threads 1 --json benchmarks/results/lut_fidelity.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from hwsbs.export import default_spec
from hwsbs.lut.fidelity import draw_configs, fit_profile, measure_configs, report_dict
from hwsbs.lut.machine import describe_machine, machine_info


def breakdown(spec, configs, batch: int, threads: int, repeats: int, hw: str) -> dict[str, float]:
    """Where the gap between a layer table and end-to-end time comes from, on a few configs:
    the layers' time measured inside the model (forward hooks) against their isolated time (the
    table) and against the whole forward (the rest: residual adds, pooling, Python)."""
    import statistics
    import time

    import torch

    from cost_models import cost_model_for
    from hwsbs.export import compressed_model, export_model

    cm = cost_model_for(hw)
    ratios_layers, ratios_rest = [], []
    torch.set_num_threads(threads)
    for cfg in configs:
        ex = export_model(compressed_model(spec, cfg), spec.example(), spec=spec)
        x = spec.example(batch)
        inside: dict[str, list[float]] = {}
        totals = []

        def pre(m, args):
            m._t0 = time.perf_counter()

        def post(m, args, out, inside=inside):
            inside.setdefault(m.record.name, []).append(time.perf_counter() - m._t0)

        hooks = [
            h for m in ex.layers().values() for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))
        ]
        with torch.inference_mode():
            for _ in range(3):
                ex(x)
            inside.clear()
            for _ in range(repeats):
                t0 = time.perf_counter()
                ex(x)
                totals.append(time.perf_counter() - t0)
        for h in hooks:
            h.remove()
        layers = sum(statistics.median(v) for v in inside.values())
        cfg.batch = batch
        ratios_layers.append(cfg.cost(cm) / layers)
        ratios_rest.append(1.0 - layers / statistics.median(totals))
    return {
        "table_over_in_model_layers": statistics.median(ratios_layers),
        "share_outside_layers": statistics.median(ratios_rest),
    }


def run(model: str, hws: list[str], configs: int, seed: int, batch: int, threads: int, repeats: int) -> dict[str, Any]:
    spec = default_spec(model)
    drawn = draw_configs(spec, configs, seed, (2, 4, 8), batch)
    measured = measure_configs(spec, drawn, batch=batch, threads=threads, repeats=repeats)
    fits = [fit_profile(hw, measured, batch) for hw in hws]
    gap = breakdown(spec, drawn[:5], batch, threads, repeats, hws[0])
    settings = {
        "configs": configs,
        "seed": seed,
        "batch": batch,
        "threads": threads,
        "repeats": repeats,
        "command": f"hwsbs lut check {' '.join('--hw ' + h for h in hws)} --model {model} --configs {configs} "
        f"--seed {seed} --batch {batch} --threads {threads} --repeats {repeats}",
    }
    report = report_dict(spec, measured, fits, settings)
    report["gap"] = gap
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["small_cnn", "resnet20"])
    p.add_argument("--hw", nargs="+", default=["epyc-2c", "x86-avx512"])
    p.add_argument("--configs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", nargs="+", type=int, default=[1])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    out: dict[str, Any] = {"machine": describe_machine(machine_info("cpu", args.threads)), "runs": []}
    print("| model | batch | profile | cost model | Spearman | MAPE | within +-10% | median pred/meas |")
    print("|---|---|---|---|---|---|---|---|")
    gaps = []
    for model in args.models:
        for batch in args.batch:
            report = run(model, args.hw, args.configs, args.seed, batch, args.threads, args.repeats)
            out["runs"].append(report)
            for prof in report["profiles"]:
                print(
                    f"| {model} | {batch} | {prof['profile']} | {prof['cost_model']} | {prof['spearman']:.3f} | "
                    f"{100 * prof['mape']:.1f}% | {100 * prof['within_10pct']:.0f}% | {prof['median_ratio']:.3f} |",
                    flush=True,
                )
            gaps.append((model, batch, report["gap"]))
    print("\n| model | batch | table / layers timed inside the model | share of time outside the layers |")
    print("|---|---|---|---|")
    for model, batch, g in gaps:
        print(f"| {model} | {batch} | {g['table_over_in_model_layers']:.3f} | {100 * g['share_outside_layers']:.1f}% |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
