"""CelebA: ``prepare`` on a small synthetic folder in CelebA's exact on-disk format, and the reader."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from PIL import Image

from jmvae_cupy.data import DataError
from jmvae_cupy.data import celeba as cb
from jmvae_cupy.data import celeba_prepare as prep
from jmvae_cupy.data.__main__ import main
from jmvae_cupy.rng import Rng


def make_celeba(root, n=30, sizes=((178, 218), (218, 178), (100, 100), (90, 150)), seed=0,
                attr_rows=None, partition=True):
    """Write SRC/img_align_celeba/*.jpg, list_attr_celeba.txt, list_eval_partition.txt; returns
    (names, attributes (n, 40) int)."""
    r = np.random.default_rng(seed)
    img_dir = root / "img_align_celeba"
    img_dir.mkdir(parents=True, exist_ok=True)
    names = [f"{i + 1:06d}.jpg" for i in range(n)]
    attrs = np.where(r.random((n, 40)) < 0.5, -1, 1)
    for i, name in enumerate(names):
        w, h = sizes[i % len(sizes)]
        yy, xx = np.mgrid[0:h, 0:w]
        pic = np.stack([(xx * 255 // w), (yy * 255 // h), (r.integers(0, 256) + 0 * xx)], -1).astype(np.uint8)
        pic[h // 3: h // 2, w // 4: w // 2] = r.integers(0, 256, 3)
        Image.fromarray(pic).save(img_dir / name, quality=90)
    lines = [f"{n}", " ".join(cb.ATTR_NAMES) + " "]
    rows = attr_rows if attr_rows is not None else [
        f"{name} " + " ".join(f"{v:2d}" for v in a) for name, a in zip(names, attrs)]
    (root / "list_attr_celeba.txt").write_text("\n".join(lines + rows) + "\n")
    if partition:
        parts = [0] * (n - 10) + [1] * 4 + [2] * 6
        (root / "list_eval_partition.txt").write_text("".join(f"{nm} {p}\n" for nm, p in zip(names, parts)))
    return names, attrs


def expected_uint8(path, size=64):
    """The crop + resize computed independently of the library: centred square, LANCZOS."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    s = min(w, h)
    box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    return np.asarray(img.crop(box).resize((size, size), Image.LANCZOS)).transpose(2, 0, 1)


def _prep(src, out, *extra):
    return main(["prepare", "celeba", str(src), "--out", str(out), "--no-progress", *extra])


def test_round_trip_is_exact_and_split_is_recorded(tmp_path):
    src, out = tmp_path / "celeba", tmp_path / "celeba.h5"
    names, attrs = make_celeba(src)
    assert _prep(src, out) == 0
    assert not (tmp_path / "celeba.h5.partial").exists()
    with h5py.File(out) as f:
        assert f["images"].dtype == np.uint8 and f["images"].shape == (30, 3, 64, 64)
        assert f["images"].compression == "gzip"
        for i in (0, 1, 2, 3, 29):
            np.testing.assert_array_equal(f["images"][i], expected_uint8(src / "img_align_celeba" / names[i]))
        np.testing.assert_array_equal(f["attributes"][:], attrs)
        assert [s.decode() for s in f["names"][:]] == names
    d = cb.open_celeba(out)
    assert d.attr_names == list(cb.ATTR_NAMES) and d.n == 30 and d.split == "paper"
    assert len(d.test_idx) == 3 and len(d.train_idx) == 27
    assert not set(d.train_idx) & set(d.test_idx)
    x = d.images([5, 0, 17])
    assert x.dtype == np.float32 and x.shape == (3, 3, 64, 64) and 0 <= x.min() and x.max() <= 1
    np.testing.assert_allclose(x[1] * 255, expected_uint8(src / "img_align_celeba" / names[0]), atol=1e-3)
    np.testing.assert_array_equal(d.attributes([5, 0]), attrs[[5, 0]].astype(np.float32))
    d.close()
    # a second run leaves the finished file alone
    assert _prep(src, out) == 0


def test_official_split_and_size_32(tmp_path):
    src, out = tmp_path / "celeba", tmp_path / "c.h5"
    names, _ = make_celeba(src)
    assert _prep(src, out, "--split", "official", "--size", "32") == 0
    with cb.open_celeba(out) as d:
        assert d.image_size == 32 and d.split == "official"
        np.testing.assert_array_equal(d.train_idx, np.arange(24))
        np.testing.assert_array_equal(d.test_idx, np.arange(24, 30))
        np.testing.assert_array_equal(d.images_uint8([7])[0], expected_uint8(src / "img_align_celeba" / names[7], 32))


def test_epoch_order_is_reproducible_and_streams_blocks(tmp_path):
    src, out = tmp_path / "celeba", tmp_path / "c.h5"
    make_celeba(src, n=40)
    assert _prep(src, out, "--size", "32") == 0
    with cb.CelebAData(out, block=8) as d:
        a = d.epoch_order(Rng(3), 5)
        b = d.epoch_order(Rng(3), 5)
        assert all(np.array_equal(u, v) for u, v in zip(a, b)) and len(a) == len(d.train_idx) // 5
        rows = np.concatenate(a)
        assert len(set(rows)) == len(rows) and set(rows) <= set(d.train_idx)
        np.testing.assert_array_equal(d.images_uint8(a[0]), h5py.File(out)["images"][:][a[0]])
        assert len(d._cache) <= 2


@pytest.mark.parametrize("crash", [KeyboardInterrupt, RuntimeError])
def test_interrupted_prepare_resumes_without_redoing_work(tmp_path, monkeypatch, crash):
    src, out = tmp_path / "celeba", tmp_path / "c.h5"
    make_celeba(src, n=30)
    ref = tmp_path / "ref.h5"
    assert _prep(src, ref, "--chunk", "5") == 0
    real = prep._load_image
    calls = []

    def flaky(path, size):
        calls.append(path.name)
        if len(calls) == 13:
            raise crash("stop here")
        return real(path, size)

    monkeypatch.setattr(prep, "_load_image", flaky)
    with pytest.raises(crash):
        prep.prepare_celeba(src, out, chunk=5, progress=False, log=lambda *a: None)
    partial = tmp_path / "c.h5.partial"
    with h5py.File(partial) as f:
        done, stored, _ = (int(v) for v in f["progress"][:])
        assert done == (12 if crash is KeyboardInterrupt else 10)  # Ctrl-C flushes what was decoded
        assert f["images"].shape[0] == stored == done
    calls.clear()
    monkeypatch.setattr(prep, "_load_image", real)
    monkeypatch.setattr(prep, "_load_image", lambda p, s: calls.append(p.name) or real(p, s))
    summary = prep.prepare_celeba(src, out, chunk=5, progress=False, log=lambda *a: None)
    assert summary["resumed_at"] == done and len(calls) == 30 - done
    with h5py.File(out) as f, h5py.File(ref) as g:
        for k in ("images", "attributes", "names", "train_idx", "test_idx"):
            np.testing.assert_array_equal(f[k][:], g[k][:])


def test_bad_images_and_rows_are_skipped_and_counted(tmp_path, capsys):
    src, out = tmp_path / "celeba", tmp_path / "c.h5"
    names, attrs = make_celeba(src, n=30)
    rows = [f"{nm} " + " ".join(str(v) for v in a) for nm, a in zip(names, attrs)]
    rows[2] = names[2] + " 1 -1 1"                                        # short row
    rows[4] = rows[4].replace(" 1", " x", 1) if " 1" in rows[4] else rows[4].replace("-1", "x", 1)  # non-numeric
    rows[6] = names[6] + " " + " ".join(["2"] + ["1"] * 39)              # not +-1
    rows[8] = "../etc.jpg " + " ".join(["1"] * 40)                       # unsafe name
    make_celeba(src, n=30, attr_rows=rows)
    (src / "img_align_celeba" / names[10]).unlink()                       # missing image
    (src / "img_align_celeba" / names[11]).write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")  # unreadable
    data = (src / "img_align_celeba" / names[12]).read_bytes()
    (src / "img_align_celeba" / names[12]).write_bytes(data[: len(data) // 2])  # truncated JPEG
    assert _prep(src, out) == 0
    err = capsys.readouterr()
    assert "skipped 7 images" in err.out
    with h5py.File(out) as f:
        assert f["images"].shape[0] == 23 and int(f.attrs["skipped_total"]) == 7
        kept = [s.decode() for s in f["names"][:]]
        assert not {names[i] for i in (2, 4, 6, 10, 11, 12)} & set(kept)
    # --on-error stop: the first bad row stops the run with one line naming it
    assert _prep(src, tmp_path / "d.h5", "--on-error", "stop") == 2
    msg = capsys.readouterr().err.strip().splitlines()
    assert len(msg) == 1 and "short attribute row" in msg[0] and ":5:" in msg[0]


@pytest.mark.parametrize("case,match", [
    ("count", "absurd image count"),
    ("count_nan", "number of images"),
    ("names", "40 distinct attribute names"),
    ("truncated", "truncated: 20 of 30 rows"),
    ("extra", "more rows than the count"),
    ("binary", "not UTF-8"),
    ("long_line", "longer than"),
])
def test_hostile_attribute_files_are_rejected(tmp_path, capsys, case, match):
    src = tmp_path / "celeba"
    make_celeba(src, n=30)
    p = src / "list_attr_celeba.txt"
    lines = p.read_text().splitlines()
    if case == "count":
        lines[0] = "999999999999"
    elif case == "count_nan":
        lines[0] = "lots"
    elif case == "names":
        lines[1] = " ".join(cb.ATTR_NAMES[:39])
    elif case == "truncated":
        lines = lines[:22]
    elif case == "extra":
        lines.append(lines[-1].replace("000030", "000031"))
    if case == "binary":
        p.write_bytes(b"30\n\xff\xfe\x00garbage\n")
    elif case == "long_line":
        p.write_text("30\n" + "A" * 100000 + "\n")
    else:
        p.write_text("\n".join(lines) + "\n")
    assert _prep(src, tmp_path / "c.h5") == 2
    msg = capsys.readouterr().err.strip().splitlines()
    assert len(msg) == 1 and msg[0].startswith("error:") and match in msg[0], msg


def test_missing_inputs_and_bad_files_for_the_reader(tmp_path, capsys):
    assert _prep(tmp_path / "nowhere", tmp_path / "c.h5") == 2
    assert "not a directory" in capsys.readouterr().err
    (tmp_path / "src" / "img_align_celeba").mkdir(parents=True)
    assert _prep(tmp_path / "src", tmp_path / "c.h5") == 2
    assert "list_attr_celeba.txt" in capsys.readouterr().err
    with pytest.raises(DataError, match="no such file"):
        cb.open_celeba(tmp_path / "none.h5")
    (tmp_path / "junk.h5").write_bytes(b"junk" * 100)
    with pytest.raises(DataError, match="not a readable HDF5"):
        cb.open_celeba(tmp_path / "junk.h5")
    src, out = tmp_path / "celeba", tmp_path / "ok.h5"
    make_celeba(src, n=20)
    assert _prep(src, out, "--size", "32") == 0
    for edit, match in [(lambda f: f["attributes"].__setitem__((0, 0), 3), "other than -1 and 1"),
                        (lambda f: f.attrs.__setitem__("format", "x"), "not a prepared CelebA"),
                        (lambda f: f.attrs.__setitem__("complete", False), "incomplete"),
                        (lambda f: f.__delitem__("test_idx"), "test_idx"),
                        (lambda f: f["train_idx"].__setitem__(0, 10**6), "train_idx")]:
        bad = tmp_path / "bad.h5"
        bad.write_bytes(out.read_bytes())
        with h5py.File(bad, "r+") as f:
            edit(f)
        with pytest.raises(DataError, match=match):
            cb.open_celeba(bad)
