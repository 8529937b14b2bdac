"""The trainer's edges found by probing the command line: each is one line on stderr and an exit
status, and leaves the run directory consistent (what a resume or a new run can start from)."""

import errno
import json
import os

import numpy as np
import pytest

from jmvae_cupy import checkpoint
from jmvae_cupy.train import main, rundir, trainer

ONE = ["mnist", "--variant", "kl", "--epochs", "1", "--train-subset", "300", "--no-progress", "--device", "cpu"]


def _last_err(capsys):
    return capsys.readouterr().err.strip().splitlines()[-1]


def _epochs(run):
    return [json.loads(ln)["epoch"] for ln in open(run / "metrics.jsonl")]


def _poison(monkeypatch, when):
    """Make MNIST JMVAE-kl's objective non-finite where ``when(train)`` says so."""
    from jmvae_cupy.models.jmvae import JMVAEKL

    real = JMVAEKL.loss_and_grads

    def poisoned(self, *a, **k):
        loss, terms, grads = real(self, *a, **k)
        if when(k.get("train", True)):
            terms = {**terms, "elbo": terms["elbo"] * np.inf}
            loss = loss * np.inf
        return loss, terms, grads

    monkeypatch.setattr(JMVAEKL, "loss_and_grads", poisoned)


def test_a_resume_that_starts_afresh_drops_the_metrics_of_the_killed_run(tmp_path, capsys):
    """Killed after an epoch's metrics line and before its checkpoint (the first one): the resume
    finds no checkpoint and starts a new run, which redoes that epoch; its line must not appear twice."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "train": {}, "test": {}}) + "\n")
    assert main(ONE + ["--epochs", "2", "--out", str(run), "--resume"]) == 0
    assert "starting a new run" in capsys.readouterr().err
    assert _epochs(run) == [1, 2]


def test_an_epoch_with_every_step_skipped_stops_the_run(tmp_path, capsys, monkeypatch):
    _poison(monkeypatch, lambda training: training)
    run = tmp_path / "run"
    assert main(ONE + ["--out", str(run), "--on-nonfinite", "skip"]) == 1
    assert _last_err(capsys).startswith("error: every step of epoch 1 was non-finite and skipped: stopping")
    assert not (run / "metrics.jsonl").exists()  # nothing of the diverged epoch was written


def test_non_finite_test_terms_stop_before_the_epoch_is_written(tmp_path, capsys, monkeypatch):
    _poison(monkeypatch, lambda training: not training)  # training is fine, the test set is not
    run = tmp_path / "run"
    assert main(ONE + ["--out", str(run), "--checkpoint-steps", "1"]) == 1
    assert _last_err(capsys) == "error: non-finite test-set terms after epoch 1 (elbo, loss): stopping " \
                                "(the last checkpoint is kept)"
    assert not (run / "metrics.jsonl").exists()
    assert [os.path.basename(p) for p in checkpoint.list_checkpoints(str(run))][0].startswith("ckpt-000000-")


def test_a_full_disk_is_one_line_and_a_resume_then_completes(tmp_path, capsys, monkeypatch):
    real, run = trainer.save_checkpoint, tmp_path / "run"

    def full(out, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", os.path.join(out, ".ckpt-x.tmp"))

    monkeypatch.setattr(trainer, "save_checkpoint", full)
    assert main(ONE + ["--out", str(run)]) == 1
    assert _last_err(capsys) == f"error: {run / '.ckpt-x.tmp'}: No space left on device"
    monkeypatch.setattr(trainer, "save_checkpoint", real)
    assert main(ONE + ["--out", str(run), "--resume"]) == 0
    assert _epochs(run) == [1]


def test_an_allocation_that_fails_is_one_line_and_leaves_no_directory(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(ONE + ["--latent", "2000000000", "--out", str(run)]) == 1
    err = _last_err(capsys)
    assert err.startswith("error: out of memory: Unable to allocate"), err
    assert not run.exists()


def test_ctrl_c_before_training_starts_is_one_line_and_130(tmp_path, capsys, monkeypatch):
    def interrupted(config, dtype):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "make_source", interrupted)
    run = tmp_path / "run"
    assert main(ONE + ["--out", str(run)]) == 130
    assert _last_err(capsys) == "error: interrupted"
    assert not run.exists()


@pytest.mark.parametrize("args, message", [
    (["--seed", "-1"], "error: --seed must be >= 0, got -1"),
    (["--gan-weight", "-5"], "error: --gan-weight applies to --gan (celeba) only"),
])
def test_bad_options(tmp_path, capsys, args, message):
    assert main(ONE + args + ["--out", str(tmp_path / "run")]) == 1
    assert _last_err(capsys) == message
    assert not (tmp_path / "run").exists()


def test_a_second_process_cannot_train_in_the_same_directory(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    held = rundir.lock_run_dir(str(run))  # (flock: a second open file description conflicts, same process too)
    try:
        assert main(ONE + ["--out", str(run), "--resume"]) == 1
        assert _last_err(capsys) == f"error: {run} is in use by another training process (pid {os.getpid()})"
    finally:
        held.close()
    assert main(ONE + ["--out", str(run), "--resume"]) == 0  # released: the next one may


def test_a_trainer_refused_by_the_lock_leaves_the_new_directory_of_the_one_that_won(tmp_path, capsys, monkeypatch):
    """Two trainers start on a new --out: the other one makes the directory and locks it between
    this one's look and its mkdir.  This one is refused, and must not remove the directory as one
    it made (it did, with its lock file, and the winner died writing config.json)."""
    run, won = tmp_path / "run", {}
    real_mkdir = os.mkdir

    def racing_mkdir(path, *a, **k):
        if os.fspath(path) == str(run) and not won:
            real_mkdir(path)
            won["lock"] = rundir.lock_run_dir(str(run))  # (the winner)
        return real_mkdir(path, *a, **k)

    monkeypatch.setattr(os, "mkdir", racing_mkdir)
    try:
        assert main(ONE + ["--out", str(run)]) == 1
        assert "is in use by another training process" in _last_err(capsys)
        assert sorted(os.listdir(run)) == [rundir.LOCK_NAME]  # the winner's directory and lock, untouched
    finally:
        won["lock"].close()


def test_the_last_epochs_samples_are_written_before_its_checkpoint(tmp_path, monkeypatch):
    """A run killed between the two redoes the epoch (and its PNG); the other order lost the PNG."""
    real, run, seen = trainer.save_checkpoint, tmp_path / "run", []

    def spy(out, epoch, step, *a, **k):
        seen.append((epoch, step, (run / f"samples-e{epoch:04d}.png").exists()))
        return real(out, epoch, step, *a, **k)

    monkeypatch.setattr(trainer, "save_checkpoint", spy)
    assert main(ONE + ["--epochs", "2", "--sample-every", "5", "--out", str(run)]) == 0
    assert seen == [(1, 0, False), (2, 0, True)]  # epoch 1: no PNG due; epoch 2 (the last): PNG first


def test_resuming_a_complete_run_says_so_and_a_longer_run_updates_the_config(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(ONE + ["--out", str(run)]) == 0
    assert "training on the first 300 digits" in capsys.readouterr().out  # (--train-subset, in the log)
    assert main(ONE + ["--out", str(run), "--resume"]) == 0
    assert "the run is complete (1 of 1 epochs): nothing to do" in capsys.readouterr().out
    assert main(ONE + ["--epochs", "2", "--out", str(run), "--resume"]) == 0
    assert json.loads((run / "config.json").read_text())["epochs"] == 2
    assert _epochs(run) == [1, 2]
    assert main(ONE + ["--out", str(run), "--resume"]) == 0  # --epochs 1 now: complete, and no shrink
    assert "the run is complete (2 of 1 epochs)" in capsys.readouterr().out
    assert json.loads((run / "config.json").read_text())["epochs"] == 2


def test_damaged_metrics_lines_are_dropped_on_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    good = [json.dumps({"epoch": 1}), json.dumps({"epoch": 2})]
    path.write_bytes("\n".join([good[0], "[1, 2]", "5", '{"epoch": "x"}', good[1], '{"epoch": 3}']).encode()
                     + b"\n\xff\xfe{\n" + b'{"epo')
    assert rundir.metrics_lines_up_to(str(path), 2) == [good[0] + "\n", good[1] + "\n"]


def test_a_diverging_run_prints_the_guards_line_and_no_numpy_warnings(tmp_path, capsys):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(ONE + ["--lr", "1e10", "--batch-size", "50", "--out", str(tmp_path / "run")]) == 1
    assert "non-finite objective at epoch 1" in _last_err(capsys)
    assert [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)] == []


def test_resume_of_a_directory_that_does_not_exist_is_an_error(tmp_path, capsys):
    """A typo in a run name with --resume trained a new run from scratch ("no checkpoint in
    runs/nope yet: starting a new run"); now one line, exit 1, and nothing is created."""
    assert main(ONE + ["--out", str(tmp_path / "nope"), "--resume"]) == 1
    assert _last_err(capsys) == (f"error: --resume: {tmp_path / 'nope'} does not exist, so there is no run to "
                                 "continue (leave out --resume to start a new run there)")
    assert not (tmp_path / "nope").exists()


def test_a_resume_removes_the_temporary_files_of_a_killed_writer(tmp_path):
    """A process killed while writing a checkpoint or config.json / metrics.jsonl leaves its temporary
    file (.ckpt-*.tmp, fsutil's .tmp-*.tmp): the next run in the directory removes them, and only them."""
    run = tmp_path / "run"
    assert main(ONE + ["--out", str(run)]) == 0
    stale = [run / ".ckpt-000001-000000.h5.tmp", run / ".tmp-abc123.tmp"]
    keep = run / "notes.tmp"
    for p in stale + [keep]:
        p.write_text("half")
    assert main(ONE + ["--epochs", "2", "--out", str(run), "--resume"]) == 0
    assert not any(p.exists() for p in stale) and keep.exists()
