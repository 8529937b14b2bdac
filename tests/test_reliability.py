"""Crash safety of training: SIGKILL at random moments, SIGINT, forced NaN.

Checkpoint granularity in these tests: every step (--checkpoint-steps 1); a run killed at any
moment resumes from its newest good checkpoint and ends bit-identical (CPU) to an uninterrupted run.
"""

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jmvae_cupy import checkpoint
from jmvae_cupy.train import main

ARGS = ["mnist", "--variant", "kl", "--epochs", "3", "--train-subset", "300", "--checkpoint-steps", "1",
        "--no-progress", "--device", "cpu", "--sample-every", "1"]


def _cmd(out, resume):
    return [sys.executable, "-m", "jmvae_cupy.train"] + ARGS + ["--out", str(out)] + (["--resume"] if resume else [])


def _params(run_dir):
    return checkpoint.load(checkpoint.list_checkpoints(str(run_dir))[0])["params"]


def _wait_for_checkpoint(run_dir, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if checkpoint.list_checkpoints(str(run_dir)):
            return
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert main(ARGS + ["--out", str(ref)]) == 0
    r = random.Random(2026)
    kills = 0
    run.mkdir()  # (--resume needs the directory; a run killed before its first checkpoint starts afresh)
    for _ in range(3):
        p = subprocess.Popen(_cmd(run, resume=True), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if kills == 0:
            _wait_for_checkpoint(run)  # the first kill lands inside training, not during imports
        time.sleep(r.uniform(0.0, 1.5))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.wait(timeout=300)
    assert kills >= 1
    done = subprocess.run(_cmd(run, resume=True), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = _params(ref), _params(run)
    assert set(a) == set(b)
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    assert not [f for f in os.listdir(run) if f.endswith(".tmp")]


def test_sigint_saves_and_exits_cleanly_then_resumes_exactly(tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert main(ARGS + ["--out", str(ref)]) == 0
    p = subprocess.Popen(_cmd(run, resume=False), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoint(run)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=300)
    if p.returncode == 0:
        pytest.skip("the run finished before SIGINT arrived")
    assert p.returncode == 130, err[-2000:]
    assert "--resume" in out + err and "Traceback" not in err
    done = subprocess.run(_cmd(run, resume=True), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = _params(ref), _params(run)
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_forced_nan_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    from jmvae_cupy.models.jmvae import JMVAEKL

    out = tmp_path / "run"
    real = JMVAEKL.loss_and_grads
    calls = {"n": 0}

    def poisoned(self, *a, **k):
        loss, terms, grads = real(self, *a, **k)
        if not k.get("train", True):
            return loss, terms, grads
        calls["n"] += 1
        if calls["n"] == 5:  # epoch 2, step 2
            terms["kl_x"] = terms["kl_x"] * np.nan
            loss = loss * np.nan
        return loss, terms, grads

    monkeypatch.setattr(JMVAEKL, "loss_and_grads", poisoned)
    assert main(ARGS + ["--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "non-finite objective" in err and "step" in err and "kl_x" in err
    good = checkpoint.list_checkpoints(str(out))
    assert good
    checkpoint.load(good[0])  # intact
    # skipping instead of stopping: the run finishes and records the skipped step
    calls["n"] = 0
    out2 = tmp_path / "skip"
    assert main(ARGS + ["--out", str(out2), "--on-nonfinite", "skip"]) == 0
    assert "step skipped" in capsys.readouterr().out
    import json

    epochs = [json.loads(ln) for ln in open(out2 / "metrics.jsonl")]
    assert epochs[1]["train"]["skipped_steps"] == 1 and np.isfinite(epochs[1]["train"]["loss"])
    assert epochs[0]["train"]["skipped_steps"] == 0


ONE_EPOCH = ["mnist", "--variant", "kl", "--epochs", "1", "--train-subset", "300", "--no-progress", "--device", "cpu"]


@pytest.mark.parametrize("poison, message", [
    ("term", "non-finite objective at epoch 1, step 2 (terms: kl_w)"),  # the loss itself stays finite
    ("grad", "non-finite gradient at epoch 1, step 2 (parameters: qw.net.0.W)"),
])
def test_a_non_finite_term_or_gradient_alone_stops_the_run_before_the_update(tmp_path, capsys, monkeypatch, poison,
                                                                              message):
    """The guard reads the loss, every term and every gradient element (one all_finite call, the
    step's one host read on a GPU), so a NaN in one term or one gradient stops the run, named,
    though the loss is finite; the parameters stay as the step before left them."""
    from jmvae_cupy.models.jmvae import JMVAEKL

    real, calls, seen = JMVAEKL.loss_and_grads, {"n": 0}, {}

    def poisoned(self, *a, **k):
        loss, terms, grads = real(self, *a, **k)
        calls["n"] += 1
        if calls["n"] == 2:
            seen["params"] = {k: v.copy() for k, v in self.params.items()}
            seen["model"] = self
            if poison == "term":
                terms["kl_w"] = terms["kl_w"] * np.inf
            else:
                grads["qw.net.0.W"][3, 1] = np.nan
        return loss, terms, grads

    monkeypatch.setattr(JMVAEKL, "loss_and_grads", poisoned)
    assert main(ONE_EPOCH + ["--out", str(tmp_path / "run")]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(message)
    assert all(np.array_equal(seen["model"].params[k], v) for k, v in seen["params"].items())


def test_the_guard_reads_everything_in_one_all_finite_call_per_step(tmp_path, monkeypatch):
    """One call a step with the loss, each term and each gradient (on a GPU: one host read)."""
    from jmvae_cupy.train import step

    calls = []
    real = step.all_finite

    def spy(arrays):
        arrays = list(arrays)
        calls.append(len(arrays))
        return real(arrays)

    monkeypatch.setattr(step, "all_finite", spy)
    assert main(ONE_EPOCH + ["--out", str(tmp_path / "run")]) == 0
    n_params = 34  # MNIST JMVAE-kl
    n_terms = 6  # rec_x, rec_w, kl, kl_x, kl_w, elbo
    assert calls == [1 + n_terms + n_params] * 3, calls  # 300 digits / batch 100 = 3 steps


def test_the_guard_takes_python_numbers_for_the_loss_and_terms():
    """A loss or term that is a Python float (a custom model's, say) is checked like a 0-d array."""
    from jmvae_cupy.train import NonFiniteError, check_finite

    grads = {"g": np.ones(3, np.float32)}
    check_finite(1.5, {"rec": 2.0, "kl": np.float32(0.5)}, grads)
    with pytest.raises(NonFiniteError, match=r"terms: rec\)"):
        check_finite(1.5, {"rec": float("nan"), "kl": np.float32(0.5)}, grads, "epoch 1, step 1")
    with pytest.raises(NonFiniteError, match=r"terms: loss\)"):
        check_finite(float("inf"), {"rec": 2.0}, grads)
