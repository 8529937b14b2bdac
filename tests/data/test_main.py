"""python -m jmvae_cupy.data: exit codes and one-line errors (downloads served via file://; failures
of a command simulated)."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jmvae_cupy.data import DataError, FileSpec, load_mnist
from jmvae_cupy.data import __main__ as main_module
from jmvae_cupy.data import download as download_module
from jmvae_cupy.data.__main__ import build_parser, main
from jmvae_cupy.data.errors import Terminated

from .synthetic import MNIST_NAMES, synthetic_mnist, write_mnist_dir


def patch_table_to(monkeypatch, mirror):
    """Point the default checksum table at the synthetic files of ``mirror``."""
    table = {}
    for key, name in zip(("train_images", "train_labels", "test_images", "test_labels"), MNIST_NAMES):
        data = (mirror / (name + ".gz")).read_bytes()
        table[key] = FileSpec(name + ".gz", len(data), hashlib.sha256(data).hexdigest(), None)
    monkeypatch.setattr(download_module, "MNIST_FILES", table)


def test_download_mnist_command(tmp_path, monkeypatch, capsys):
    mirror = write_mnist_dir(tmp_path / "mirror", synthetic_mnist(12, 3))
    patch_table_to(monkeypatch, mirror)
    out = tmp_path / "out"
    argv = ["download", "mnist", "--out", str(out), "--mirror", mirror.as_uri() + "/", "--no-progress"]
    assert main(argv) == 0
    assert "MNIST ready" in capsys.readouterr().out
    assert len(load_mnist(out).test_y) == 3
    assert main(argv) == 0  # second run: everything already present
    assert capsys.readouterr().err.count("already present") == 4


def test_errors_are_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    mirror = write_mnist_dir(tmp_path / "mirror", synthetic_mnist(12, 3))
    patch_table_to(monkeypatch, mirror)
    dead = (tmp_path / "nothing").as_uri() + "/"
    code = main(["download", "mnist", "--out", str(tmp_path / "o"), "--mirror", dead, "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: could not download train-images-idx3-ubyte.gz: " + dead)


def test_usage_errors_and_help(capsys):
    assert main([]) == 2
    assert main(["download"]) == 2
    assert main(["download", "mnist"]) == 2  # --out is required
    assert main(["download", "cifar", "--out", "x"]) == 2
    assert main(["--help"]) == 0
    assert "download" in capsys.readouterr().out


def test_parser_has_room_for_more_commands():
    parser = build_parser()
    args = parser.parse_args(["download", "mnist", "--out", "d", "--mirror", "a", "--mirror", "b"])
    assert (args.command, args.dataset, args.mirror) == ("download", "mnist", ["a", "b"])


def test_module_entry_point_runs():
    # python -m jmvae_cupy.data, as a user runs it (a usage error: no network involved)
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "jmvae_cupy.data", "download", "mnist"],
                          capture_output=True, text=True, timeout=60, cwd=repo)
    assert proc.returncode == 2 and "--out" in proc.stderr


@pytest.mark.parametrize("exc,status,line", [
    (OSError(errno.ENOSPC, "No space left on device", "/data/x.gz"), 2, "error: /data/x.gz: No space left on device"),
    (MemoryError("Unable to allocate 9.0 TiB"), 2, "error: out of memory: Unable to allocate 9.0 TiB"),
    (DataError("a\nb"), 2, "error: a b"),
    (KeyboardInterrupt(), 130, "error: interrupted"),
    (Terminated(), 143, "error: terminated"),
])
def test_every_failure_of_a_command_is_one_line_and_a_status(monkeypatch, capsys, exc, status, line):
    def fail(*args, **kwargs):
        raise exc

    monkeypatch.setattr(main_module, "download_mnist", fail)
    assert main(["download", "mnist", "--out", "d", "--no-progress"]) == status
    assert capsys.readouterr().err.strip().splitlines() == [line]


def test_sigterm_is_error_terminated_and_143(monkeypatch, capsys):
    def killed(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # (the handler interrupts this)
        raise AssertionError("SIGTERM was not handled")

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(main_module, "download_mnist", killed)
    assert main(["download", "mnist", "--out", "d", "--no-progress"]) == 143
    assert capsys.readouterr().err.strip().splitlines() == ["error: terminated"]
    assert signal.getsignal(signal.SIGTERM) is before
