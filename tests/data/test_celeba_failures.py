"""CelebA ``prepare`` when things go wrong: a full disk (simulated at the system-call level, as a
small tmpfs behaves), failed writes and syncs, signals, a finished file made with other options,
empty splits; and the reader's refusals.  Every failure is one ``error:`` line and an exit status,
and a re-run after it produces exactly the file a clean run does."""

from __future__ import annotations

import errno
import os
import signal

import h5py
import numpy as np
import pytest

from jmvae_cupy.data import DataError
from jmvae_cupy.data import celeba as cb
from jmvae_cupy.data import celeba_journal as journal
from jmvae_cupy.data import celeba_prepare as prep
from jmvae_cupy.fsutil import try_lock

from .test_celeba import _prep, make_celeba

KEYS = ("images", "attributes", "names", "train_idx", "test_idx")
CHUNK = ("--chunk", "5")  # 30 images: six commits


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A 30-image source and the file a clean run makes of it."""
    root = tmp_path_factory.mktemp("celeba")
    make_celeba(root / "src", n=30)
    ref = root / "ref.h5"
    assert _prep(root / "src", ref, *CHUNK) == 0
    return root / "src", ref


def assert_same(path, ref):
    with h5py.File(path, "r") as f, h5py.File(ref, "r") as g:
        for k in KEYS:
            np.testing.assert_array_equal(f[k][:], g[k][:], err_msg=k)


def rerun_gives(src, out, ref, capsys, said: str) -> None:
    """The same command again succeeds, saying ``said``, with a file equal to a clean run's."""
    assert _prep(src, out, *CHUNK) == 0
    assert said in capsys.readouterr().out
    assert_same(out, ref)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def assert_counted_rows_are_stored(partial, ref):
    """The progress record of a ``.partial`` left by a failure counts only rows that read back
    equal to the clean run's."""
    if not partial.exists() or partial.stat().st_size == 0:
        return
    try:
        f = h5py.File(partial, "r")
    except OSError:  # the failure came before the first flush: nothing was counted
        return
    with f, h5py.File(ref, "r") as g:
        if "progress" not in f:
            return
        done, stored, skipped = (int(v) for v in f["progress"][:])
        assert stored == done and skipped == 0
        for k in ("images", "attributes", "names"):
            np.testing.assert_array_equal(f[k][:stored], g[k][:stored], err_msg=k)


def full_disk(monkeypatch, capacity):
    """Writes to the ``.partial`` past ``capacity`` bytes fail as on a full disk: a short write,
    then ENOSPC (overwriting bytes below ``capacity`` still works, as on a tmpfs)."""
    real = os.pwrite

    def pwrite(fd, data, offset):
        room = capacity - offset
        if room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data[:room] if len(data) > room else data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    return real


@pytest.mark.parametrize("fraction", [0.0, 0.002, 0.15, 0.4, 0.7, 0.95, "last byte"])
def test_a_full_disk_stops_at_once_with_one_line_and_a_rerun_completes(tmp_path, source, monkeypatch, capsys,
                                                                       fraction):
    src, ref = source
    out, size = tmp_path / "c.h5", ref.stat().st_size
    real = full_disk(monkeypatch, size - 1 if fraction == "last byte" else int(fraction * size))
    assert _prep(src, out, *CHUNK) == 2
    msg = one_error_line(capsys)  # no h5py tracebacks, no 'Exception ignored', no crash
    assert msg.startswith(f"error: {out}.partial: No space left on device: the ") and "run the same command" in msg
    assert not out.exists()
    assert_counted_rows_are_stored(tmp_path / "c.h5.partial", ref)
    monkeypatch.setattr(os, "pwrite", real)  # space freed
    assert _prep(src, out, *CHUNK) == 0
    assert_same(out, ref)
    assert not (tmp_path / "c.h5.partial").exists()


def test_a_disk_just_large_enough_suffices(tmp_path, source, monkeypatch):
    src, ref = source
    full_disk(monkeypatch, ref.stat().st_size)
    assert _prep(src, tmp_path / "c.h5", *CHUNK) == 0
    assert_same(tmp_path / "c.h5", ref)


