"""Predicted vs measured latency of random exported configurations, for several profiles at once.

The same measurements (one per configuration: median of repeats, fixed threads) are compared with
each profile's cost model, so a measured table and an analytic roofline are judged on identical
data. Equivalent to ``hwsbs lut check --hw P1 --hw P2 --model M --configs N`` per model.

    python benchmarks/lut_fidelity.py --models small_cnn resnet20 --hw epyc-2c x86-avx512 \
        --configs 20 --threads 2 --json benchmarks/results/lut_fidelity.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from hwsbs.export import default_spec
from hwsbs.lut.fidelity import draw_configs, fit_profile, measure_configs, report_dict
from hwsbs.lut.machine import describe_machine, machine_info


def run(model: str, hws: list[str], configs: int, seed: int, batch: int, threads: int, repeats: int) -> dict[str, Any]:
    spec = default_spec(model)
    drawn = draw_configs(spec, configs, seed, (2, 4, 8), batch)
    measured = measure_configs(spec, drawn, batch=batch, threads=threads, repeats=repeats)
    fits = [fit_profile(hw, measured, batch) for hw in hws]
    settings = {"configs": configs, "seed": seed, "batch": batch, "threads": threads, "repeats": repeats,
                "command": f"hwsbs lut check {' '.join('--hw ' + h for h in hws)} --model {model} --configs {configs} "
                           f"--seed {seed} --batch {batch} --threads {threads} --repeats {repeats}"}
    return report_dict(spec, measured, fits, settings)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["small_cnn", "resnet20"])
    p.add_argument("--hw", nargs="+", default=["epyc-2c", "x86-avx512"])
    p.add_argument("--configs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", nargs="+", type=int, default=[1])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    out: dict[str, Any] = {"machine": describe_machine(machine_info("cpu", args.threads)), "runs": []}
    print("| model | batch | profile | cost model | Spearman | MAPE | within +-10% | median pred/meas |")
    print("|---|---|---|---|---|---|---|---|")
    for model in args.models:
        for batch in args.batch:
            report = run(model, args.hw, args.configs, args.seed, batch, args.threads, args.repeats)
            out["runs"].append(report)
            for prof in report["profiles"]:
                print(f"| {model} | {batch} | {prof['profile']} | {prof['cost_model']} | {prof['spearman']:.3f} | "
                      f"{100 * prof['mape']:.1f}% | {100 * prof['within_10pct']:.0f}% | {prof['median_ratio']:.3f} |",
                      flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
