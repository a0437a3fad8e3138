"""Time of SBS's cost term (value + gradient) per step for every built-in cost model, vs the step.

Usage::

    .venv/bin/python benchmarks/cost_eval.py --model resnet56 --batch 64 \
        --out benchmarks/results/cost_eval.json

For a 57-layer ResNet-56 (CIFAR, 32x32) converted for the search (bits 2/4/8, pruning on), after
one training-mode forward has set every gate, each cost model is timed on
``CostTerm() -> R`` plus ``autograd.grad(log R, thresholds)``:

* cold: a fresh cost model instance and a fresh CostTerm (every memo empty), median of
  ``--cold-repeats`` such first calls;
* warm: the same CostTerm called again (every discrete state already memoised), median of
  ``--repeats`` calls.

Both are compared with the median SBS search step (``SearchEngine.step``, which includes one
warm cost-term call) of the same model and batch. Cost models: bops, size, roofline on a100,
bit_serial on bismo / loom / stripes / bitfusion, energy on bitfusion, and lut on a synthetic
table covering the model: hwsbs ships no measured table, so one is generated with latency
proportional to MACs x w_bits x a_bits on a kept-channel grid of {half, all} — its numbers mean
nothing, it only exercises the lookup and bilinear interpolation the lut model does.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from cost_models import build_cost_model, cost_model_for
from cost_models.base import CostModel
from hardware_profiles import LookupTable, LutEntry, load_profile
from hwsbs.models import build_model
from hwsbs.sbs.convert import SearchSpace, convert_model
from hwsbs.sbs.cost_term import CostTerm
from hwsbs.sbs.engine import CostObjective, SearchEngine

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_overhead import machine_info, write_report  # noqa: E402

__all__ = ["COST_MODELS", "synthetic_lut_model", "time_cost_term"]

BITS = (2, 4, 8)
# label -> factory of a fresh cost model instance (a fresh instance has empty memos)
COST_MODELS: dict[str, Callable[[SearchSpace], CostModel]] = {
    "bops": lambda s: build_cost_model("bops"),
    "size": lambda s: build_cost_model("size"),
    "roofline (a100)": lambda s: cost_model_for("a100"),
    "bit_serial (bismo)": lambda s: cost_model_for("bismo"),
    "bit_serial (loom)": lambda s: cost_model_for("loom"),
    "bit_serial (stripes)": lambda s: cost_model_for("stripes"),
    "bit_serial (bitfusion)": lambda s: cost_model_for("bitfusion"),
    "energy (bitfusion)": lambda s: cost_model_for("bitfusion", "energy"),
    "lut (synthetic table)": lambda s: synthetic_lut_model(s),
}


def synthetic_lut_model(space: SearchSpace) -> CostModel:
    """A lut cost model on a generated table covering every layer of ``space`` (see module doc)."""
    entries: dict[tuple, LutEntry] = {}
    pairs = [(w, a) for w in BITS for a in BITS] + [(32, 32)]
    for shape in space.shapes.values():
        kins = (1,) if shape.is_depthwise else sorted({max(shape.in_channels // 2, 1), shape.in_channels})
        kouts = sorted({max(shape.out_channels // 2, 1), shape.out_channels})
        for w, a in pairs:
            for kin in kins:
                for kout in kouts:
                    key = (shape.signature, w, a, kin, kout)
                    macs = shape.macs(None if shape.is_depthwise else kin, kout)
                    entries[key] = LutEntry(
                        signature=shape.signature,
                        w_bits=w,
                        a_bits=a,
                        kept_in=kin,
                        kept_out=kout,
                        batch=1,
                        mean_s=max(macs * w * a * 1e-15, 1e-12),
                        std_s=0.0,
                    )
    table = LookupTable(
        device="synthetic (benchmarks/cost_eval.py)",
        method="MACs x w x a x 1e-15 s",
        fallback="next_wider",
        entries=list(entries.values()),
    )
    profile = load_profile("a100").model_copy(update={"lookup_table": table})
    return build_cost_model("lut", profile)


def _thresholds(space: SearchSpace) -> list[torch.Tensor]:
    return [p for _, layer in space.layers() for p in layer.threshold_parameters().values()]


def _timed_call(term: CostTerm, params: list[torch.Tensor]) -> float:
    t0 = time.perf_counter()
    r = term()
    torch.autograd.grad(torch.log(r), params, retain_graph=True, allow_unused=True)
    return time.perf_counter() - t0


def time_cost_term(
    space: SearchSpace, factory: Callable[[SearchSpace], CostModel], cold_repeats: int, repeats: int
) -> dict[str, float]:
    """Cold and warm time of the cost term + its gradient, for the gates of the last forward."""
    params = _thresholds(space)
    cold = []
    term = None
    for _ in range(cold_repeats):
        term = CostTerm(space, factory(space))
        cold.append(_timed_call(term, params))
    assert term is not None
    warm = [_timed_call(term, params) for _ in range(repeats)]
    value = float(term().detach())
    return {
        "cold_s": statistics.median(cold),
        "warm_s": statistics.median(warm),
        "cost": value,
        "unit": term.cost_model.unit,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet56")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=5, help="SBS steps timed (median)")
    p.add_argument("--cold-repeats", type=int, default=3)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args.model, 10, 3, (32, 32))
    x, y = torch.randn(args.batch, 3, 32, 32), torch.randint(0, 10, (args.batch,))
    space = convert_model(model, x[:8], BITS, prune=True)
    engine = SearchEngine(space, [CostObjective(build_cost_model("bops"))], 0.1, 0.01, 0.05, 5e-4)
    engine.step(x, y)
    step_times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        engine.step(x, y)
        step_times.append(time.perf_counter() - t0)
    step = statistics.median(step_times)
    space.model.train()
    space.model(x)  # gates of one forward, as the step's cost term sees them
    rows = {}
    for label, factory in COST_MODELS.items():
        r = time_cost_term(space, factory, args.cold_repeats, args.repeats)
        r["cold_share_of_step"] = r["cold_s"] / step
        r["warm_share_of_step"] = r["warm_s"] / step
        rows[label] = r
        print(
            f"{label:24s} cold {1e3 * r['cold_s']:8.2f} ms ({100 * r['cold_share_of_step']:5.2f}%)  "
            f"warm {1e3 * r['warm_s']:7.2f} ms ({100 * r['warm_share_of_step']:5.2f}%)",
            file=sys.stderr,
            flush=True,
        )
    report = {
        "machine": machine_info(),
        "threads": torch.get_num_threads(),
        "model": args.model,
        "layers": len(space.layer_names),
        "prunable_groups": len(space.groups),
        "batch": args.batch,
        "sbs_step_s": step,
        "command": " ".join(["benchmarks/cost_eval.py", *(argv if argv is not None else sys.argv[1:])]),
        "cost_models": rows,
    }
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
