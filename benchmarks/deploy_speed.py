"""Deploy speed: torch FP32, ONNX Runtime FP32/int8/searched and the torch int8 export, side by side.

Every variant is timed round-robin in one process (one call of each per round after a warm-up,
one thread for torch and ONNX Runtime alike), medians over the rounds. ``ort_searched`` is a
configuration found by ``hwsbs search`` on digits (1x8x8 inputs, so every variant is timed at
that geometry) against an ONNX Runtime table measured on this machine at ``--batch`` first; the
search is tiny (``--epochs`` per phase, ``--subset`` samples), and its accuracy is reported.

    python benchmarks/deploy_speed.py --model resnet20 --batch 32 --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from hwsbs.export import compressed_model, export_model, export_onnx, load_run
from hwsbs.export.onnx_run import OrtModule, ort_session
from hwsbs.export.source import ModelSpec
from hwsbs.lut.builder import MeasureSettings
from hwsbs.lut.configs import uniform_config
from hwsbs.lut.machine import machine_info
from hwsbs.lut.run import build_profile
from hwsbs.sbs.convert import convert_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_speed import round_robin  # noqa: E402  (the timing loop export_speed.py uses)

DIGITS = (1, 8, 8)  # the search's data set: the geometry every variant is timed at


def _searched(spec: ModelSpec, batch: int, threads: int, epochs: int, subset: int, tmp: Path) -> tuple[Any, dict]:
    """An ORT table of ``spec`` at ``batch`` on this machine, then a tiny hwsbs search against it."""
    from hwsbs.config import SearchConfig
    from hwsbs.pipeline import run_search

    settings = MeasureSettings(batches=(batch,), warmup=2, repeats=6, rounds=2, runtime="onnxruntime")
    profile = build_profile([spec], tmp / "ort-here.yaml", settings, threads=threads, grid=2, progress=False)
    out = tmp / "run"
    result = run_search(
        SearchConfig(
            hw=str(profile.profile_path),
            model=spec.name,
            data="digits",
            subset=subset,
            cost_batch=batch,
            pretrain_epochs=epochs,
            search_epochs=epochs,
            finetune_epochs=epochs,
            out=str(out),
            progress=False,
        )
    )
    _, model, config = load_run(out)
    acc = getattr(result, "accuracy", None)
    info = {"accuracy": acc if isinstance(acc, dict) else str(acc), "table_entries": profile.entries}
    info["bits"] = [[d.w_bits, d.a_bits] for d in config.layers]
    return model, info


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=30, help="timed rounds (default: 30)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--epochs", type=int, default=1, help="epochs per search phase (default: 1)")
    p.add_argument("--subset", type=int, default=512, help="digits training samples (default: 512)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    spec = ModelSpec(args.model, 10, DIGITS[0], DIGITS[1:])
    x = spec.example(args.batch)
    space = convert_model(spec.build(), spec.example(), (2, 4, 8), prune=True)
    int8 = compressed_model(spec, uniform_config(space, 8))
    fp32 = compressed_model(spec, uniform_config(space, 32))

    def ort(model: torch.nn.Module, exact: bool = True) -> OrtModule:
        onnx_model = export_onnx(model, spec.example(4), exact_8bit_weights=exact)
        return OrtModule(ort_session(onnx_model.to_bytes(), args.threads))

    print("measuring the ORT table and searching (tiny) ...", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        searched, search_info = _searched(spec, args.batch, args.threads, args.epochs, args.subset, Path(tmp))
    torch.set_num_threads(args.threads)
    torch_fp32 = spec.build().eval()
    models: dict[str, Callable[[torch.Tensor], object]] = {
        "torch_fp32": torch_fp32,
        "ort_fp32": ort(fp32),
        "ort_int8": ort(int8, exact=False),  # uniform 8-bit, weights rounded onto int8: fused by ORT
        "ort_int8_exact": ort(int8),  # uniform 8-bit with the exact 8-bit weight term
        "ort_searched": ort(searched),
        "torch_export_int8": export_model(int8, spec.example()),
    }
    variants: dict[str, Callable[[], object]] = {k: partial(m, x) for k, m in models.items()}
    print(f"timing {len(variants)} variants round-robin ...", file=sys.stderr)
    med = {k: v["median_s"] for k, v in round_robin(variants, args.repeats, args.warmup).items()}
    report = {
        "machine": machine_info("cpu", args.threads, "onnxruntime"),
        "command": " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "model": spec.to_dict(),
        "batch": args.batch,
        "threads": args.threads,
        "repeats": args.repeats,
        "median_s": med,
        "speedup": {
            k: {"vs_torch_fp32": med["torch_fp32"] / v, "vs_ort_fp32": med["ort_fp32"] / v}
            for k, v in med.items()
            if k not in ("torch_fp32", "ort_fp32")
        },
        "searched": {
            **search_info,
            "search": f"hwsbs search on digits, {args.epochs} epoch(s) per phase, "
            f"subset {args.subset}, priced by an ORT table of this machine at batch {args.batch}",
        },
    }
    print(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
