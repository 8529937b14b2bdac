"""Command line of the data package: ``python -m jmvae_cupy.data COMMAND DATASET ...``.

Commands:

    download mnist --out DIR [--mirror URL ...] [--no-progress]
        fetch the four full-MNIST files into DIR, verifying sizes, sha256 and md5; files
        already present and correct are kept, so an interrupted run can simply be repeated.

    prepare celeba SRC_DIR --out FILE.h5 [--split paper|official] [--on-error skip|stop] [--size 64|32]
        crop (centred square) and resize (LANCZOS) the aligned CelebA images into one HDF5 file
        (see jmvae_cupy/data/celeba_prepare.py and docs/celeba.md); an interrupted or failed run (Ctrl-C,
        SIGTERM, a full disk) continues from FILE.h5.partial when repeated.  A finished FILE.h5
        is left alone if it was made from the same sources with the same options, else refused.

    check FILE [--config MODEL.toml]
        validate a paired data file of your own (.h5 or .npz with x, w, optional split and w_names:
        docs/data.md) and print its summary and the model train would build for it (the config
        inferred from the data, or --config's over it, checked against the data).

Each command is a subparser registered by one ``_add_<command>`` function listed in
``_COMMANDS``; each dataset under it is a sub-subparser whose ``func`` default receives the
parsed arguments and returns an exit status.  A new command is one more such function appended
to ``_COMMANDS``.

Exit status (each error is one ``error: ...`` line on stderr; ``main`` runs the command through
:func:`jmvae_cupy.cli.guarded`): 0 success; 2 bad usage, a
:class:`~jmvae_cupy.data.errors.DataError`, a failing file system (``error: FILE: REASON``) or
memory; 130 interrupted (Ctrl-C); 143 terminated (SIGTERM: ``error: terminated``).  Ctrl-C and
SIGTERM both keep the work done so far.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from pathlib import Path

from ..cli import guarded
from .download import MNIST_MIRRORS, download_mnist
from .errors import DataError, Terminated

#: Exit statuses (see the module docstring).
USAGE_OR_DATA_ERROR = 2
TERMINATED = 143  # 128 + SIGTERM, as a shell reports it


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


def _run_prepare_celeba(args: argparse.Namespace) -> int:
    from .celeba_prepare import prepare_celeba  # noqa: PLC0415  (the CelebA preparer only for this command)

    prepare_celeba(args.src, args.out, split=args.split, on_error=args.on_error, size=args.size,
                   progress=not args.no_progress, chunk=args.chunk)
    return 0


def _add_prepare(commands) -> None:
    """``prepare DATASET``: convert a data set as distributed into the library's file format."""
    prepare = commands.add_parser("prepare", help="convert a downloaded data set into an HDF5 file")
    datasets = prepare.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    celeba = datasets.add_parser("celeba", help="CelebA (img_align_celeba/ and the attribute lists) -> HDF5")
    celeba.add_argument("src", type=Path, metavar="SRC_DIR",
                        help="folder with img_align_celeba/, list_attr_celeba.txt (and list_eval_partition.txt)")
    celeba.add_argument("--out", required=True, type=Path, metavar="FILE.h5", help="the HDF5 file to write")
    celeba.add_argument("--split", choices=["paper", "official"], default="paper",
                        help="paper: random 90/10 with a fixed seed (default); official: partitions 0+1 / 2")
    celeba.add_argument("--on-error", choices=["skip", "stop"], default="skip",
                        help="a bad image or row is skipped and counted (default) or stops the run")
    celeba.add_argument("--size", type=int, choices=[64, 32], default=64, help="image side in pixels (default 64)")
    celeba.add_argument("--chunk", type=int, default=256, help=argparse.SUPPRESS)
    celeba.add_argument("--no-progress", action="store_true", help="no progress bar")
    celeba.set_defaults(func=_run_prepare_celeba)


def _run_check(args: argparse.Namespace) -> int:
    from ..models import build_model  # noqa: PLC0415  (the model stack only for this command)
    from ..models.config import arch_from_model, infer_config, model_record, read_config_file  # noqa: PLC0415
    from .paired import open_paired  # noqa: PLC0415

    d = open_paired(args.file)
    user = read_config_file(args.config) if args.config else None
    base = infer_config(d.x_shape, d.w_dim, d.x_stats, d.w_stats)
    rec = model_record(user, d.x_shape, d.w_dim, base, d.x_stats, d.w_stats)
    model = build_model(arch_from_model(rec), (user or {}).get("variant") or base["variant"], xp=None,
                        device="cpu")  # builds every network: a shape that does not fit is found here
    print(d.summary())
    print(f"model ({'--config ' + str(args.config) + ', the rest' if user else 'every key'} inferred from the data; "
          f"{model.variant}, latent {rec['latent']}, {sum(int(p.size) for p in model.params.values()):,} parameters)")
    for m in ("x", "w"):
        r = rec[m]
        var = f" (variance {r['variance']:g})" if "variance" in r else ""
        print(f"  {m}  {r['likelihood']}{var}; encoder {r['encoder'] or '-'}; decoder "
              f"{getattr(model.arch, 'dec_' + m)}")
    if rec["joint"]:
        print(f"  joint  {rec['joint']}")
    return 0


def _add_check(commands) -> None:
    """``check FILE``: validate a paired data file and print its summary."""
    check = commands.add_parser("check", help="validate a paired data file (.h5 / .npz) and print its summary")
    check.add_argument("file", type=Path, metavar="FILE", help="the paired file: x, w, optional split and w_names")
    check.add_argument("--config", type=Path, metavar="MODEL.toml",
                       help="a model config (.toml / .json) to check against the data")
    check.set_defaults(func=_run_check)


#: One function per top-level command; each adds its subparser to the ``commands`` action.
_COMMANDS = [_add_download, _add_prepare, _add_check]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: one subparser per command, one sub-subparser per dataset."""
    parser = argparse.ArgumentParser(
        prog="python -m jmvae_cupy.data", description="Data sets for jmvae_cupy: download, prepare, check."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _COMMANDS:
        add(commands)
    return parser


def _raise_terminated(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def _sigterm_raises():
    """SIGTERM raises :class:`Terminated` while the command runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if old is None else old)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status instead of exiting (testable)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, message already printed)
        return e.code if isinstance(e.code, int) else USAGE_OR_DATA_ERROR

    def body() -> int:
        try:
            return int(args.func(args))
        except Terminated:
            print("error: terminated", file=sys.stderr)
            return TERMINATED

    from ..models.base import ModelError  # noqa: PLC0415  (check: a config that does not fit, ConfigError)
    from ..nets import NetSpecError  # noqa: PLC0415

    with _sigterm_raises():
        return guarded(body, known=(DataError, ModelError, NetSpecError), status=USAGE_OR_DATA_ERROR)


if __name__ == "__main__":
    sys.exit(main())
