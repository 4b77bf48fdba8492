"""``python -m analysis verify-derivations``: audit the NQM appendix with sympy.

Prints a Markdown report (or writes it with ``--out``) and optionally writes the
machine-readable verdicts with ``--json``. The exit code is 0 whenever the audit
ran, errata included: errata are findings about the paper, not failures.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from analysis import cli_common as common

__all__ = ["add_parser", "run"]


_COMMAND = "verify-derivations"
_SUMMARY = "check every equation of the NQM appendix (17-49) with sympy"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``verify-derivations`` (:func:`analysis.cli_common.add_subcommand`)."""
    return common.add_subcommand(sub, _COMMAND, _SUMMARY, __doc__, _arguments, run)


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="PATH.md",
        help="write the Markdown report here instead of standard output",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        dest="json_path",
        metavar="PATH.json",
        help="also write the verdicts as a JSON list",
    )


def run(args: argparse.Namespace) -> int:
    """Run the audit and write the reports.

    Args:
        args: Parsed options with ``out`` and ``json_path`` (paths or None).

    Returns:
        0 on success.

    Raises:
        FileNotFoundError: If an output directory does not exist.
    """
    # Heavy (sympy) imports only when the command runs.
    from analysis.symbolic.audit import audit_appendix
    from analysis.symbolic.report import audit_to_json, render_markdown
    from nqm.io import write_text_atomic

    for path in (args.out, args.json_path):
        if path is not None and not Path(path).parent.is_dir():
            raise FileNotFoundError(f"directory of {path} does not exist")
    entries = audit_appendix()
    markdown = render_markdown(entries)
    if args.json_path is not None:
        write_text_atomic(args.json_path, audit_to_json(entries) + "\n")
    if args.out is not None:
        write_text_atomic(args.out, markdown)
    else:
        sys.stdout.write(markdown)
    return 0
