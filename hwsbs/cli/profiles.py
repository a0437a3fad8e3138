"""``hwsbs profiles``: list, show, validate built-in and custom hardware profiles; print the schema."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cost_models import cost_model_for, get_cost_model_class
from hardware_profiles import (
    HardwareProfile,
    builtin_profile_names,
    load_profile,
    resolve_lookup_table,
    resolve_profile_path,
)
from hardware_profiles.schema import json_schema_text
from hwsbs.errors import ConfigError, CostModelError, HwsbsError, ProfileError

__all__ = ["add_parser", "validate_files", "stdout_console"]


def stdout_console() -> Console:
    """A console on stdout, wide enough for tables when stdout is not a terminal (pipes, tests)."""
    return Console(width=None if sys.stdout.isatty() else 160, highlight=False)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``hwsbs profiles`` and its sub-commands."""
    p = subparsers.add_parser("profiles", help="list, show and validate hardware profiles")
    sub = p.add_subparsers(dest="profiles_command", metavar="ACTION", parser_class=type(p))
    sub.required = True

    q = sub.add_parser("list", help="table of the built-in profiles")
    q.add_argument("--json", action="store_true", help="print JSON instead of a table")
    q.set_defaults(handler=_list)

    q = sub.add_parser("show", help="a profile's key fields (built-in name or file)")
    q.add_argument("profile", metavar="NAME", help="built-in name (a100) or profile file")
    q.add_argument("--yaml", action="store_true", help="print the profile file as it is")
    q.add_argument("--json", action="store_true", help="print the validated profile as JSON")
    q.set_defaults(handler=_show)

    q = sub.add_parser("validate", help="check profile files; one line per file, exit 2 if any is bad")
    q.add_argument("files", metavar="FILE", nargs="+", help="profile files (or built-in names)")
    q.set_defaults(handler=_validate)

    q = sub.add_parser(
        "measure-kernels",
        help="time APB's bitwise kernels on this CPU and fit the binary_kernels block (for --cost apb_cpu)",
    )
    q.add_argument("--into", metavar="FILE", default=None, help="append the block to this profile file")
    q.add_argument("--threads", type=int, default=1, help="torch threads for the dense GEMMs (default 1)")
    q.add_argument("--repeats", type=int, default=7, help="timed calls per kernel and shape (median fitted)")
    q.add_argument("--quick", action="store_true", help="a small shape grid (seconds; for a quick look)")
    q.set_defaults(handler=_measure_kernels)

    q = sub.add_parser("schema", help="print the profile JSON Schema")
    q.add_argument("--output", "-o", metavar="FILE", default=None, help="write it to FILE instead")
    q.set_defaults(handler=_schema)


def _model_summary(profile: HardwareProfile) -> tuple[str, str]:
    """(default cost model name, 'metric (unit)'); the unit is '?' for an unknown model."""
    name = profile.cost_model.name
    try:
        cls = get_cost_model_class(name)
    except CostModelError:
        return name, "?"
    return name, f"{cls.metric} ({cls.unit})"


