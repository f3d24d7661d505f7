"""The ``mstc`` command line: argument parsing only, every command a few lines over the library.

Each area registers its sub-commands from its own module (``register(subparsers)``), listed in
``COMMAND_MODULES``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from mstc.errors import MSTCError

COMMAND_MODULES = [
    "mstc.cli.core",
    "mstc.cli.data",
    "mstc.cli.train",
    "mstc.cli.bench",
    "mstc.cli.hw",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mstc", description="MST-compression for binary neural networks"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MSTCError as exc:
        print(f"mstc: error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"mstc: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
