"""Command line of the data package: ``python -m jmvae_cupy.data COMMAND DATASET ...``.

Commands:

    download mnist --out DIR [--mirror URL ...] [--no-progress]
        fetch the four full-MNIST files into DIR, verifying sizes, sha256 and md5; files
        already present and correct are kept, so an interrupted run can simply be repeated.

Each command is a subparser registered by one ``_add_<command>`` function listed in
``_COMMANDS``; each dataset under it is a sub-subparser whose ``func`` default receives the
parsed arguments and returns an exit status.  A new command (e.g. ``prepare celeba SRC --out
FILE.h5``) is one more such function appended to ``_COMMANDS``.

Exit status: 0 success, 2 bad usage or a :class:`~jmvae_cupy.data.errors.DataError` (printed
as one ``error: ...`` line on stderr), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .download import MNIST_MIRRORS, download_mnist
from .errors import DataError


def _run_download_mnist(args: argparse.Namespace) -> int:
    mirrors = tuple(args.mirror) if args.mirror else MNIST_MIRRORS
    paths = download_mnist(args.out, mirrors=mirrors, progress=not args.no_progress)
    print(f"MNIST ready in {args.out} ({len(paths)} files): load it with load_mnist({str(args.out)!r})")
    return 0


def _add_download(commands) -> None:
    """``download DATASET``: fetch a public data set, verified by checksums."""
    download = commands.add_parser("download", help="download a data set and verify its checksums")
    datasets = download.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    mnist = datasets.add_parser("mnist", help="the four full-MNIST IDX files (about 11 MB)")
    mnist.add_argument("--out", required=True, type=Path, metavar="DIR", help="destination directory")
    mnist.add_argument(
        "--mirror", action="append", metavar="URL",
        help="URL prefix to fetch from instead of the built-in mirrors (repeatable; file:// works)",
    )
    mnist.add_argument("--no-progress", action="store_true", help="no progress bar")
    mnist.set_defaults(func=_run_download_mnist)


#: One function per top-level command; each adds its subparser to the ``commands`` action.
_COMMANDS = [_add_download]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: one subparser per command, one sub-subparser per dataset."""
    parser = argparse.ArgumentParser(
        prog="python -m jmvae_cupy.data", description="Data sets for jmvae_cupy: download, prepare."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _COMMANDS:
        add(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status instead of exiting (testable)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, message already printed)
        return e.code if isinstance(e.code, int) else 2
    try:
        return int(args.func(args))
    except DataError as e:
        print("error: " + " ".join(str(e).splitlines()), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