def test_a_write_error_raised_by_h5py_stops_cleanly_and_counts_nothing_unstored(tmp_path, source, monkeypatch,
                                                                               capsys):
    src, ref = source
    out = tmp_path / "c.h5"
    real, calls = h5py.Dataset.__setitem__, []

    def failing(self, key, value):
        if self.name == "/images":
            calls.append(key)
            if len(calls) == 3:  # the third batch
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, key, value)

    monkeypatch.setattr(h5py.Dataset, "__setitem__", failing)
    assert _prep(src, out, *CHUNK) == 2
    assert one_error_line(capsys).startswith(f"error: {out}.partial: No space left on device: the 10 rows counted")
    with h5py.File(tmp_path / "c.h5.partial", "r") as f:
        assert list(f["progress"][:]) == [10, 10, 0]
    assert_counted_rows_are_stored(tmp_path / "c.h5.partial", ref)
    monkeypatch.setattr(h5py.Dataset, "__setitem__", real)
    summary = prep.prepare_celeba(src, out, chunk=5, progress=False, log=lambda *a: None)
    assert summary["resumed_at"] == 10
    assert_same(out, ref)


def test_a_failed_sync_stops_before_the_rows_are_counted(tmp_path, source, monkeypatch, capsys):
    src, ref = source
    out = tmp_path / "c.h5"
    real, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) == 6:  # creation, then two per commit: the rows of the third commit
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert _prep(src, out, *CHUNK) == 2
    assert one_error_line(capsys) == (f"error: {out}.partial: {os.strerror(errno.EIO)}: the 10 rows counted so far "
                                      f"are kept (run the same command again to continue)")
    assert_counted_rows_are_stored(tmp_path / "c.h5.partial", ref)
    monkeypatch.setattr(os, "fsync", real)
    rerun_gives(src, out, ref, capsys, "resuming")


def test_a_finished_file_that_does_not_validate_is_never_renamed(tmp_path, source, monkeypatch, capsys):
    src, _ = source
    out = tmp_path / "c.h5"
    monkeypatch.setattr(journal, "_split", lambda f, split, n: (np.arange(n), np.arange(3)))  # overlapping
    assert _prep(src, out, *CHUNK) == 2
    msg = one_error_line(capsys)
    assert "does not read back" in msg and "overlap" in msg and "deleted" in msg
    assert not out.exists() and not (tmp_path / "c.h5.partial").exists()


def test_a_finished_partial_that_was_not_renamed_is_finished_by_a_rerun(tmp_path, source, monkeypatch, capsys):
    src, ref = source
    out = tmp_path / "c.h5"

    def killed(a, b):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    assert _prep(src, out, *CHUNK) == 130
    monkeypatch.undo()
    assert (tmp_path / "c.h5.partial").exists() and not out.exists()
    capsys.readouterr()
    rerun_gives(src, out, ref, capsys, "resuming")


def test_a_damaged_progress_record_starts_over(tmp_path, source, monkeypatch, capsys):
    src, ref = source
    out = tmp_path / "c.h5"
    full_disk(monkeypatch, int(0.5 * ref.stat().st_size))
    assert _prep(src, out, *CHUNK) == 2
    monkeypatch.undo()
    with h5py.File(tmp_path / "c.h5.partial", "r+") as f:
        f["progress"][1] = 25  # more images than the datasets hold
    capsys.readouterr()
    rerun_gives(src, out, ref, capsys, "inconsistent progress record")


def test_a_second_prepare_on_the_same_file_stops(tmp_path, source, capsys):
    src, _ = source
    out = tmp_path / "c.h5"
    held = try_lock(tmp_path / "c.h5.lock")  # (another prepare, from its first look at c.h5 to the rename)
    try:
        assert _prep(src, out, *CHUNK) == 2
        assert "another prepare is writing" in one_error_line(capsys)
    finally:
        held.close()
    assert _prep(src, out, *CHUNK) == 0


def test_an_unwritable_destination_is_one_line(tmp_path, source, capsys):
    src, _ = source
    assert _prep(src, tmp_path / "missing" / "c.h5") == 2
    assert "cannot write: No such file or directory" in one_error_line(capsys)


# ---------------------------------------------------------------------------------------- signals


