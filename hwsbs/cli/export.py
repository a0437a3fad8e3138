"""``hwsbs export``: a found configuration as a model that runs on integer kernels."""

from __future__ import annotations

import argparse
import json
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from rich.table import Table
from torch import nn

from hwsbs.apb.decision import is_apb_decision
from hwsbs.config import check_device
from hwsbs.errors import ConfigError, DataError, HwsbsError
from hwsbs.export import ExportedModel, ModelSpec, export_model, load_run
from hwsbs.export.source import read_run_options
from hwsbs.export.verify import REL_TOL, verify_export
from hwsbs.lut.timing import fixed_threads, time_callable
from hwsbs.sbs.config_io import CompressionConfig

from .profiles import stdout_console

__all__ = ["add_parser"]

#: The "what to export" options named as the :func:`~hwsbs.export.load_run` keywords they override.
_SOURCE_OVERRIDES = ("checkpoint", "model", "num_classes", "in_channels", "image_size")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``hwsbs export``."""
    p = subparsers.add_parser("export", help="export a found configuration to integer kernels (deployable .pt)")
    src = p.add_argument_group("what to export")
    src.add_argument(
        "--run",
        metavar="RUN_DIR",
        default=None,
        help="run directory of hwsbs search (config.yaml, checkpoint.pt, options.json)",
    )
    src.add_argument("--config", metavar="FILE", default=None, help="config.yaml (overrides the run's)")
    src.add_argument(
        "--checkpoint",
        metavar="FILE",
        default=None,
        help="fine-tuned compressed model: a run checkpoint.pt or a state_dict",
    )
    src.add_argument("--model", default=None, help="model name or package.module:factory (default: the run's)")
    src.add_argument("--num-classes", type=int, default=None, help="default: the config's last layer outputs")
    src.add_argument("--in-channels", type=int, default=None, help="default: the config's first layer inputs")
    src.add_argument("--image-size", type=int, default=None, help="default: the config's first layer input size")
    out = p.add_argument_group("export")
    out.add_argument(
        "--format",
        choices=("int8", "float", "onnx"),
        default="int8",
        help="int8: <= 8-bit layers on integer kernels; float: every layer in float32; onnx: a QDQ ONNX "
        "model for ONNX Runtime (needs the deploy extra; docs/deploy.md) (default: int8)",
    )
    out.add_argument(
        "--round-8bit-weights",
        action="store_true",
        help="onnx: round 8-bit weights onto int8 (ONNX Runtime fuses them into integer kernels; not exact)",
    )
    out.add_argument(
        "--integer-edges",
        action="store_true",
        help="onnx: uint8 values between layers (residual adds, pooling) so ONNX Runtime fuses the whole "
        "chain; 8-bit grids from calibration, not exact (verify tolerance 2e-2; docs/deploy.md)",
    )
    out.add_argument(
        "--kernel",
        choices=("auto", "onednn", "intmm"),
        default="auto",
        help="integer kernels: onednn (CPU), intmm (torch._int_mm; CUDA) (default: auto)",
    )
    out.add_argument("--device", default="cpu", help="where the export runs (default: cpu)")
    out.add_argument(
        "--out", metavar="FILE", default=None, help="output file (default: RUN_DIR/model_int8.pt or model_int8.pt)"
    )
    chk = p.add_argument_group("checks")
    chk.add_argument(
        "--verify",
        type=int,
        default=0,
        metavar="N",
        help="compare with the fake-quantised model on N validation samples of the run's dataset "
        "(random inputs when it is not available)",
    )
    chk.add_argument(
        "--time", action="store_true", help="measure latency against the float model (see --batch, --threads)"
    )
    chk.add_argument("--batch", type=int, default=1, help="batch size for --time (default: 1)")
    chk.add_argument("--threads", type=int, default=None, help="torch threads for --time (default: torch's)")
    chk.add_argument("--repeats", type=int, default=30, help="timed calls for --time (default: 30)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(handler=_run)


def _load_inputs(args: argparse.Namespace) -> tuple[ModelSpec, nn.Module, CompressionConfig, dict[str, Any]]:
    """The spec, the fine-tuned compressed model, its configuration and the run's options."""
    options = read_run_options(args.run)
    overrides = {name: getattr(args, name) for name in _SOURCE_OVERRIDES}
    spec, model, config = load_run(args.run, config_path=args.config, **overrides)
    return spec, model, config, options


