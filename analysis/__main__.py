"""Command line: ``python -m analysis <command> [options]``.

Each command lives in its own module that exposes ``add_parser(subparsers)``; the
parser it registers sets ``func`` to a callable taking the parsed namespace and
returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command name -> module implementing it (imported lazily, so that one command's
# heavy imports never slow down another).
COMMANDS: dict[str, str] = {
    "nqm-scaling": "analysis.cli_scaling",
    "net-scaling": "analysis.cli_net_scaling",
    "verify-derivations": "analysis.cli_verify",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for module_name in COMMANDS.values():
        importlib.import_module(module_name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # a folder in use by another run (nqm.run_folder.FolderInUseError) is a
    # RuntimeError; caught by name so that a bug elsewhere keeps its traceback
    from nqm.run_folder import FolderInUseError

    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, OSError, FolderInUseError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