def test_sigterm_keeps_the_work_done_and_exits_143(tmp_path, source, monkeypatch, capsys):
    src, ref = source
    out = tmp_path / "c.h5"
    real, calls = prep._load_image, []

    def load(path, size):
        calls.append(path)
        if len(calls) == 13:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(path, size)

    monkeypatch.setattr(prep, "_load_image", load)
    before = signal.getsignal(signal.SIGTERM)
    assert _prep(src, out, *CHUNK) == 143
    assert one_error_line(capsys) == "error: terminated"
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is the command's only
    with h5py.File(tmp_path / "c.h5.partial", "r") as f:
        # as Ctrl-C: the decoded images are kept, the 13th too (the signal takes effect at the end
        # of its row: buffered and counted, never one without the other)
        assert list(f["progress"][:]) == [13, 13, 0]
    monkeypatch.setattr(prep, "_load_image", real)
    assert _prep(src, out, *CHUNK) == 0
    assert_same(out, ref)


def test_a_signal_during_an_hdf5_write_waits_for_the_commit(tmp_path, source, monkeypatch, capsys):
    src, ref = source
    out = tmp_path / "c.h5"
    real, calls = os.pwrite, []

    def pwrite(fd, data, offset):
        calls.append(offset)
        if len(calls) == 20:  # inside HDF5's write callback, in the middle of the first commit
            os.kill(os.getpid(), signal.SIGTERM)
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    assert _prep(src, out, *CHUNK) == 143
    assert one_error_line(capsys) == "error: terminated"
    partial = tmp_path / "c.h5.partial"
    with h5py.File(partial, "r") as f:
        done = int(f["progress"][0])
    assert done == 5  # the whole commit, counted once
    assert_counted_rows_are_stored(partial, ref)
    monkeypatch.setattr(os, "pwrite", real)
    assert _prep(src, out, *CHUNK) == 0
    assert_same(out, ref)


# ---------------------------------------------------------------------------------------- empty splits


@pytest.mark.parametrize("n", [4, 5])
def test_too_few_images_for_a_test_split_are_refused_before_decoding(tmp_path, monkeypatch, capsys, n):
    src = tmp_path / "src"
    make_celeba(src, n=n)
    monkeypatch.setattr(prep, "_load_image", lambda *a: pytest.fail("decoded"))
    assert _prep(src, tmp_path / "c.h5") == 2
    assert f"{n} usable images are too few for the paper split" in one_error_line(capsys)
    assert not (tmp_path / "c.h5").exists() and not (tmp_path / "c.h5.partial").exists()


def test_six_images_give_one_test_image(tmp_path):
    src = tmp_path / "src"
    make_celeba(src, n=6)
    assert _prep(src, tmp_path / "c.h5") == 0
    with cb.open_celeba(tmp_path / "c.h5") as d:
        assert (len(d.train_idx), len(d.test_idx)) == (5, 1)


@pytest.mark.parametrize("parts,match", [
    ([0] * 10 + [1] * 10, "none of the 20 usable images is in partition 2"),
    ([2] * 20, "none of the 20 usable images is in partition 0 or 1"),
])
def test_an_empty_official_split_is_refused(tmp_path, capsys, parts, match):
    src = tmp_path / "src"
    names, _ = make_celeba(src, n=20)
    (src / "list_eval_partition.txt").write_text("".join(f"{nm} {p}\n" for nm, p in zip(names, parts)))
    assert _prep(src, tmp_path / "c.h5", "--split", "official") == 2
    assert match in one_error_line(capsys)
    assert not (tmp_path / "c.h5").exists()


def test_an_official_test_split_emptied_by_skipped_images_is_refused(tmp_path, capsys):
    src = tmp_path / "src"
    names, _ = make_celeba(src, n=20)  # the last 6 are partition 2
    for nm in names[-6:]:
        (src / "img_align_celeba" / nm).write_bytes(b"not a jpeg")
    assert _prep(src, tmp_path / "c.h5", "--split", "official") == 2
    assert "none of the 14 usable images is in partition 2" in one_error_line(capsys)
    assert not (tmp_path / "c.h5").exists()


@pytest.mark.parametrize("name,match", [("test_idx", "no test images"), ("train_idx", "no training images")])
def test_the_reader_refuses_an_empty_split(tmp_path, name, match):
    src, out = tmp_path / "src", tmp_path / "c.h5"
    make_celeba(src, n=20)
    assert _prep(src, out, "--size", "32") == 0
    with h5py.File(out, "r+") as f:
        del f[name]
        f.create_dataset(name, data=np.zeros(0, dtype=np.int64))
    with pytest.raises(DataError, match=match):
        cb.open_celeba(out)


