"""One search on 1 process against N torchrun processes at the same global batch and seed.

Runs ``hwsbs search`` as a user would (a subprocess each, one thread per process), repeated
round-robin, and prints JSON: wall time per variant (median of repeats), the speedup, and whether
the N-process job derived the single process's configuration (bits and kept channels of every
layer), with both accuracies.

    python benchmarks/torchrun_scaling.py --nproc 2 --repeats 3 --out benchmarks/results/torchrun_scaling.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_overhead import machine_info  # noqa: E402


def _command(nproc: int, out: Path, search_args: list[str]) -> list[str]:
    hwsbs = ["-m", "hwsbs", "search", *search_args, "--out", str(out), "--no-progress"]
    if nproc == 1:
        return [sys.executable, *hwsbs]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *hwsbs]


def _decisions(run: Path) -> tuple[list[Any], dict[str, float]]:
    data = json.loads((run / "result.json").read_text())
    layers = [(la["name"], la["w_bits"], la["a_bits"], la["kept_out_channels"]) for la in data["layers"]]
    return layers, data["accuracy"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nproc", type=int, default=2, help="processes of the torchrun job")
    p.add_argument("--repeats", type=int, default=3, help="runs of each variant, round-robin")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    p.add_argument(
        "search_args",
        nargs="*",
        default=["--hw", "a100", "--seed", "3"],
        help="arguments of hwsbs search (default: --hw a100 --seed 3: digits, the default schedule)",
    )
    args = p.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread per process: the scaling is the processes'
    times: dict[int, list[float]] = {1: [], args.nproc: []}
    found: dict[int, tuple[list[Any], dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for n in (1, args.nproc):
                out = Path(tmp) / f"n{n}_r{r}"
                start = time.perf_counter()
                subprocess.run(_command(n, out, args.search_args), env=env, check=True, capture_output=True)
                times[n].append(time.perf_counter() - start)
                found[n] = _decisions(out)
                print(f"{n} process(es), repeat {r + 1}: {times[n][-1]:.1f} s", file=sys.stderr)
    median = {n: statistics.median(t) for n, t in times.items()}
    report = {
        "command": " ".join(sys.argv),
        "machine": machine_info(),
        "search_args": args.search_args,
        "wall_s": {f"{n}_process": {"median": median[n], "all": times[n]} for n in times},
        "speedup": median[1] / median[args.nproc],
        "same_configuration": found[1][0] == found[args.nproc][0],
        "configuration": {f"{n}_process": found[n][0] for n in found},
        "accuracy": {f"{n}_process": found[n][1] for n in found},
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
