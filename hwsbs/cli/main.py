"""``hwsbs`` entry point: subcommands, and one-line errors with exit code 2 instead of tracebacks."""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import NoReturn

from hwsbs.errors import HwsbsError

__all__ = ["main", "build_parser", "OneLineArgumentParser"]

#: Modules under ``hwsbs.cli`` that each define ``add_parser(subparsers)``; order = help order.
COMMAND_MODULES: tuple[str, ...] = ("search", "profiles", "cost", "tune", "pareto", "report", "export", "lut")


#: What Ctrl-C leaves behind, per command; a subparser may set its own with
#: ``set_defaults(on_interrupt=...)``. Commands without one just say "interrupted".
ON_INTERRUPT: dict[str, str] = {
    "search": "finished epochs are checkpointed; continue with the same command plus --resume",
    "tune": "finished trials are stored in the study; re-run the same command to continue it",
    "pareto": "finished trials are stored in the study; re-run the same command to continue it",
}


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse prints usage plus the error; hwsbs prints only the error line, naming the argument."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The full ``hwsbs`` parser with every subcommand."""
    parser = OneLineArgumentParser(
        prog="hwsbs",
        description="Hardware-aware mixed-precision quantisation and pruning with Single-path Bit Sharing.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks (for developers)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineArgumentParser)
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"hwsbs.cli.{name}").add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (0 ok, 2 bad input, 1 internal error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    parser = build_parser()
    args = parser.parse_args(argv)
    shown = warnings.formatwarning
    if not debug:  # a warning is one line too, naming the command (its source line helps no user)
        warnings.formatwarning = _warning_line(args.command)
    try:
        return int(args.handler(args) or 0)
    except (HwsbsError, OSError) as exc:  # OSError: an unusable path (--out is a file, no permission, ...)
        if debug:
            raise
        print(f"hwsbs {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = getattr(args, "on_interrupt", None) or ON_INTERRUPT.get(args.command)
        print(f"hwsbs {args.command}: interrupted" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return 130
    except SystemExit as exc:  # no handler exits: user code (a model's forward, a plugin) called sys.exit
        if debug:
            raise
        print(
            f"hwsbs {args.command}: error: user code (a --model or a cost-model plugin) called "
            f"sys.exit({exc.code!r}) during the command",
            file=sys.stderr,
        )
        return 2
    finally:
        warnings.formatwarning = shown


def _warning_line(command: str) -> Callable[..., str]:
    def format_warning(message: Warning | str, *_: object, **__: object) -> str:
        return f"hwsbs {command}: warning: {_one_line(Exception(str(message)))}\n"

    return format_warning


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None:
        text = f"{exc.filename}: {exc.strerror or exc}" + (f" ({exc.filename2})" if exc.filename2 else "")
    else:
        text = str(exc)
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


if __name__ == "__main__":
    sys.exit(main())
