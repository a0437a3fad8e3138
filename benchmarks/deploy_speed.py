"""Deploy speed: torch FP32, ONNX Runtime FP32/int8/searched and the torch int8 export, side by side.

Every variant is timed round-robin in one process (one call of each per round after a warm-up,
one thread for torch and ONNX Runtime alike), medians over the rounds, on random inputs of the
``--geometry`` (cifar: 3x32x32, 10 classes, the default; digits: 1x8x8). ``ort_int8`` and
``ort_searched`` use integer edges (``export_onnx(integer_edges=True)``: residual adds and pooling
on uint8 grids, so ONNX Runtime fuses the whole chain); ``ort_int8_exact`` is the exact default
export. ``ort_searched`` is a configuration found by ``hwsbs search`` against an ONNX Runtime table
measured on this machine at ``--batch`` first, trained on the built-in digits (upsampled to
3x32x32 for the cifar geometry, so no dataset is needed); the search is tiny (``--epochs`` per
phase, ``--subset`` samples), and its accuracy on digits is reported. The table prices 8-bit
weights as the export rounds them (``lut build --round-8bit-weights``). ``--searched-config
FILE`` times a configuration searched elsewhere instead (e.g. one of
``benchmarks/ort_deploy.py``'s CIFAR-10 searches, whose accuracies that script reports).
``ort_quantize_static`` is onnxruntime.quantization's QDQ model of the same FP32 export, for
reference.

    python benchmarks/deploy_speed.py --model resnet20 --batch 32 --threads 1 --repeats 10
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
from hwsbs.sbs.config_io import load_config
from hwsbs.sbs.convert import convert_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_speed import round_robin  # noqa: E402  (the timing loop export_speed.py uses)

GEOMETRY = {"cifar": (3, 32, 32), "digits": (1, 8, 8)}


def _register_digits32() -> str:
    """The built-in digits at CIFAR geometry (nearest 4x upsampling, 3 channels): ``digits32``."""
    from hwsbs.data.datasets import DatasetBundle, build_dataset, list_datasets, register_dataset

    if "digits32" in list_datasets():
        return "digits32"

    @register_dataset("digits32")
    def digits32(data_dir: Path | None = None, seed: int = 0) -> DatasetBundle:
        base = build_dataset("digits", seed=seed)

        def up(ds: Any) -> Any:
            x, y = ds.tensors
            x = torch.nn.functional.interpolate(x, scale_factor=4, mode="nearest").repeat(1, 3, 1, 1)
            return torch.utils.data.TensorDataset(x, y)

        return DatasetBundle("digits32", up(base.train), up(base.val), 10, 3, (32, 32))

    return "digits32"


def _searched(
    spec: ModelSpec, data: str, batch: int, threads: int, epochs: int, subset: int, tmp: Path
) -> tuple[Any, dict]:
    """An ORT table of ``spec`` at ``batch`` on this machine, then a tiny hwsbs search against it."""
    from hwsbs.config import SearchConfig
    from hwsbs.pipeline import run_search

    settings = MeasureSettings(
        batches=(batch,), warmup=2, repeats=6, rounds=2, runtime="onnxruntime", round_8bit_weights=True
    )
    profile = build_profile([spec], tmp / "ort-here.yaml", settings, threads=threads, grid=2, progress=False)
    out = tmp / "run"
    result = run_search(
        SearchConfig(
            hw=str(profile.profile_path),
            model=spec.name,
            data=data,
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


def _quantize_static(fp32_onnx: bytes, spec: ModelSpec, tmp: Path, threads: int) -> OrtModule | None:
    """onnxruntime.quantization.quantize_static of the FP32 export (per-channel s8 weights, u8
    activations, QDQ, calibrated on 4 random batches), or None when it is unavailable."""
    try:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    except ImportError:
        return None

    class _Reader(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime ships no type hints
        def __init__(self) -> None:
            self.batches = iter([{"input": spec.example(8, seed=i).numpy()} for i in range(4)])

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    src, dst = tmp / "fp32.onnx", tmp / "static.onnx"
    src.write_bytes(fp32_onnx)
    quantize_static(
        str(src),
        str(dst),
        _Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return OrtModule(ort_session(dst.read_bytes(), threads))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=30, help="timed rounds (default: 30)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--epochs", type=int, default=1, help="epochs per search phase (default: 1)")
    p.add_argument("--subset", type=int, default=512, help="digits training samples (default: 512)")
    p.add_argument("--geometry", choices=sorted(GEOMETRY), default="cifar", help="input geometry (default: cifar)")
    p.add_argument("--searched-config", default=None, metavar="FILE", help="time this config.yaml as ort_searched")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    c, h, w = GEOMETRY[args.geometry]
    spec = ModelSpec(args.model, 10, c, (h, w))
    x = spec.example(args.batch)
    space = convert_model(spec.build(), spec.example(), (2, 4, 8), prune=True)
    int8 = compressed_model(spec, uniform_config(space, 8))
    fp32 = compressed_model(spec, uniform_config(space, 32))

    def ort(model: torch.nn.Module, exact: bool = True, integer: bool = True) -> OrtModule:
        onnx_model = export_onnx(model, spec.example(4), exact_8bit_weights=exact, integer_edges=integer)
        return OrtModule(ort_session(onnx_model.to_bytes(), args.threads))

    data = "digits" if args.geometry == "digits" else _register_digits32()
    with tempfile.TemporaryDirectory() as tmp:
        if args.searched_config:
            config = load_config(args.searched_config)
            searched = compressed_model(spec, config)
            search_info = {"config": args.searched_config, "bits": [[d.w_bits, d.a_bits] for d in config.layers]}
        else:
            print("measuring the ORT table and searching (tiny) ...", file=sys.stderr)
            searched, search_info = _searched(spec, data, args.batch, args.threads, args.epochs, args.subset, Path(tmp))
        static = _quantize_static(export_onnx(fp32, spec.example(4)).to_bytes(), spec, Path(tmp), args.threads)
    torch.set_num_threads(args.threads)
    torch_fp32 = spec.build().eval()
    models: dict[str, Callable[[torch.Tensor], object]] = {
        "torch_fp32": torch_fp32,
        "ort_fp32": ort(fp32),
        "ort_int8": ort(int8, exact=False),  # uniform 8-bit, weights rounded onto int8, integer edges
        "ort_int8_exact": ort(int8, integer=False),  # the exact default export (8-bit weight term, float edges)
        "ort_searched": ort(searched, exact=False),
        "torch_export_int8": export_model(int8, spec.example()),
    }
    if static is not None:
        models["ort_quantize_static"] = static
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
            "search": f"searched elsewhere: {args.searched_config}"
            if args.searched_config
            else f"hwsbs search on {data}, {args.epochs} epoch(s) per phase, "
            f"subset {args.subset}, priced by an ORT table of this machine at batch {args.batch}",
        },
    }
    print(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