def _verify_batches(options: dict[str, Any], spec: ModelSpec, n: int) -> tuple[Iterable[Any], str]:
    """Validation batches of the run's dataset, or random inputs (and why)."""
    data = options.get("data"), options.get("data_dir")
    if isinstance(data[0], str) and data[0] and (data[1] is None or isinstance(data[1], str)):
        from hwsbs.data import build_dataset, make_loader

        try:
            bundle = build_dataset(data[0], data[1], None, 0)
            return make_loader(bundle.val, min(256, n), False, 0), f"{data[0]} validation split"
        except (DataError, HwsbsError) as exc:
            note = f"random inputs ({data[0]} not available: {str(exc)[:80]})"
    else:
        note = "random inputs (no dataset known)"
    return [spec.example(min(256, n - i), seed=i) for i in range(0, n, 256)], note


def _time(args: argparse.Namespace, spec: ModelSpec, exported: ExportedModel) -> dict[str, Any]:
    dev = torch.device(args.device)
    fp = spec.build().eval().to(dev)
    x = spec.example(args.batch).to(dev)
    with fixed_threads(args.threads):
        t_fp = time_callable(lambda: fp(x), warmup=5, repeats=args.repeats, device=dev)
        t_ex = time_callable(lambda: exported(x), warmup=5, repeats=args.repeats, device=dev)
        threads = torch.get_num_threads()
    return {
        "batch": args.batch,
        "threads": threads,
        "float_model_s": t_fp.median_s,
        "export_s": t_ex.median_s,
        "speedup": t_fp.median_s / t_ex.median_s,
    }


def _check_numbers(args: argparse.Namespace) -> None:
    if args.batch <= 0 or args.repeats <= 0 or args.verify < 0:
        raise ConfigError("--batch and --repeats must be positive, --verify >= 0")
    for flag in ("num_classes", "in_channels", "image_size", "threads"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise ConfigError(f"--{flag.replace('_', '-')}: expected a positive integer, got {value}")


def _out_path(args: argparse.Namespace) -> Path:
    """``--out`` (or its default), checked to be a file hwsbs may create before any work is done.

    Raises:
        ConfigError: the path is a directory or another non-regular file, a parent is a file, or
            the nearest existing parent directory is not writable.
    """
    default = "model.onnx" if args.format == "onnx" else f"model_{args.format}.pt"
    out = Path(args.out) if args.out else (Path(args.run) if args.run else Path(".")) / default
    label = f"--out {out}" if args.out else f"{out} (the default --out)"
    try:
        st = os.stat(out)
    except (FileNotFoundError, NotADirectoryError):  # a parent that is a file: named below
        st = None
    except OSError as exc:
        raise ConfigError(f"{label}: cannot use this path ({exc.strerror or exc})") from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{label}: is a directory; give a file name, e.g. {out / default}")
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{label}: exists and is not a regular file")
    parent = out.absolute().parent
    while not parent.exists() and parent != parent.parent:  # save() creates the missing directories
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{label}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK) or (st is not None and not os.access(out, os.W_OK)):
        raise ConfigError(f"{label}: not writable (permission denied or a read-only file system)")
    return out


def _run(args: argparse.Namespace) -> int:
    _check_numbers(args)
    check_device(args.device)
    if args.run is not None and not Path(args.run).is_dir():
        raise ConfigError(f"--run {args.run}: not a directory")
    out = _out_path(args)
    if args.format == "onnx":
        return _run_onnx(args, out)
    spec, model, config, options = _load_inputs(args)
    backend = "float" if args.format == "float" else args.kernel
    exported = export_model(model, spec.example(), backend=backend, device=args.device, spec=spec)
    exported.info.update({"config": str(args.config or (Path(args.run) / "config.yaml" if args.run else ""))})
    exported.save(out)
    report: dict[str, Any] = {
        "out": str(out),
        "model": spec.to_dict(),
        "backend": exported.backend,
        "layers": exported.layer_table(),
        "bytes": out.stat().st_size,
    }
    if args.verify:
        batches, source = _verify_batches(options, spec, args.verify)
        report["verify"] = {
            "inputs": source,
            "tolerance_rel": REL_TOL,
            **verify_export(model, exported, batches, args.device, limit=args.verify),
        }
    if args.time:
        report["time"] = _time(args, spec, exported)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print(report)
    if args.verify and not report["verify"]["passed"]:
        return 1
    return 0


