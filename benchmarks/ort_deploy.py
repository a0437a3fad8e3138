"""Faster than uniform 8-bit on ONNX Runtime, at its accuracy: ResNet-20 / CIFAR-10 searched against
this machine's ORT table (issue 15).

Recommended CPU schedule (frontier.py's; seeds as parallel processes, then one quiet call that
reads every finished run back and times the models)::

    .venv/bin/python benchmarks/ort_deploy.py --seeds 0 --no-timing &   # and --seeds 1, then 2
    .venv/bin/python benchmarks/ort_deploy.py --seeds 0 1 2 --json benchmarks/results/ort_deploy.json

Protocol (frontier.py's splits, shared full-precision model and fine-tune schedule):

1. **The table**: ``hwsbs lut build --runtime onnxruntime --round-8bit-weights --batch B`` of the
   model on this machine (built once into ``--out-dir`` by the first call; keep the machine quiet
   then: its load average is recorded). ONNX Runtime runs every width in one fused int8 kernel
   once 8-bit weights are rounded onto int8, so on this device only pruning saves time.
2. **Rows**: ``uniform8`` (every layer 8/8, the fastest unpruned deployment) and ``sbs@u8xF`` for
   each ``--fractions`` F: ``hwsbs search`` priced by the table at batch B with ``--target`` F
   times uniform 8-bit's table latency, fine-tuned from the full-precision weights and from its
   searched weights (``-searched``), frontier.py's schedule, ``--seeds``.
3. **Deployed accuracy**: every fine-tuned model is exported as ``hwsbs export --format onnx
   --integer-edges --round-8bit-weights`` would (calibrated on a validation batch) and its test
   accuracy is read in ONNX Runtime, beside the search model's.
4. **Timing** (not with ``--no-timing``): ONNX Runtime FP32, uniform 8-bit and every seed's
   searched model, round-robin in one process at batch B and at batch 1 (one intra-op thread),
   medians; each searched model's speed relative to uniform 8-bit's.

Finished searches and fine-tunes are read back from ``--out-dir``, so an interrupted run continues.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

from cost_models import cost_model_for
from hardware_profiles import load_profile
from hwsbs.checkpoint import load_checkpoint
from hwsbs.export import compressed_model, export_onnx
from hwsbs.export.onnx_run import OrtModule, ort_session
from hwsbs.export.source import ModelSpec
from hwsbs.lut.builder import MeasureSettings
from hwsbs.lut.configs import uniform_config
from hwsbs.lut.machine import load_average, machine_info
from hwsbs.lut.run import build_profile
from hwsbs.sbs.config_io import CompressionConfig, load_config
from hwsbs.sbs.convert import convert_model
from hwsbs.training import evaluate

sys.path.insert(0, str(Path(__file__).resolve().parent))

from export_speed import round_robin  # noqa: E402
from frontier import Job, add_protocol_arguments, finetune_model, schedule, search, setup  # noqa: E402

__all__ = ["plan", "build_table", "summarise_rows", "markdown", "main"]


def plan(fractions: list[float], table: Path, batch: int) -> list[Job]:
    """``uniform8``, then one SBS search per budget fraction, priced by ``table`` at ``batch``."""
    opts = {"hw": str(table), "cost": None, "cost_batch": batch}
    jobs = [Job("uniform8", "uniform", None, {**opts, "uniform_bits": 8})]
    return jobs + [Job(f"sbs@u8x{f:g}", "sbs", f"u8x{f:g}", opts) for f in fractions]


def build_table(model: str, out: Path, batch: int, threads: int) -> tuple[Path, dict[str, Any]]:
    """The ORT table of ``model`` (CIFAR geometry) at ``batch``, with 8-bit weights rounded; built once."""
    path = out / f"ort-{model}-b{batch}.yaml"
    info = out / f"ort-{model}-b{batch}.json"
    if not info.is_file():
        settings = MeasureSettings(batches=(batch,), runtime="onnxruntime", round_8bit_weights=True)
        before = load_average()
        result = build_profile(
            [ModelSpec(model, 10, 3, (32, 32))], path, settings, threads=threads, whole_model_configs=4, progress=False
        )
        record = {"entries": result.entries, "seconds": result.seconds, "load_average": [before, load_average()]}
        info.write_text(json.dumps(record))
    return path, json.loads(info.read_text())


def _ort(model: torch.nn.Module, example: torch.Tensor, calibration: torch.Tensor | None, threads: int) -> OrtModule:
    """The model as the fast deploy path runs it: integer edges, 8-bit weights rounded onto int8."""
    onnx = export_onnx(model, example, exact_8bit_weights=False, integer_edges=True, calibration=calibration)
    return OrtModule(ort_session(onnx.to_bytes(), threads))


def _finetuned(args: argparse.Namespace, st: Any, config: CompressionConfig, init: dict | None, seed: int, cache: Path):
    """(val, test, ORT test) accuracy of one fine-tune, read back once done."""
    if not cache.is_file():
        model, val, test = finetune_model(
            args.model, st.fp_state, config, init, seed, args.finetune_epochs, st.search_dir, st.eval_dir
        )
        cpu = torch.device("cpu")
        calibration = next(iter(val))[0]
        ort = _ort(model.eval(), st.example[:4], calibration, args.threads)
        accs = [evaluate(model, val, cpu), evaluate(model, test, cpu), evaluate(ort, test, cpu)]
        cache.write_text(json.dumps(accs))
    return json.loads(cache.read_text())


def _timing(args: argparse.Namespace, st: Any, configs: dict[str, CompressionConfig]) -> dict[str, dict[str, float]]:
    """Median ORT latency of every configuration (untrained weights: latency does not depend on them)
    and of ORT FP32, round-robin at ``--batch`` and at 1."""
    spec = ModelSpec(args.model, 10, 3, (32, 32))
    space = convert_model(spec.build(), spec.example(), (2, 4, 8), prune=True)
    models = {"ort_fp32": _ort(compressed_model(spec, uniform_config(space, 32)), spec.example(4), None, args.threads)}
    models |= {k: _ort(compressed_model(spec, c), spec.example(4), None, args.threads) for k, c in configs.items()}
    out: dict[str, dict[str, float]] = {}
    for batch in dict.fromkeys([args.batch, 1]):
        x = spec.example(batch)
        calls = {k: partial(m, x) for k, m in models.items()}
        repeats = args.repeats if batch > 1 else 4 * args.repeats
        out[f"batch{batch}"] = {k: v["median_s"] for k, v in round_robin(calls, repeats, 3).items()}
    return out


def summarise_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds per label."""
    out = []
    keys = [k for k, v in rows[0].items() if isinstance(v, float)]
    for label in dict.fromkeys(r["label"] for r in rows):
        group = [r for r in rows if r["label"] == label]
        entry: dict[str, Any] = {"label": label, "seeds": len(group)}
        for key in keys:
            values = [r[key] for r in group if r.get(key) is not None]
            if values:
                entry[key] = statistics.fmean(values)
                entry[key + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append(entry)
    return out


def markdown(summary: list[dict[str, Any]], batch: int) -> str:
    """The table: accuracies in points, latencies relative to uniform 8-bit's."""
    head = f"| configuration | test top-1 | ORT test top-1 | val top-1 | table latency / u8 | ORT b{batch} / u8 | ORT b1 / u8 | kept channels |"
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in summary:
        speed = [f"{s[k]:.3f}" if k in s else "-" for k in (f"time_b{batch}_vs_u8", "time_b1_vs_u8")]
        lines.append(
            f"| {s['label']} | {100 * s['test_accuracy']:.2f} +- {100 * s['test_accuracy_std']:.2f} | "
            f"{100 * s['ort_test_accuracy']:.2f} +- {100 * s['ort_test_accuracy_std']:.2f} | "
            f"{100 * s['val_accuracy']:.2f} | {s['table_vs_u8']:.3f} | {speed[0]} | {speed[1]} | "
            f"{s['kept_channel_share']:.3f} |"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--fractions", nargs="+", type=float, default=[0.9, 0.8], help="budgets: F x uniform 8-bit")
    p.add_argument("--model", default="resnet20", help="built-in model")
    p.add_argument("--batch", type=int, default=32, help="the table's and the search's batch (default: 32)")
    add_protocol_arguments(p)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=15, help="timed rounds at --batch (batch 1: four times as many)")
    p.add_argument("--no-timing", dest="timing", action="store_false", help="searches and fine-tunes only")
    p.add_argument("--out-dir", default="runs/ort_deploy")
    p.add_argument("--json", default="benchmarks/results/ort_deploy.json")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if any(not 0.0 < f <= 1.0 for f in args.fractions):
        raise SystemExit(f"--fractions: expected 0 < F <= 1, got {args.fractions}")
    st = setup(args)
    table, table_info = build_table(args.model, st.out, args.batch, args.threads)
    latency = cost_model_for(load_profile(table))
    spec = ModelSpec(args.model, 10, 3, (32, 32))
    space = convert_model(spec.build(), spec.example(), (2, 4, 8), prune=True)
    u8 = uniform_config(space, 8, batch=args.batch).cost(latency)
    jobs = plan(args.fractions, table, args.batch)
    rows: list[dict[str, Any]] = []
    configs: dict[str, CompressionConfig] = {}
    for seed in args.seeds:
        for job in jobs:
            run_dir = st.out / f"seed{seed}" / job.label
            target = float(job.budget.split("x")[1]) * u8 if job.budget else None
            stats = search(job, st.base, target, seed, run_dir)
            config = load_config(run_dir / "config.yaml")
            configs[f"seed{seed}/{job.label}"] = config
            variants = [(job.label, None)]
            if job.method == "sbs":
                variants.append((job.label.replace("@", "-searched@"), load_checkpoint(run_dir)["model"]))
            for label, init in variants:
                cache = run_dir / f"finetune-ort-{'searched' if init is not None else 'fp'}.json"
                val, test, ort_test = _finetuned(args, st, config, init, seed, cache)
                kept = sum(d.kept_out for d in config.layers) / sum(d.shape.out_channels for d in config.layers)
                row = {"label": label, "seed": seed, "config": f"seed{seed}/{job.label}", "val_accuracy": val}
                row |= {"test_accuracy": test, "ort_test_accuracy": ort_test, "kept_channel_share": kept}
                row |= {"table_vs_u8": config.cost(latency) / u8, "search_s": float(stats["search_s"])}
                rows.append(row)
                print(
                    f"seed {seed} {label:24s} test {test:.4f} ort {ort_test:.4f} val {val:.4f} "
                    f"table/u8 {row['table_vs_u8']:.3f} ({time.perf_counter() - st.t0:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
    report: dict[str, Any] = {
        "machine": machine_info("cpu", args.threads, "onnxruntime"),
        "table": {"path": str(table), **table_info},
    }
    if args.timing:
        timing = _timing(args, st, configs)
        report["median_s"] = timing
        for row in rows:
            for key, med in timing.items():
                row[f"time_{key.replace('batch', 'b')}_vs_u8"] = (
                    med[row["config"]] / med[row["config"].split("/")[0] + "/uniform8"]
                )
    summary = summarise_rows(rows)
    report |= {
        "command": " ".join(["benchmarks/ort_deploy.py", *(argv if argv is not None else sys.argv[1:])]),
        "schedule": schedule(args, "fractions", "batch"),
        "test_images": st.test_images,
        "fp_test_accuracy": st.fp_acc,
        "u8_table_latency_s": u8,
        "summary": summary,
        "runs": rows,
        "markdown": markdown(summary, args.batch),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(report["markdown"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
