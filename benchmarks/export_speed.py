"""Export speed: FP32 against exported configurations, measured side by side in one process.

Every variant of a model is timed round-robin (one call of each per round, after a warm-up), so
load drift on a shared machine hits all variants alike; medians and interquartile ranges over the
rounds are reported with the batch size and thread count. A GEMM section times the raw kernels
(float32 matmul, oneDNN u8 x s8, torch._int_mm) at one shape to show what the layers are built on.

    python benchmarks/export_speed.py --models small_cnn resnet20 --batch 1 32 --threads 1 \
        --search small_cnn --json benchmarks/results/export_speed.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from hwsbs.export import compressed_model, default_spec, export_model, load_run
from hwsbs.lut.configs import random_config, uniform_config
from hwsbs.lut.machine import describe_machine, machine_info
from hwsbs.sbs.convert import convert_model


def round_robin(variants: dict[str, Callable[[], object]], repeats: int, warmup: int) -> dict[str, dict[str, float]]:
    samples: dict[str, list[float]] = {k: [] for k in variants}
    with torch.inference_mode():
        for fn in variants.values():
            for _ in range(warmup):
                fn()
        for _ in range(repeats):
            for name, fn in variants.items():
                start = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - start)
    out = {}
    for name, xs in samples.items():
        q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0]] * 3
        out[name] = {"median_s": statistics.median(xs), "q1_s": q[0], "q3_s": q[2]}
    return out


def _search(model: str, batch: int, hw: str, out: Path) -> Path:
    """A real SBS search of ``model`` on digits, priced by ``hw`` at ``batch`` (a searched config)."""
    from hwsbs.config import SearchConfig
    from hwsbs.pipeline import run_search

    run_search(SearchConfig(hw=hw, model=model, data="digits", cost_batch=batch, out=str(out), progress=False))
    return out


def bench_model(name: str, batch: int, repeats: int, warmup: int, run_dir: Path | None, seed: int) -> dict[str, Any]:
    spec = default_spec(name)
    space = convert_model(spec.build(), spec.example(), (2, 4, 8))
    configs = {
        "export fp32 (BN folded, NHWC)": uniform_config(space, 32),
        "export uniform 8-bit": uniform_config(space, 8),
        "export uniform 4-bit (first/last 8)": uniform_config(space, 4, pinned_bits=8),
        f"export random mixed (seed {seed})": random_config(space, random.Random(seed), (2, 4, 8)),
    }
    fp = spec.build().eval()
    x = spec.example(batch)
    variants: dict[str, Callable[[], object]] = {"fp32 PyTorch model (NCHW)": lambda: fp(x)}
    layers: dict[str, str] = {}
    for label, cfg in configs.items():
        ex = export_model(compressed_model(spec, cfg), spec.example(), spec=spec)
        variants[label] = lambda ex=ex: ex(x)
        layers[label] = f"{sum(r.path == 'int8' for r in ex.records)}/{len(ex.records)} int8"
    fq = compressed_model(spec, configs["export uniform 4-bit (first/last 8)"])
    variants["fake-quant SBS model, uniform 4-bit"] = lambda: fq(x)
    if run_dir is not None:
        rspec, model, cfg = load_run(run_dir)
        ex = export_model(model, rspec.example(), spec=rspec)
        result = json.loads((run_dir / "result.json").read_text())
        acc = result["accuracy"]
        label = (
            f"export searched ({result['hardware']} at batch {cfg.batch}; accuracy {acc['compressed']:.3f}, "
            f"FP {acc['full_precision']:.3f})"
        )
        variants[label] = lambda ex=ex: ex(x)
        layers[label] = f"{sum(r.path == 'int8' for r in ex.records)}/{len(ex.records)} int8; " + ", ".join(
            f"{d.w_bits}/{d.a_bits}" + (f" keep {d.kept_out}/{d.shape.out_channels}" if d.pruned_channels else "")
            for d in cfg.layers
        )
    timings = round_robin(variants, repeats, warmup)
    base = timings["fp32 PyTorch model (NCHW)"]
    # The q1 ratio is the less contended estimate on a shared machine (contention only slows calls down).
    return {
        "model": spec.to_dict(),
        "batch": batch,
        "variants": [
            {
                "variant": k,
                **v,
                "speedup_vs_fp32": base["median_s"] / v["median_s"],
                "speedup_vs_fp32_q1": base["q1_s"] / v["q1_s"],
                "layers": layers.get(k, ""),
            }
            for k, v in timings.items()
        ],
    }


def bench_gemm(repeats: int) -> list[dict[str, Any]]:
    """float32 mm, oneDNN u8 x s8 linear (float output) and torch._int_mm at conv-like shapes."""
    rows = []
    for m, k, n in [(1024, 144, 16), (2048, 576, 64), (64, 576, 64)]:
        a = torch.randint(0, 127, (m, k), dtype=torch.uint8)
        w = torch.randint(-128, 127, (n, k), dtype=torch.int8)
        af, wf = a.float(), w.float().t().contiguous()
        a8, w8 = a.view(torch.int8), w.t().contiguous()
        packed = torch.ops.onednn.qlinear_prepack(w, None)
        ones, zp = torch.ones(n), torch.zeros(n, dtype=torch.long)
        variants = {
            "fp32 mm": lambda af=af, wf=wf: af @ wf,
            "oneDNN u8s8 (fp32 out)": lambda a=a, p=packed, o=ones, z=zp: torch.ops.onednn.qlinear_pointwise(
                a, 1.0, 0, p, o, z, None, 1.0, 0, torch.float32, "none", [], ""
            ),
            "torch._int_mm": lambda a8=a8, w8=w8: torch._int_mm(a8, w8),
        }
        t = round_robin(variants, repeats, 3)
        for name, v in t.items():
            rows.append({"shape": f"{m}x{k}x{n}", "kernel": name, **v, "gops": 2 * m * k * n / v["median_s"] / 1e9})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["small_cnn", "resnet20"])
    p.add_argument("--batch", nargs="+", type=int, default=[1, 32])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run", nargs="*", default=[], metavar="MODEL=RUN_DIR", help="searched runs to include")
    p.add_argument(
        "--search",
        nargs="*",
        default=[],
        metavar="MODEL",
        help="run an SBS search on digits for these models (priced by --hw at each batch)",
    )
    p.add_argument("--hw", default="epyc-2c")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    runs = {k: Path(v) for k, v in (r.split("=", 1) for r in args.run)}
    results: dict[str, Any] = {
        "machine": describe_machine(machine_info("cpu", args.threads)),
        "threads": args.threads,
        "repeats": args.repeats,
        "models": [],
        "gemm": bench_gemm(args.repeats),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            for batch in args.batch:
                run = runs.get(name)
                if name in args.search:
                    run = _search(name, batch, args.hw, Path(tmp) / f"{name}-b{batch}")
                results["models"].append(bench_model(name, batch, args.repeats, args.warmup, run, args.seed))
                _print(results["models"][-1])
    _print_gemm(results["gemm"])
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))


def _print(r: dict[str, Any]) -> None:
    print(f"\n{r['model']['name']}, batch {r['batch']}")
    print("| variant | median ms | IQR ms | speed-up vs FP32 (medians) | (first quartiles) | layers |")
    print("|---|---|---|---|---|---|")
    for v in r["variants"]:
        print(
            f"| {v['variant']} | {v['median_s'] * 1e3:.3f} | {v['q1_s'] * 1e3:.3f}-{v['q3_s'] * 1e3:.3f} | "
            f"{v['speedup_vs_fp32']:.2f}x | {v['speedup_vs_fp32_q1']:.2f}x | {v['layers']} |"
        )


def _print_gemm(rows: list[dict[str, Any]]) -> None:
    print("\n| M x K x N | kernel | median ms | GOP/s |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['shape']} | {r['kernel']} | {r['median_s'] * 1e3:.3f} | {r['gops']:.1f} |")


if __name__ == "__main__":
    main()
