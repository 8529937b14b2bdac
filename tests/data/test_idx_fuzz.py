"""Fuzzing the IDX reader: any byte string is either read correctly or rejected with DataError.

"Correctly" is checked against an independent reference parser below (whole-buffer gzip
decompression, then the header), so a mutated file the reader accepts must decode to exactly the
array the bytes describe.  Examples are bounded and small, so this runs in a few seconds.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import tempfile
import zlib

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jmvae_cupy.data import DataError, read_idx

SETTINGS = settings(max_examples=250, deadline=1000, suppress_health_check=[HealthCheck.too_slow])


def reference_parse(data: bytes):
    """What a valid uint8 IDX byte string (possibly gzipped) contains, or None if it is invalid."""
    if data[:2] == b"\x1f\x8b":
        try:  # GzipFile, like the reader, tolerates zero padding after a member
            data = gzip.GzipFile(fileobj=io.BytesIO(data)).read()
        except (OSError, EOFError, zlib.error):
            return None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8 or data[3] == 0:
        return None
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        return None
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    count = int(np.prod(shape, dtype=object))
    if len(data) != 4 + 4 * ndim + count:
        return None
    return np.frombuffer(data[4 + 4 * ndim :], dtype=np.uint8).reshape(shape)


def valid_idx(shape, seed=0) -> bytes:
    a = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    return bytes([0, 0, 8, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + a.tobytes()


SEEDS = [valid_idx((6,)), valid_idx((3, 4, 4)), valid_idx((2, 5))]
SEEDS += [gzip.compress(s, mtime=0) for s in SEEDS]


def check(data: bytes) -> None:
    """Write ``data`` to a file, read it, and compare with the reference parser."""
    fd, name = tempfile.mkstemp(suffix=".gz")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        expected = reference_parse(data) if data else None
        try:
            got = read_idx(name)
        except DataError as e:
            assert "\n" not in str(e)
            assert expected is None, f"valid input rejected: {e}"
            return
        assert expected is not None, "invalid input accepted"
        assert got.dtype == np.uint8 and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)
    finally:
        os.unlink(name)


@st.composite
def mutated(draw):
    """A valid seed file with a few random edits: flips, overwrites, cuts, insertions, appends."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "append", "truncate"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "append":
            data += draw(st.binary(min_size=1, max_size=8))
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


@SETTINGS
@given(st.binary(max_size=64))
def test_random_bytes(data):
    check(data)


@SETTINGS
@given(st.binary(max_size=48))
def test_random_bytes_behind_a_valid_prefix(tail):
    # a plausible header start makes the reader get further than the magic check
    check(b"\0\0\x08" + tail)
    check(gzip.compress(b"\0\0\x08" + tail, mtime=0))


@SETTINGS
@given(mutated())
def test_mutated_valid_files(data):
    check(data)


def test_seeds_are_valid():
    for s in SEEDS:
        check(s)
        assert reference_parse(s) is not None
