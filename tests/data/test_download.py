"""download_mnist, served from a local file:// directory or a fake opener: never the network."""

from __future__ import annotations

import hashlib
import io
import os
import urllib.error
import urllib.request

import numpy as np
import pytest

from jmvae_cupy.data import (
    MNIST_FILES,
    MNIST_MIRRORS,
    DataError,
    FileSpec,
    download_mnist,
    load_mnist,
    verify_file,
)

from .synthetic import MNIST_NAMES, synthetic_mnist, write_mnist_dir


def spec_for(path, name=None, md5_only=False) -> FileSpec:
    data = path.read_bytes()
    return FileSpec(
        name or path.name, len(data),
        None if md5_only else hashlib.sha256(data).hexdigest(),
        hashlib.md5(data).hexdigest(),
    )


@pytest.fixture
def served(tmp_path):
    """A "mirror": a directory with synthetic MNIST files, its file:// URL, and their spec table."""
    mirror = write_mnist_dir(tmp_path / "mirror", synthetic_mnist(12, 3))
    names = ("train_images", "train_labels", "test_images", "test_labels")
    files = {k: spec_for(mirror / (name + ".gz")) for k, name in zip(names, MNIST_NAMES)}
    return mirror, mirror.as_uri() + "/", files


class CountingOpener:
    """urlopen that records the URLs it was asked for."""

    def __init__(self):
        self.urls = []

    def __call__(self, url, timeout=None):
        self.urls.append(url)
        return urllib.request.urlopen(url, timeout=timeout)


def leftovers(directory):
    return [n for n in os.listdir(directory) if n.endswith(".part")]


def test_download_verify_and_load(tmp_path, served):
    mirror, url, files = served
    out = tmp_path / "out"
    opener = CountingOpener()
    paths = download_mnist(out, mirrors=[url], files=files, progress=False, opener=opener, log=lambda m: None)
    assert [p.name for p in paths] == [s.name for s in files.values()]
    for p in paths:
        assert p.read_bytes() == (mirror / p.name).read_bytes()
        assert verify_file(p, files[next(k for k, s in files.items() if s.name == p.name)]) is None
    assert len(opener.urls) == 4 and not leftovers(out)
    d = load_mnist(out)
    assert (len(d.train_y), len(d.valid_y), len(d.test_y)) == (10, 2, 3)


def test_resume_skips_good_files_and_replaces_bad_ones(tmp_path, served):
    _, url, files = served
    out = tmp_path / "out"
    download_mnist(out, mirrors=[url], files=files, progress=False, log=lambda m: None)
    damaged = out / files["test_images"].name
    damaged.write_bytes(b"partial")
    opener, messages = CountingOpener(), []
    download_mnist(out, mirrors=[url], files=files, progress=False, opener=opener, log=messages.append)
    assert opener.urls == [url + files["test_images"].name]
    assert verify_file(damaged, files["test_images"]) is None
    assert sum("already present" in m for m in messages) == 3


def test_falls_back_to_the_next_mirror(tmp_path, served):
    _, url, files = served
    dead = (tmp_path / "empty").as_uri() + "/"
    messages = []
    download_mnist(tmp_path / "out", mirrors=[dead, url], files=files, progress=False, log=messages.append)
    assert any(dead in m for m in messages)
    assert all(verify_file(tmp_path / "out" / s.name, s) is None for s in files.values())


def test_all_mirrors_fail_names_each_url(tmp_path, served):
    _, _, files = served
    dead1 = (tmp_path / "a").as_uri() + "/"
    dead2 = (tmp_path / "b").as_uri()  # no trailing slash: one is added
    with pytest.raises(DataError) as info:
        download_mnist(tmp_path / "out", mirrors=[dead1, dead2], files=files, progress=False,
                       log=lambda m: None)
    msg = str(info.value)
    name = files["train_images"].name
    assert msg.startswith(f"could not download {name}")
    assert dead1 + name in msg and dead2 + "/" + name in msg and "\n" not in msg
    assert not leftovers(tmp_path / "out")


