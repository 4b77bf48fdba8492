"""What the ``python -m analysis`` commands share: their parser preamble, the run
options, the versions in a manifest and the output folders they own.

Each study command writes two folders, its tables (``--out``) and its figures
(``--figures``), each opened with :func:`nqm.run_folder.open_run_folder`: one
run per folder at a time, stale temporaries removed, the previous manifest
removed before anything is written and a checksummed manifest written last.
The folders are opened only after every option has been validated, so a bad
option never leaves an empty folder behind.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import os
import platform
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nqm.run_folder import RunFolder

__all__ = [
    "BASE_PACKAGES",
    "add_run_options",
    "add_subcommand",
    "config_from_options",
    "output_folders",
    "package_versions",
]


#: argparse dests of :func:`add_run_options` that are config fields (unset: None).
RUN_OPTION_FIELDS: tuple[str, ...] = (
    "workers",
    "executor",
    "ray_address",
    "out",
    "figures",
)

#: Packages whose versions every study's manifest records.
BASE_PACKAGES: tuple[str, ...] = ("batchscale", "numpy", "scipy", "torch", "matplotlib")


def add_subcommand(
    sub: argparse._SubParsersAction,
    name: str,
    summary: str,
    doc: str | None,
    arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
) -> argparse.ArgumentParser:
    """Register the subcommand ``name``: its parser, its options and its runner.

    Args:
        sub: the subparsers object of the ``python -m analysis`` parser.
        name: the command.
        summary: the one line of ``python -m analysis --help``.
        doc: the module docstring, shown (as written) by ``NAME --help``.
        arguments: adds the command's options to its parser.
        run: the command (the parser's ``func`` default).

    Returns:
        The subcommand's parser.
    """
    parser = sub.add_parser(
        name,
        help=summary,
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    arguments(parser)
    parser.set_defaults(func=run)
    return parser


def add_run_options(
    parser: argparse.ArgumentParser,
    *,
    out_default: str,
    figures_default: str,
    quick_help: str,
    workers_help: str,
) -> argparse._ArgumentGroup:
    """Add the ``run`` group the study commands share.

    ``--out``, ``--figures``, ``--config``, ``--quick``, ``--no-figures``,
    ``--progress``, ``--workers``, ``--executor`` and ``--ray-address``; the
    values stay strings (``None`` when unset), resolved with the config file.

    Returns:
        The group, for the command's own run options.
    """
    group = parser.add_argument_group("run")
    group.add_argument(
        "--out", help=f"tables, config and manifest (default {out_default})"
    )
    group.add_argument(
        "--figures", help=f"figure directory (default {figures_default})"
    )
    group.add_argument(
        "--config", metavar="FILE.toml", help="TOML file of the same keys"
    )
    group.add_argument("--quick", action="store_true", help=quick_help)
    group.add_argument("--workers", help=workers_help)
    group.add_argument(
        "--executor",
        help="where the work runs: local processes or ray tasks (default local)",
    )
    group.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="Ray cluster to join with --executor ray (default: start a local Ray "
        "with --workers CPUs)",
    )
    group.add_argument(
        "--no-figures", action="store_true", help="write the tables only"
    )
    group.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="tqdm progress bar (default: only on a terminal)",
    )
    return group


def config_from_options(
    args: argparse.Namespace, config_cls: type, resolve: Callable[..., Any]
) -> Any:
    """Resolve defaults < ``--quick`` < ``--config`` file < explicit options.

    Every option whose dest is a field of ``config_cls`` overrides it (``None``:
    unset).

    Args:
        args: the parsed options.
        config_cls: the frozen config dataclass.
        resolve: its resolver, called as
            ``resolve(quick=..., config_file=..., overrides=...)``.

    Returns:
        The resolved config.

    Raises:
        ValueError: naming the offending option or value.
    """
    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(config_cls)
        if hasattr(args, f.name)
    }
    return resolve(
        quick=bool(getattr(args, "quick", False)),
        config_file=getattr(args, "config", None),
        overrides=overrides,
    )


def package_versions(names: Sequence[str]) -> dict[str, str | None]:
    """Python's and each installed package's version (``None``: not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


@contextlib.contextmanager
def output_folders(
    out: str | os.PathLike,
    figures: str | os.PathLike | None,
    *,
    command: str,
    resume: bool = False,
) -> Iterator[tuple[RunFolder, RunFolder | None]]:
    """Own the tables folder and the figures folder of one run.

    Args:
        out: the tables folder.
        figures: the figures folder (``None``: no figures); the same folder as
            ``out`` is opened once.
        command: the command (named to a second run that finds a folder in use).
        resume: keep the verified files of the previous manifest of ``out``.

    Yields:
        ``(tables, figures)`` run folders (``figures`` is ``None`` without
        figures, and ``tables`` itself when both are one folder).

    Raises:
        ValueError, FolderInUseError, CorruptFileError: as
            :func:`nqm.run_folder.open_run_folder`.
    """
    # imported here: building the parser of every command stays light
    from nqm.run_folder import open_run_folder

    with open_run_folder(out, command=command, resume=resume) as tables:
        if figures is None:
            yield tables, None
        elif Path(figures).resolve() == Path(out).resolve():
            yield tables, tables
        else:
            with open_run_folder(figures, command=command) as figs:
                yield tables, figs