def _list(args: argparse.Namespace) -> int:
    rows = []
    for name in builtin_profile_names():
        profile = load_profile(name)
        model, metric = _model_summary(profile)
        rows.append(
            {
                "name": profile.name,
                "kind": profile.kind,
                "cost_model": model,
                "metric": metric,
                "description": profile.description,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title="Built-in hardware profiles (--hw NAME)")
    for column in ("name", "kind", "cost model", "metric (unit)", "description"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(r["name"], r["kind"], r["cost_model"], r["metric"], r["description"])
    stdout_console().print(table)
    return 0


def _fmt_number(value: float) -> str:
    return f"{value:.4g}"


def _show(args: argparse.Namespace) -> int:
    path = resolve_profile_path(args.profile)
    if args.yaml:
        sys.stdout.write(path.read_text(encoding="utf-8"))
        return 0
    profile = load_profile(path)
    if args.json:
        print(json.dumps(_profile_dict(profile), indent=2))
        return 0
    console = stdout_console()
    model, metric = _model_summary(profile)
    params = profile.cost_model.model_dump(exclude={"name"})
    knobs = ", ".join(f"{k}={v}" for k, v in params.items()) or "no parameters"
    console.print(f"[bold]{profile.name}[/bold] ({profile.kind}): {profile.description}")
    console.print(f"file: {path}")
    console.print(f"default cost model: {model}, {metric}; {knobs}")
    if profile.clock_hz is not None:
        console.print(f"clock: {_fmt_number(profile.clock_hz / 1e6)} MHz")
    if profile.precisions:
        table = Table(title=f"executed precisions (fallback: {profile.fallback})")
        for column in ("w/a bits", "format", "ops/s", "channel tile", "label"):
            table.add_column(column)
        for e in profile.precisions:
            tile = e.channel_tile if e.channel_tile is not None else profile.channel_tile
            table.add_row(f"{e.w_bits}/{e.a_bits}", e.number_format, _fmt_number(e.ops_per_s), str(tile), e.label)
        console.print(table)
    for m in profile.memory:
        size = f", {_fmt_number(m.size_bytes / 1e9)} GB" if m.size_bytes else ""
        console.print(f"memory {m.name}: {_fmt_number(m.bandwidth_bytes_per_s / 1e9)} GB/s{size}")
    if profile.array is not None:
        fields = profile.array.model_dump(exclude_none=True)
        console.print("array: " + ", ".join(f"{k}={v}" for k, v in fields.items()))
    if profile.energy is not None:
        console.print("energy figures: " + ", ".join(f"{k}={v}" for k, v in profile.energy.model_dump().items()))
    if profile.lookup_table is not None:
        ref = profile.lookup_table if isinstance(profile.lookup_table, str) else "inline"
        console.print(f"lookup table: {ref}")
    console.print(f"efficiency: compute {profile.efficiency.compute}, memory {profile.efficiency.memory}")
    console.print("sources:")
    for s in profile.sources:
        console.print(f"  - {s}", soft_wrap=True)
    return 0


def _check_one(file: str) -> str:
    """Validate one profile completely; return its 'ok' summary or raise HwsbsError."""
    profile = load_profile(file)
    if isinstance(profile.lookup_table, str):
        resolve_lookup_table(profile)  # a referenced table must exist and validate too
    try:
        model = cost_model_for(profile)  # the default model must be buildable from the device fields
    except CostModelError as exc:
        raise ProfileError(f"{file}: {exc}") from None
    return f"ok {file} ({profile.name}: {profile.kind}, {model.name} in {model.unit})"


def validate_files(files: list[str]) -> tuple[list[str], list[str]]:
    """(ok lines, error lines) for ``files``; each error line is ``FILE: field: problem``."""
    ok: list[str] = []
    bad: list[str] = []
    for file in files:
        try:
            ok.append(_check_one(file))
        except HwsbsError as exc:
            message = " ".join(str(exc).split())  # exactly one line per bad file
            bad.append(message if message.startswith(str(file)) else f"{file}: {message}")
    return ok, bad


def _validate(args: argparse.Namespace) -> int:
    ok, bad = validate_files(list(args.files))
    for line in ok:
        print(line)
    for line in bad:
        print(line, file=sys.stderr)
    return 2 if bad else 0


def _measure_kernels(args: argparse.Namespace) -> int:
    from hwsbs.apb.calibrate import (
        DEFAULT_SHAPES,
        QUICK_SHAPES,
        append_to_profile,
        kernels_yaml,
        measure_binary_kernels,
    )

    for flag, value in (("--threads", args.threads), ("--repeats", args.repeats)):
        if value < 1:
            raise ConfigError(f"{flag}: expected a positive integer, got {value}")
    if args.into is not None:
        load_profile(args.into)  # a bad target file fails before minutes of timing
    kernels = measure_binary_kernels(QUICK_SHAPES if args.quick else DEFAULT_SHAPES, args.repeats, args.threads)
    if args.into is None:
        sys.stdout.write(kernels_yaml(kernels))
    else:
        append_to_profile(args.into, kernels)
        print(f"{args.into}: binary_kernels measured on {kernels.measured_on} ({kernels.fit})")
    return 0


def _schema(args: argparse.Namespace) -> int:
    text = json_schema_text()
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def _profile_dict(profile: HardwareProfile) -> dict[str, Any]:
    """The profile as plain data (for tools reading ``profiles show`` programmatically)."""
    return profile.model_dump(mode="json", exclude_none=True)