@pytest.mark.parametrize("md5_only", [False, True])
def test_checksum_mismatch_deletes_the_temporary_file(tmp_path, served, md5_only):
    mirror, url, files = served
    path = mirror / files["train_labels"].name
    good = spec_for(path, md5_only=md5_only)
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 1  # same size, other bytes
    path.write_bytes(bytes(blob))
    out = tmp_path / "out"
    with pytest.raises(DataError, match=("md5" if md5_only else "sha256") + " mismatch"):
        download_mnist(out, mirrors=[url], files={"train_labels": good}, progress=False, log=lambda m: None)
    assert os.listdir(out) == []  # neither a temporary file nor a bad destination


def test_size_limits(tmp_path, served):
    mirror, url, files = served
    spec = files["train_labels"]
    out = tmp_path / "out"
    with pytest.raises(DataError, match="more than the expected"):
        download_mnist(out, mirrors=[url], files={"x": spec._replace(size=spec.size - 1)}, progress=False,
                       log=lambda m: None)
    with pytest.raises(DataError, match="got .* bytes, expected"):
        download_mnist(out, mirrors=[url], files={"x": spec._replace(size=spec.size + 1)}, progress=False,
                       log=lambda m: None)
    assert os.listdir(out) == []


class FakeResponse(io.BytesIO):
    length = None


def test_monkeypatched_opener_and_network_errors(tmp_path):
    payload = b"synthetic bytes " * 1000
    spec = FileSpec("blob.gz", len(payload), hashlib.sha256(payload).hexdigest(), None)

    def serving(url, timeout=None):
        assert url == "https://mirror.invalid/mnist/blob.gz" and timeout == 5.0
        return FakeResponse(payload)

    (path,) = download_mnist(tmp_path, mirrors=["https://mirror.invalid/mnist/"], files={"b": spec},
                             progress=True, timeout=5.0, opener=serving, log=lambda m: None)
    assert path.read_bytes() == payload

    def failing(url, timeout=None):
        if "one" in url:
            raise urllib.error.URLError(OSError(-2, "Name or service not known"))
        raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)

    with pytest.raises(DataError) as info:
        download_mnist(tmp_path / "o", mirrors=["https://one.invalid/", "https://two.invalid/"],
                       files={"b": spec}, progress=False, opener=failing, log=lambda m: None)
    msg = str(info.value)
    assert "https://one.invalid/blob.gz: Name or service not known" in msg
    assert "https://two.invalid/blob.gz: HTTP 404 Not Found" in msg

    class Broken(FakeResponse):
        def read(self, n=-1):
            raise ConnectionResetError(104, "Connection reset by peer")

    with pytest.raises(DataError, match="blob.gz: Connection reset by peer"):
        download_mnist(tmp_path / "o", mirrors=["https://one.invalid/"], files={"b": spec}, progress=False,
                       opener=lambda url, timeout=None: Broken(b""), log=lambda m: None)
    assert not leftovers(tmp_path / "o")


def test_refuses_unverifiable_files_and_bad_output_dir(tmp_path):
    with pytest.raises(DataError, match="no checksum known"):
        download_mnist(tmp_path, mirrors=["file:///x/"], files={"a": FileSpec("a", 1, None, None)},
                       progress=False, log=lambda m: None)
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match="cannot create the output directory"):
        download_mnist(tmp_path / "file" / "sub", mirrors=["file:///x/"], progress=False, log=lambda m: None)
    with pytest.raises(DataError, match="no mirror"):
        download_mnist(tmp_path, mirrors=[], progress=False, log=lambda m: None)


def test_default_table_is_the_well_known_mnist():
    assert [s.name for s in MNIST_FILES.values()] == [
        "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    assert [s.md5 for s in MNIST_FILES.values()] == [  # torchvision's values
        "f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
        "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"]
    assert all(len(s.sha256) == 64 for s in MNIST_FILES.values())
    assert all(m.startswith("https://") and m.endswith("/") for m in MNIST_MIRRORS)
    assert np.sum([s.size for s in MNIST_FILES.values()]) == 11594722
