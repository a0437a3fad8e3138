"""``hwsbs`` entry point: subcommands, and one-line errors with exit code 2 instead of tracebacks."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from hwsbs.errors import HwsbsError

__all__ = ["main", "build_parser", "OneLineArgumentParser"]

#: Modules under ``hwsbs.cli`` that each define ``add_parser(subparsers)``; order = help order.
COMMAND_MODULES: tuple[str, ...] = ("search", "profiles", "cost", "tune", "pareto", "report")


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse prints usage plus the error; hwsbs prints only the error line, naming the argument."""

    def error(self, message: str) -> None:  # type: ignore[override]
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
    try:
        return int(args.handler(args) or 0)
    except HwsbsError as exc:
        if debug:
            raise
        print(f"hwsbs {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hwsbs {args.command}: interrupted; finished work is checkpointed (use --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
