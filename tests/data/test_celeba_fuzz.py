"""Fuzzing the CelebA readers: random and mutated bytes fed to the attribute-file and partition
parsers, the JPEG loader and the prepared-HDF5 reader.  Every input is either read or rejected
with the library's DataError; nothing else may escape (no other exception, no hang: hypothesis'
deadline bounds each example).  Examples are few and small, so this runs in seconds."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from jmvae_cupy.data import DataError
from jmvae_cupy.data import celeba as cb
from jmvae_cupy.data import celeba_prepare as prep

from .test_celeba import make_celeba

SETTINGS = settings(max_examples=120, deadline=2000, suppress_health_check=[HealthCheck.too_slow,
                                                                              HealthCheck.function_scoped_fixture])
NAMES = cb.ATTR_NAMES


def _valid_attr_bytes(n=3):
    rows = [f"{i:06d}.jpg " + " ".join("1" if (i + j) % 3 else "-1" for j in range(40)) for i in range(1, n + 1)]
    return ("\n".join([str(n), " ".join(NAMES)] + rows) + "\n").encode()


def _mutate(data: bytes, edits):
    b = bytearray(data)
    for kind, pos, val in edits:
        if not b:
            break
        p = pos % len(b)
        if kind == 0:
            b[p] = val
        elif kind == 1:
            del b[p]
        else:
            b.insert(p, val)
    return bytes(b)


EDITS = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 10**6), st.integers(0, 255)), max_size=8)


def _raise(msg):
    raise DataError(msg)


def _ignore(msg):
    return None


def _read_or_reject(fn):
    try:
        fn()
    except DataError as e:
        assert str(e) and "\n" not in str(e)


@SETTINGS
@given(edits=EDITS, stop=st.booleans())
def test_attribute_file_mutations(tmp_path_factory, edits, stop):
    path = tmp_path_factory.mktemp("a") / "list_attr_celeba.txt"
    path.write_bytes(_mutate(_valid_attr_bytes(), edits))
    _read_or_reject(lambda: prep.read_attr_file(path, _raise if stop else _ignore))


@SETTINGS
@given(data=st.binary(max_size=400))
def test_attribute_file_random_bytes(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("r") / "list_attr_celeba.txt"
    path.write_bytes(data)
    _read_or_reject(lambda: prep.read_attr_file(path, _ignore))


@SETTINGS
@given(edits=EDITS)
def test_partition_file_mutations(tmp_path_factory, edits):
    path = tmp_path_factory.mktemp("p") / "list_eval_partition.txt"
    path.write_bytes(_mutate(b"000001.jpg 0\n000002.jpg 1\n000003.jpg 2\n", edits))
    _read_or_reject(lambda: prep.read_partition_file(path, _ignore))


def _jpeg_bytes():
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 16, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


JPEG = _jpeg_bytes()


@SETTINGS
@given(edits=EDITS)
def test_jpeg_mutations(tmp_path_factory, edits):
    path = tmp_path_factory.mktemp("j") / "000001.jpg"
    path.write_bytes(_mutate(JPEG, edits))
    _read_or_reject(lambda: prep._load_image(path, 16))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("celeba")
    make_celeba(root / "src", n=12)
    out = root / "celeba.h5"
    prep.prepare_celeba(root / "src", out, size=32, progress=False, log=lambda *a: None)
    return out  # a path: hypothesis prints fixture values of failing examples


# derandomize: the same 60 damaged files at every run.  Some damage makes libhdf5 itself loop
# forever, which no reader in the process can interrupt: one byte of the root group's attribute
# messages (offset 1185 of this fixture's file, 0 -> 4, in the session that added the file's
# progress datasets) made reading the "format" attribute spin at 100 % CPU in HDF5 2.0.0, and
# hung a CI run.  docs/reliability.md says so; this test pins files that do not.
@settings(max_examples=60, deadline=5000, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.just(0), st.integers(0, 10**7), st.integers(0, 255)), min_size=1, max_size=6))
def test_prepared_hdf5_mutations(tmp_path_factory, prepared, edits):
    path = tmp_path_factory.mktemp("h") / "celeba.h5"
    path.write_bytes(_mutate(prepared.read_bytes(), edits))

    def read_all():
        with cb.open_celeba(path) as d:
            d.images(d.train_idx)
            d.attributes(d.test_idx)

    try:
        read_all()
    except DataError as e:
        assert str(e)
    except Exception as e:  # anything else escaping is a bug of the reader
        pytest.fail(f"a damaged file escaped as {type(e).__name__}: {e}")
