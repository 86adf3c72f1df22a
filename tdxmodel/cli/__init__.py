"""The ``tdxmodel`` command (layer 4).

Each subcommand lives in its own module here with ``register(subparsers)``; the parser it adds sets
``func(args) -> int``. Errors a user can fix raise ``CliError`` (or a ``ValueError``/``OSError`` from
below): the command prints one line ``tdxmodel: <message>`` to stderr and exits 2, never a traceback.
Spellings of commands, flags, JSON keys and exit codes are contracts (issues 2-6): keep them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

#: Modules providing subcommands, in help order.
SUBCOMMAND_MODULES: List[str] = [
    "td",  # report, extend, verify, show
    "campaign",
    "serve",  # serve, preload-path
    "run",
    "eventlog",
    "bench",
    "quote",  # quote [show|verify], collateral export, tcb, pccs
]


class CliError(Exception):
    """A one-line user-facing error; ``exit_code`` defaults to 2 (bad input)."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse's own code)
        self.exit(2, f"{self.prog}: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tdxmodel", description="Emulate the Intel TDX guest attestation path.")
    from tdxmodel import __version__
    parser.add_argument("--version", action="version", version=f"tdxmodel {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(f"tdxmodel.cli.{name}").register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as e:
        print(f"tdxmodel: {e}", file=sys.stderr)
        return e.exit_code
    except (ValueError, OSError) as e:
        print(f"tdxmodel: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tdxmodel: interrupted", file=sys.stderr)
        return 130