# ---------------------------------------------------------------------------------------- a finished file


def test_a_finished_file_made_otherwise_is_refused_naming_the_difference(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "c.h5"
    make_celeba(src, n=20)
    assert _prep(src, out, "--size", "32") == 0
    capsys.readouterr()
    for extra, diffs in [
        ([], "with --size 32, not 64"),
        (["--size", "32", "--split", "official"], "with --split paper, not official"),
        (["--split", "official"], "with --size 32, not 64; with --split paper, not official"),
    ]:
        assert _prep(src, out, *extra) == 2
        assert one_error_line(capsys) == f"error: {out} was prepared {diffs}: choose another --out or delete it"
    other = tmp_path / "other"
    make_celeba(other, n=20, seed=1)
    assert _prep(other, out, "--size", "32") == 2
    msg = one_error_line(capsys)
    assert f"was prepared from another list_attr_celeba.txt (in {src.resolve()}), not {other}" in msg
    assert _prep(src, out, "--size", "32") == 0
    assert "already complete (20 images): nothing to do" in capsys.readouterr().out


def test_a_finished_official_file_from_another_partition_file_is_refused(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "c.h5"
    names, _ = make_celeba(src, n=20)
    assert _prep(src, out, "--size", "32", "--split", "official") == 0
    assert _prep(src, out, "--size", "32", "--split", "official") == 0
    (src / "list_eval_partition.txt").write_text("".join(f"{nm} {2 if i % 2 else 0}\n" for i, nm in enumerate(names)))
    capsys.readouterr()
    assert _prep(src, out, "--size", "32", "--split", "official") == 2
    assert "was prepared from another list_eval_partition.txt" in one_error_line(capsys)
    with h5py.File(out, "r+") as f:  # a file of an older version records neither: still accepted
        del f.attrs["partition_sha256"], f.attrs["source_dir"]
    assert _prep(src, out, "--size", "32", "--split", "official") == 0


def test_a_finished_file_with_skipped_images_is_not_one_made_with_on_error_stop(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "c.h5"
    names, _ = make_celeba(src, n=20)
    (src / "img_align_celeba" / names[3]).unlink()
    assert _prep(src, out, "--size", "32") == 0
    capsys.readouterr()
    assert _prep(src, out, "--size", "32", "--on-error", "stop") == 2
    assert "was prepared with --on-error skip (1 images skipped), not stop" in one_error_line(capsys)


# ---------------------------------------------------------------------------------------- small things


def test_a_byte_order_mark_is_accepted(tmp_path):
    src, out = tmp_path / "src", tmp_path / "c.h5"
    names, attrs = make_celeba(src, n=20)
    for fname in ("list_attr_celeba.txt", "list_eval_partition.txt"):
        p = src / fname
        p.write_bytes(b"\xef\xbb\xbf" + p.read_bytes())
    assert _prep(src, out, "--size", "32", "--split", "official") == 0
    with h5py.File(out, "r") as f:
        assert [s.decode() for s in f["names"][:]] == names
        np.testing.assert_array_equal(f["attributes"][:], attrs)


def test_the_reader_requires_string_attribute_names(tmp_path):
    src, out = tmp_path / "src", tmp_path / "c.h5"
    make_celeba(src, n=20)
    assert _prep(src, out, "--size", "32") == 0
    for bad in (np.arange(40), "x" * 40, np.array([""] * 40, dtype="S8")):
        with h5py.File(out, "r+") as f:
            f.attrs["attr_names"] = bad
        with pytest.raises(DataError, match="attr_names should list 40 names"):
            cb.open_celeba(out)


def test_a_too_large_image_is_named_once(tmp_path, monkeypatch):
    src = tmp_path / "src"
    names, _ = make_celeba(src, n=1)
    path = src / "img_align_celeba" / names[0]
    monkeypatch.setattr(prep, "MAX_PIXELS", 100)
    with pytest.raises(DataError) as e:
        prep._load_image(path, 64)
    assert str(e.value) == f"{path}: image of 178x218 pixels is too large"
    (path.parent / "dir.jpg").mkdir()
    with pytest.raises(DataError) as e:
        prep._load_image(path.parent / "dir.jpg", 64)
    assert str(e.value).count(str(path.parent)) == 1
