"""IDX reader/writer: round trips, and every kind of broken or hostile file -> DataError."""

from __future__ import annotations

import gzip
import os
import struct
import time
import tracemalloc

import numpy as np
import pytest

from jmvae_cupy.data import (
    IMAGES_MAGIC,
    LABELS_MAGIC,
    DataError,
    read_idx,
    read_idx_images,
    read_idx_labels,
    write_idx,
)


def idx_bytes(array: np.ndarray, dtype_code: int = 0x08) -> bytes:
    """Raw IDX bytes, built by hand (independently of write_idx)."""
    return bytes([0, 0, dtype_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


@pytest.fixture
def images():
    return np.random.default_rng(1).integers(0, 256, (5, 28, 28), dtype=np.uint8)


@pytest.fixture
def labels():
    return np.array([0, 9, 3, 3, 7], dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("use_gzip", [True, False])
@pytest.mark.parametrize("shape", [(7,), (0,), (3, 4), (5, 28, 28), (2, 3, 4, 5)])
def test_round_trip(tmp_path, use_gzip, shape):
    a = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    path = write_idx(tmp_path / "a.idx", a, gzip=use_gzip)
    b = read_idx(path)
    assert b.dtype == np.uint8 and b.shape == shape
    np.testing.assert_array_equal(a, b)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == use_gzip
    assert os.listdir(tmp_path) == ["a.idx"]  # no temporary file left behind


def test_written_bytes_are_the_standard_format(tmp_path, images, labels):
    write_idx(tmp_path / "i", images, gzip=False)
    write_idx(tmp_path / "l.gz", labels, gzip=True)
    raw = (tmp_path / "i").read_bytes()
    assert struct.unpack(">I", raw[:4])[0] == IMAGES_MAGIC == 2051
    assert struct.unpack(">3I", raw[4:16]) == (5, 28, 28)
    assert raw == idx_bytes(images)
    unzipped = gzip.decompress((tmp_path / "l.gz").read_bytes())
    assert struct.unpack(">I", unzipped[:4])[0] == LABELS_MAGIC == 2049
    assert unzipped == idx_bytes(labels)


def test_gzip_output_is_deterministic(tmp_path, images):
    write_idx(tmp_path / "a.gz", images)
    time.sleep(0.01)
    write_idx(tmp_path / "b.gz", images)
    assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()


def test_typed_readers(tmp_path, images, labels):
    write_idx(tmp_path / "i.gz", images)
    write_idx(tmp_path / "l.gz", labels)
    np.testing.assert_array_equal(read_idx_images(tmp_path / "i.gz"), images)
    np.testing.assert_array_equal(read_idx_labels(tmp_path / "l.gz"), labels)
    with pytest.raises(DataError, match="2049.*expected 3 .magic 2051"):
        read_idx_images(tmp_path / "l.gz")
    with pytest.raises(DataError, match="2051.*expected 1 .magic 2049"):
        read_idx_labels(tmp_path / "i.gz")


def test_gzip_detected_by_content_not_name(tmp_path, labels):
    write_idx(tmp_path / "raw_named.gz", labels, gzip=False)
    write_idx(tmp_path / "gzip_named.idx", labels, gzip=True)
    np.testing.assert_array_equal(read_idx(tmp_path / "raw_named.gz"), labels)
    np.testing.assert_array_equal(read_idx(tmp_path / "gzip_named.idx"), labels)


def test_write_overwrites_atomically(tmp_path, labels):
    path = tmp_path / "l.gz"
    write_idx(path, labels)
    write_idx(path, labels[::-1])
    np.testing.assert_array_equal(read_idx(path), labels[::-1])
    with pytest.raises(DataError, match="uint8 only"):
        write_idx(path, np.array([1.5]))
    np.testing.assert_array_equal(read_idx(path), labels[::-1])  # old file untouched
    assert os.listdir(tmp_path) == ["l.gz"]


def test_write_accepts_integers_in_range_and_rejects_the_rest(tmp_path):
    write_idx(tmp_path / "ok", np.array([0, 255], dtype=np.int64))
    np.testing.assert_array_equal(read_idx(tmp_path / "ok"), [0, 255])
    for bad in (np.array([256]), np.array([-1]), np.array([0.5]), np.array(3)):
        with pytest.raises(DataError):
            write_idx(tmp_path / "bad", bad)
    with pytest.raises(DataError, match="cannot write"):
        write_idx(tmp_path / "no" / "such" / "dir" / "x", np.zeros(3, np.uint8))


# ---------------------------------------------------------------------------------------------
# hostile inputs: every one is a DataError whose one-line message names the file


def write(tmp_path, name, data: bytes, use_gzip: bool):
    path = tmp_path / name
    path.write_bytes(gzip.compress(data, mtime=0) if use_gzip else data)
    return path


def assert_rejected(path, match, reader=read_idx):
    with pytest.raises(DataError, match=match) as info:
        reader(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


@pytest.mark.parametrize("use_gzip", [True, False])
class TestHostile:
    def test_wrong_magic(self, tmp_path, labels, use_gzip):
        data = idx_bytes(labels)
        assert_rejected(write(tmp_path, "m", b"\x01" + data[1:], use_gzip), "not an IDX file")
        assert_rejected(write(tmp_path, "t", b"PK\x03\x04" + data[4:], use_gzip), "not an IDX file")

    def test_wrong_dtype_code(self, tmp_path, labels, use_gzip):
        assert_rejected(write(tmp_path, "d", idx_bytes(labels, dtype_code=0x0D), use_gzip), "dtype code 0x0d")

    def test_zero_dimensions(self, tmp_path, use_gzip):
        assert_rejected(write(tmp_path, "z", b"\0\0\x08\0" + b"\x05", use_gzip), "0 dimensions")

    def test_truncated_header(self, tmp_path, images, use_gzip):
        assert_rejected(write(tmp_path, "h2", idx_bytes(images)[:2], use_gzip), "truncated")
        assert_rejected(write(tmp_path, "h9", idx_bytes(images)[:9], use_gzip), "truncated")

    def test_truncated_payload(self, tmp_path, images, use_gzip):
        assert_rejected(write(tmp_path, "p", idx_bytes(images)[:-1], use_gzip), "truncated")

    def test_trailing_bytes(self, tmp_path, images, use_gzip):
        assert_rejected(write(tmp_path, "tr", idx_bytes(images) + b"\0", use_gzip), "trailing")

    def test_labels_out_of_range(self, tmp_path, use_gzip):
        path = write(tmp_path, "l", idx_bytes(np.array([1, 2, 10, 3], np.uint8)), use_gzip)
        assert_rejected(path, "label 10 at index 2 is outside 0..9", reader=read_idx_labels)
        np.testing.assert_array_equal(read_idx_labels(path, num_classes=11), [1, 2, 10, 3])

    def test_empty_payload_stream(self, tmp_path, use_gzip):
        if use_gzip:  # a valid gzip stream of zero bytes
            assert_rejected(write(tmp_path, "e.gz", b"", True), "truncated header")
        else:
            assert_rejected(write(tmp_path, "e", b"", False), "empty file")

    @pytest.mark.parametrize("dims", [(10**6, 10**6), (2**32 - 1, 2**32 - 1, 2**32 - 1), (1000, 28, 28)])
    def test_absurd_sizes_rejected_before_allocating(self, tmp_path, use_gzip, dims):
        # 10^12 (and 2^96) elements claimed by a file of a few bytes: rejected at once, and the
        # reader allocates nothing near the claim (checked with tracemalloc).
        header = bytes([0, 0, 8, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)
        path = write(tmp_path, "big", header + b"\0" * 64, use_gzip)
        tracemalloc.start()
        try:
            start = time.perf_counter()
            assert_rejected(path, "truncated|can hold")
            elapsed = time.perf_counter() - start
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 4 << 20 and elapsed < 1.0


def test_gzip_claim_inside_the_deflate_bound_is_still_truncated(tmp_path):
    # 10^7 bytes claimed by a ~30-byte gzip file exceeds 1032:1 -> rejected from the header;
    # 10^4 claimed fits the bound, so it is read, found short and rejected as truncated.
    for n, match in ((10**7, "can hold"), (10**4, "truncated")):
        header = bytes([0, 0, 8, 1]) + struct.pack(">I", n)
        assert_rejected(write(tmp_path, f"c{n}", header + b"\1" * 10, True), match)


def test_gzip_garbage_after_stream(tmp_path, labels):
    path = tmp_path / "g.gz"
    path.write_bytes(gzip.compress(idx_bytes(labels)) + b"garbage")
    assert_rejected(path, "corrupted gzip")


def test_gzip_second_member_with_data(tmp_path, labels):
    path = tmp_path / "g2.gz"
    path.write_bytes(gzip.compress(idx_bytes(labels)) + gzip.compress(b"\0"))
    assert_rejected(path, "trailing")


def test_gzip_split_over_members_is_fine(tmp_path, labels):
    data = idx_bytes(labels)
    path = tmp_path / "multi.gz"
    path.write_bytes(gzip.compress(data[:6]) + gzip.compress(data[6:]))  # legal gzip
    np.testing.assert_array_equal(read_idx(path), labels)


def test_gzip_bad_crc_and_truncated_stream(tmp_path, images):
    blob = bytearray(gzip.compress(idx_bytes(images)))
    blob[-6] ^= 0xFF  # inside the CRC-32 trailer
    path = tmp_path / "crc.gz"
    path.write_bytes(bytes(blob))
    assert_rejected(path, "corrupted gzip")
    path2 = tmp_path / "cut.gz"
    path2.write_bytes(gzip.compress(idx_bytes(images))[:-20])
    assert_rejected(path2, "truncated")


def test_not_gzip_but_named_gz(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_text("<html>404 Not Found</html>\n")
    assert_rejected(path, "not an IDX file", reader=read_idx_images)


def test_missing_file_and_directory(tmp_path):
    assert_rejected(tmp_path / "nope.gz", "cannot open")
    with pytest.raises(DataError, match="cannot open"):
        read_idx(tmp_path)


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)
