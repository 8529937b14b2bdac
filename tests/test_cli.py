"""jmvae_cupy.cli.guarded: each handled kind of error is one line on stderr and its exit status."""

import errno

import numpy as np
import pytest

from jmvae_cupy.cli import INTERRUPTED, guarded, os_error_message


class Known(Exception):
    pass


def raiser(exc):
    def body():
        raise exc

    return body


@pytest.mark.parametrize("exc, status, text", [
    (Known("bad\n  input"), 3, "error: bad input\n"),
    (OSError(errno.ENOSPC, "No space left on device", "/x/ckpt.h5"), 3, "error: /x/ckpt.h5: No space left on device\n"),
    (PermissionError(errno.EACCES, "Permission denied", "ro/a.png"), 3, "error: ro/a.png: Permission denied\n"),
    (KeyboardInterrupt(), INTERRUPTED, "error: interrupted\n"),
])
def test_handled_errors_are_one_line(capsys, exc, status, text):
    cleaned = []
    assert guarded(raiser(exc), (Known,), status=3, on_error=lambda: cleaned.append(1)) == status
    out = capsys.readouterr()
    assert out.err == text and out.out == "" and cleaned == [1]


def test_numpy_allocation_failure_is_one_line(capsys):
    def body():
        np.empty((2**20, 2**30), dtype=np.float32)  # 4 PiB: refused at once, nothing touched

    assert guarded(body) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: out of memory: Unable to allocate") and err.count("\n") == 1


def test_success_and_bugs_pass_through():
    assert guarded(lambda: 0, (Known,)) == 0
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        guarded(lambda: 1 / 0, (Known,))


def test_os_error_without_a_file_name():
    assert os_error_message(OSError(errno.EIO, "Input/output error")) == "Input/output error"
    assert os_error_message(OSError("plain")) == "plain"


def test_jmvae_traceback_shows_the_traceback_above_the_line(capsys, monkeypatch):
    body = raiser(OSError(errno.ENOENT, "No such file or directory", "x.h5"))
    assert guarded(body) == 1
    assert capsys.readouterr().err == "error: x.h5: No such file or directory\n"
    monkeypatch.setenv("JMVAE_TRACEBACK", "1")
    assert guarded(body) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert err.endswith("error: x.h5: No such file or directory\n")


@pytest.mark.parametrize("argv", [["jmvae_cupy.gradcheck", "--list"], ["jmvae_cupy.generate", "--help"]])
def test_a_closed_stdout_ends_the_command_quietly(argv):
    """`python -m jmvae_cupy.gradcheck --list | head` : the reader goes away first; the command exits
    0 with nothing on stderr (it printed 'error: Broken pipe' and exited 1)."""
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-m", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # before the command has written anything: every write meets a closed pipe
    err = p.stderr.read()
    assert p.wait() == 0 and err == b""


def test_a_broken_pipe_of_a_named_file_is_still_an_error(capsys):
    def body():
        raise BrokenPipeError(32, "Broken pipe", "/tmp/fifo")
    assert guarded(body) == 1
    assert capsys.readouterr().err == "error: /tmp/fifo: Broken pipe\n"
