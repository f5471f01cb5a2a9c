"""The ``brainalign`` command. Thin: parses arguments, calls the API, prints.

This module is the one place the subcommands are assembled: each area of the package
keeps its own in a ``_cli`` module with a ``register*(subparsers)`` function, and
``_CLI_MODULES`` lists them (module, function), in the order ``--help`` shows them. A
``_cli`` module adds only its own area's subcommands and imports no other ``_cli``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys

from ._version import __version__
from .errors import BrainalignError, os_error_message

_CLI_MODULES = (
    ("brainalign._score_cli", "register"),
    ("brainalign.datasets._cli", "register"),
    ("brainalign.features._cli", "register"),
    ("brainalign.plotting._cli", "register"),
    ("brainalign.sweep._cli", "register"),
    ("brainalign.sweep._plan_cli", "register"),
    ("brainalign.training._cli", "register_train_tiny"),  # makes the checkpoints sweeps read
)


def _doctor(args: argparse.Namespace) -> int:
    from .doctor import report

    print(report())
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    out = run_demo(out_dir=args.out, quick=args.quick)
    print(f"\nDemo finished. Report: {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brainalign",
        description="How brain-like is a language model, layer by layer and checkpoint by checkpoint of its training.",
    )
    parser.add_argument("--version", action="version", version=f"brainalign {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("doctor", help="versions, ridge backends, GPU, cache and data folders")
    p.set_defaults(func=_doctor)

    p = sub.add_parser("demo", help="the whole pipeline on embedded data, offline, in minutes")
    p.add_argument("-o", "--out", default="brainalign-demo", help="output folder (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="a smaller, faster run (used by the tests)")
    p.set_defaults(func=_demo)

    for mod, register in _CLI_MODULES:
        if importlib.util.find_spec(mod.rsplit(".", 1)[0]) and importlib.util.find_spec(mod):
            getattr(importlib.import_module(mod), register)(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except BrainalignError as exc:
        print(f"brainalign: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, read-only, permissions: the path and the reason, not a traceback
        if exc.errno is None:  # not the filesystem (a network error, a model that cannot be found)
            raise
        print(f"brainalign: error: {os_error_message(exc, 'cannot read or write a file')}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