def _run_onnx(args: argparse.Namespace, out: Path) -> int:
    """``--format onnx``: write the QDQ model; ``--verify`` runs it in ONNX Runtime."""
    from hwsbs.export.onnx_export import export_onnx
    from hwsbs.export.onnx_graph import require_onnx
    from hwsbs.export.onnx_run import ort_session, require_onnxruntime
    from hwsbs.export.verify import INTEGER_EDGES_REL_TOL, ONNX_REL_TOL, verify_onnx

    require_onnx()  # a missing extra fails before the model is loaded
    if args.verify or args.time:
        require_onnxruntime("--verify/--time with --format onnx")
    if args.device != "cpu":
        raise ConfigError(f"--device {args.device}: --format onnx runs on the CPU (ONNX Runtime's CPU provider)")
    spec, model, config, options = _load_inputs(args)
    if any(is_apb_decision(d) for d in config.layers):
        raise ConfigError("--format onnx: APB layers have no ONNX export; use --format int8 (the bitwise kernels)")
    mixed = next((d.shape.name for d in config.layers if d.group_w_bits), None)
    if mixed is not None:
        raise ConfigError(f"--format onnx: layer {mixed} has channel-wise weight bits, not mapped to ONNX; use int8")
    exported = export_onnx(
        model,
        spec.example(),
        spec=spec,
        exact_8bit_weights=not args.round_8bit_weights,
        integer_edges=args.integer_edges,
    )
    tolerance = INTEGER_EDGES_REL_TOL if args.integer_edges else ONNX_REL_TOL
    exported.save(out)
    report: dict[str, Any] = {
        "out": str(out),
        "model": spec.to_dict(),
        "backend": "onnx",
        "layers": exported.layer_table(),
        "bytes": out.stat().st_size,
    }
    if args.verify:
        batches, source = _verify_batches(options, spec, args.verify)
        session = ort_session(exported.to_bytes(), args.threads)
        stats = verify_onnx(model, session, batches, "cpu", limit=args.verify, tolerance=tolerance)
        report["verify"] = {"inputs": source, "tolerance_rel": tolerance, **stats}
    if args.time:
        from hwsbs.export.onnx_run import OrtModule

        session = OrtModule(ort_session(exported.to_bytes(), args.threads))
        x = spec.example(args.batch)
        fp = spec.build().eval()
        with fixed_threads(args.threads):
            t_fp = time_callable(lambda: fp(x), warmup=5, repeats=args.repeats)
            t_ex = time_callable(lambda: session(x), warmup=5, repeats=args.repeats)
            threads = torch.get_num_threads()
        report["time"] = {
            "batch": args.batch,
            "threads": threads,
            "float_model_s": t_fp.median_s,
            "export_s": t_ex.median_s,
            "speedup": t_fp.median_s / t_ex.median_s,
        }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print(report)
    return 1 if args.verify and not report["verify"]["passed"] else 0


def _print(report: dict[str, Any]) -> None:
    console = stdout_console()
    table = Table(title=f"{report['model']['name']}: exported to {report['out']} ({report['bytes'] / 1024:.0f} KiB)")
    for col in ("layer", "w/a bits", "kept in->out", "runs on", "weights", "folded"):
        table.add_column(col)
    for r in report["layers"]:
        where = r["kernel"] if r["path"] == "int8" else f"float32 ({r['reason']})" if r["reason"] else "float32"
        if r["path"] == "apb":
            where = f"apb ({r['reason']})" if r["kernel"] == "apb" else "float32 (apb weights)"
        table.add_row(
            r["name"],
            f"{r['w_bits']}/{r['a_bits']}",
            f"{r['in']}->{r['out']}",
            where,
            r["weight_dtype"],
            r["folded_norm"] or "",
        )
    console.print(table)
    if "verify" in report:
        v = report["verify"]
        acc = (
            f", accuracy fake-quant {v['accuracy_fake_quant']:.4f} vs export {v['accuracy_export']:.4f}"
            if "accuracy_export" in v
            else ""
        )
        console.print(
            f"verify on {int(v['samples'])} samples ({v['inputs']}): argmax agreement {v['argmax_agreement']:.4f}, "
            f"median/max relative logit difference {v['median_rel']:.2e}/{v['max_rel']:.2e}{acc}: "
            f"{'PASS' if v['passed'] else 'FAIL'}"
        )
    if "time" in report:
        t = report["time"]
        console.print(
            f"latency (batch {t['batch']}, {t['threads']} threads, median): float model "
            f"{t['float_model_s'] * 1e3:.3f} ms, export {t['export_s'] * 1e3:.3f} ms ({t['speedup']:.2f}x)"
        )
