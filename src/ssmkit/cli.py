"""``ssmkit <command>``: the command-line entry point.

Each subcommand lives in ``ssmkit/commands/<name>.py`` with ``add_parser(subparsers)`` and
``run(args) -> int``. ``ssmkit`` with no command runs ``ssmkit demo``. A failure prints one line
naming its cause and exits with status 2; ``--debug`` (anywhere on the line) shows the traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

# Order is the order shown in --help; `ssmkit` alone runs DEFAULT_COMMAND.
DEFAULT_COMMAND = "demo"
COMMANDS = ("demo", "hippo", "train", "evaluate", "compare", "recipes", "generate", "tasks", "inspect", "reduce")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssmkit",
        description="State-space sequence models from HiPPO to Mamba. Run without a command for the demo.",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"ssmkit.commands.{name}").add_parser(sub)
    return parser


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    known = (ValueError, TypeError, OSError, ImportError, ArithmeticError)
    return text if isinstance(exc, known) else f"{type(exc).__name__}: {text} (run with --debug for the traceback)"


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = [DEFAULT_COMMAND if DEFAULT_COMMAND in COMMANDS else COMMANDS[0]] + argv
    args = parser.parse_args(argv)
    module = importlib.import_module(f"ssmkit.commands.{args.command}")
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"ssmkit {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - every failure is one clear line unless --debug
        if debug:
            raise
        print(f"ssmkit {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
