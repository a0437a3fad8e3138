"""``hwsbs lut``: measure a lookup table for this device (build); predicted vs measured (check)."""

from __future__ import annotations

import argparse
import json
import shlex

from hwsbs.config import MAX_SEED, check_seed
from hwsbs.defaults import DEFAULT_BITS
from hwsbs.errors import ConfigError
from hwsbs.export import ModelSpec, default_spec
from hwsbs.lut.apb import add_apb_argument, apb_shares_option
from hwsbs.lut.builder import MeasureSettings
from hwsbs.lut.fidelity import draw_configs, fit_profile, measure_configs, report_dict
from hwsbs.lut.run import build_profile
from hwsbs.lut.split import DEFAULT_SPLIT_LAYERS, check_split_options
from hwsbs.progress import console, progress_bar

from .lut_report import print_check_report

__all__ = ["add_parser", "parse_model"]


def _bits(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.replace(" ", "").split(",") if t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 2,4,8, got {text!r}") from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _seed(text: str) -> int:
    try:
        return check_seed(int(text))
    except (ValueError, ConfigError):
        raise argparse.ArgumentTypeError(f"expected an integer 0..{MAX_SEED}, got {text!r}") from None


def _geometry(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--image-size",
        type=_positive,
        default=None,
        help="input side for models without an @SIZE suffix (default: each builder's, e.g. small_cnn 8, resnet20 32)",
    )
    p.add_argument("--num-classes", type=_positive, default=None, help="classifier outputs (default: each builder's)")
    p.add_argument("--in-channels", type=_positive, default=None, help="input channels (default: each builder's)")


def _timing(p: argparse.ArgumentParser, repeats: int) -> None:
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device to measure (default: cpu)")
    p.add_argument(
        "--threads", type=_positive, default=None, help="torch.set_num_threads for the measurement (default: torch's)"
    )
    p.add_argument(
        "--batch", type=_positive, action="append", default=None, help="batch size; repeat for several (default: 1)"
    )
    p.add_argument(
        "--repeats", type=_positive, default=repeats, help="timed calls per measurement (default: %(default)s)"
    )
    p.add_argument("--warmup", type=int, default=5, help="untimed calls first (default: %(default)s)")
    p.add_argument(
        "--kernel", choices=("auto", "onednn", "intmm"), default="auto", help="integer kernels (default: auto)"
    )
    p.add_argument(
        "--runtime",
        choices=("torch", "onnxruntime"),
        default="torch",
        help="what runs the layers: torch (the hwsbs export) or onnxruntime (QDQ graphs of export --format "
        "onnx; needs the deploy extra) (default: %(default)s)",
    )
    p.add_argument(
        "--round-8bit-weights",
        action="store_true",
        help="--runtime onnxruntime: 8-bit weights rounded onto int8 and fused, as export --format onnx "
        "--round-8bit-weights deploys them (default: exact, with a second node)",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``hwsbs lut build`` and ``hwsbs lut check``."""
    p = subparsers.add_parser(
        "lut", help="measured lookup tables: build one for this device, check a profile against measurements"
    )
    sub = p.add_subparsers(dest="lut_command", metavar="ACTION", parser_class=type(p))
    sub.required = True

    b = sub.add_parser("build", help="time every layer shape of the models and write a profile with its table")
    b.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="M[@SIZE]",
        help="built-in model or package.module:factory, optionally @SIZE for its input side; repeat for several",
    )
    b.add_argument(
        "--out",
        required=True,
        metavar="FILE",
        help="profile to write, e.g. hardware_profiles/NAME.yaml (table: tables/NAME.yaml next to it)",
    )
    b.add_argument(
        "--rounds",
        type=_positive,
        default=3,
        help="passes over the whole table, each with its share of the repeats (default: %(default)s)",
    )
    b.add_argument(
        "--grid", type=_positive, default=3, help="kept-channel counts per prunable dimension (default: %(default)s)"
    )
    b.add_argument(
        "--bits", type=_bits, default=DEFAULT_BITS, help="candidate bits of the searches to support (default: 2,4,8)"
    )
    b.add_argument("--group-size", type=_positive, default=4, help="channels per pruning group (default: %(default)s)")
    b.add_argument(
        "--max-prune-fraction",
        type=float,
        default=0.5,
        help="most of a layer's groups a search prunes (default: %(default)s)",
    )
    b.add_argument(
        "--conformance-shapes",
        action="store_true",
        help="also measure the layer zoo of hwsbs.testing.check_cost_model (full channels), so the "
        "profile passes the cost-model conformance checks",
    )
    b.add_argument(
        "--whole-model-configs",
        type=int,
        default=0,
        metavar="N",
        help="also time N random configurations of each model end to end per batch and store the fitted "
        "whole-model term (overhead + scale * sum of layers) in the table (default: %(default)s, none)",
    )
    b.add_argument(
        "--channel-split",
        action="store_true",
        help="also time layers split as hwsbs export runs a channel-wise layer (--granularity channel: one "
        "sub-layer per weight width) and write the fitted channel_split overhead into the profile "
        "(--runtime torch only)",
    )
    b.add_argument(
        "--split-layers",
        type=_positive,
        default=DEFAULT_SPLIT_LAYERS,
        metavar="N",
        help="layer shapes --channel-split times, spread by size (default: %(default)s)",
    )
    add_apb_argument(b)
    _geometry(b)
    _timing(b, repeats=30)
    b.set_defaults(handler=_build)

    c = sub.add_parser(
        "check", help="predicted (a profile's cost model) vs measured latency of random exported configurations"
    )
    c.add_argument(
        "--hw",
        action="append",
        required=True,
        metavar="PROFILE",
        help="profile name or file; repeat to compare several on the same measurements",
    )
    c.add_argument("--cost", default=None, help="cost model overriding each profile's default")
    c.add_argument("--model", default="small_cnn", metavar="M[@SIZE]", help="model (default: %(default)s)")
    c.add_argument("--configs", type=_positive, default=20, help="random configurations (default: %(default)s)")
    c.add_argument("--seed", type=_seed, default=0, help="seed of the configurations (default: %(default)s)")
    c.add_argument("--bits", type=_bits, default=DEFAULT_BITS, help="bit widths to draw from (default: 2,4,8)")
    c.add_argument("--json", action="store_true", help="print JSON instead of tables")
    _geometry(c)
    _timing(c, repeats=30)
    c.set_defaults(handler=_check)


def parse_model(text: str, args: argparse.Namespace) -> ModelSpec:
    """``NAME`` or ``NAME@SIZE`` with the geometry options."""
    name, _, size = text.partition("@")
    if size and not size.isdigit():
        raise ConfigError(f"--model {text}: expected NAME or NAME@SIZE with an integer SIZE")
    image = int(size) if size else args.image_size
    return default_spec(name, args.num_classes, args.in_channels, image)


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run, every measurement option spelled out."""
    parts = ["hwsbs", "lut", args.lut_command]
    if args.lut_command == "build":
        for m in args.model:
            parts += ["--model", m]
        parts += [
            "--out",
            str(args.out),
            "--grid",
            str(args.grid),
            "--rounds",
            str(args.rounds),
            "--bits",
            ",".join(map(str, args.bits)),
        ]
        if args.conformance_shapes:
            parts.append("--conformance-shapes")
        if args.whole_model_configs:
            parts += ["--whole-model-configs", str(args.whole_model_configs)]
        parts += ["--apb", args.apb] if args.apb is not None else []
        if args.channel_split:
            parts += ["--channel-split", "--split-layers", str(args.split_layers)]
    else:
        for hw in args.hw:
            parts += ["--hw", hw]
        parts += ["--model", args.model, "--configs", str(args.configs), "--seed", str(args.seed)]
    for flag in ("image_size", "num_classes", "in_channels", "threads"):
        if getattr(args, flag) is not None:
            parts += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    for b in args.batch or [1]:
        parts += ["--batch", str(b)]
    parts += [
        "--repeats",
        str(args.repeats),
        "--warmup",
        str(args.warmup),
        "--device",
        args.device,
        "--kernel",
        args.kernel,
        "--runtime",
        args.runtime,
    ]
    parts += ["--round-8bit-weights"] if args.round_8bit_weights else []
    return " ".join(shlex.quote(p) for p in parts)


def _check_common(args: argparse.Namespace) -> list[int]:
    if args.warmup < 0:
        raise ConfigError(f"--warmup: expected an integer >= 0, got {args.warmup}")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is available")
    if args.round_8bit_weights and args.runtime != "onnxruntime":
        raise ConfigError(f"--round-8bit-weights: applies to --runtime onnxruntime only, not --runtime {args.runtime}")
    if args.runtime == "onnxruntime":
        if args.device != "cpu":
            raise ConfigError(f"--runtime onnxruntime measures the CPU: drop --device {args.device}")
        from hwsbs.export.onnx_graph import require_onnx
        from hwsbs.export.onnx_run import require_onnxruntime

        require_onnx("--runtime onnxruntime")
        require_onnxruntime("--runtime onnxruntime")
    return args.batch or [1]


def _warn_if_busy(args: argparse.Namespace, when: str) -> float | None:
    """Warn when other processes stretch this CPU measurement; the 1-minute load average."""
    from hwsbs.lut.machine import load_average, warn_if_busy

    return warn_if_busy(when) if args.device == "cpu" else load_average()


def _build(args: argparse.Namespace) -> int:
    if args.channel_split:  # the combination first: ahead of whether onnxruntime is installed
        check_split_options(args.runtime, args.bits)
    batches = _check_common(args)
    if args.whole_model_configs < 0 or args.whole_model_configs == 1:
        raise ConfigError(f"--whole-model-configs: expected 0 (none) or >= 2, got {args.whole_model_configs}")
    if not 0.0 <= args.max_prune_fraction < 1.0:
        raise ConfigError(f"--max-prune-fraction: expected 0 <= f < 1, got {args.max_prune_fraction}")
    apb_shares = apb_shares_option(args.apb, args.runtime)
    specs = [parse_model(m, args) for m in args.model]
    for spec in specs:
        spec.build()  # unknown models fail here, before any measuring
    settings = MeasureSettings(
        batches=tuple(batches),
        warmup=args.warmup,
        repeats=args.repeats,
        backend=args.kernel,
        device=args.device,
        rounds=args.rounds,
        runtime=args.runtime,
        round_8bit_weights=args.round_8bit_weights,
    )
    _warn_if_busy(args, "before measuring")
    extra = []
    if args.conformance_shapes:
        from hwsbs.testing.cost_models import default_shapes

        extra = default_shapes()
    result = build_profile(
        specs,
        args.out,
        settings,
        threads=args.threads,
        grid=args.grid,
        bits=args.bits,
        group_size=args.group_size,
        max_prune_fraction=args.max_prune_fraction,
        command=_command(args),
        progress=args.progress,
        extra_shapes=extra,
        whole_model_configs=args.whole_model_configs,
        apb_shares=apb_shares,
        channel_split=args.channel_split,
        split_layers=args.split_layers,
    )
    _warn_if_busy(args, "while measuring")
    if result.channel_split is not None:
        console.print(f"channel_split: {result.channel_split.describe()}")
    console.print(
        f"wrote {result.profile_path} (profile {result.profile.name!r}, cost model lut) and "
        f"{result.table_path}: {result.entries} entries for {result.signatures} layer shapes in "
        f"{result.seconds:.0f} s"
    )
    return 0


def _check(args: argparse.Namespace) -> int:
    batches = _check_common(args)
    if len(batches) != 1:
        raise ConfigError("lut check: give one --batch")
    batch = batches[0]
    spec = parse_model(args.model, args)
    from cost_models import cost_model_for
    from hardware_profiles import load_profile
    from hwsbs.lut.machine import warn_if_measured_elsewhere

    for hw in args.hw:  # bad profiles fail before minutes of measuring
        warn_if_measured_elsewhere(cost_model_for(load_profile(hw), args.cost))
    configs = draw_configs(spec, args.configs, args.seed, args.bits, batch)
    load_before = _warn_if_busy(args, "before measuring")
    with progress_bar("measuring configs", remaining=False, disable=not args.progress) as bar:
        task = bar.add_task("check", total=len(configs) + args.repeats)
        measured = measure_configs(
            spec,
            configs,
            batch=batch,
            threads=args.threads,
            warmup=args.warmup,
            repeats=args.repeats,
            backend=args.kernel,
            device=args.device,
            on_step=lambda: bar.update(task, advance=1),
            runtime=args.runtime,
            round_8bit_weights=args.round_8bit_weights,
        )
    load_after = _warn_if_busy(args, "while measuring")
    fits = [fit_profile(hw, measured, batch, args.cost) for hw in args.hw]
    import torch

    settings = {
        "configs": args.configs,
        "seed": args.seed,
        "batch": batch,
        "threads": args.threads or torch.get_num_threads(),
        "device": args.device,
        "kernel": args.kernel,
        "runtime": args.runtime,
        "round_8bit_weights": args.round_8bit_weights,
        "repeats": args.repeats,
        "bits": list(args.bits),
        "command": _command(args),
        "load_average": [load_before, load_after],  # 1-minute, before and after measuring
    }
    report = report_dict(spec, measured, fits, settings)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_check_report(report)
    return 0
