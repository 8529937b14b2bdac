"""The training command end to end on the embedded MNIST subset (small: a few hundred digits)."""

import json
import os

import h5py
import numpy as np
import pytest

from jmvae_cupy import checkpoint
from jmvae_cupy.train import main

FAST = ["--train-subset", "300", "--no-progress", "--device", "cpu", "--sample-every", "1"]


def _final_params(run_dir):
    ck = checkpoint.load(checkpoint.list_checkpoints(run_dir)[0])
    return ck["params"], ck["adam_m"], ck["meta"]


def test_train_writes_metrics_checkpoints_and_samples(tmp_path):
    out = tmp_path / "run"
    assert main(["mnist", "--variant", "kl", "--epochs", "2", "--out", str(out)] + FAST) == 0
    lines = [json.loads(ln) for ln in open(out / "metrics.jsonl")]
    assert [r["epoch"] for r in lines] == [1, 2]
    for r in lines:
        assert set(r["test"]) >= {"rec_x", "rec_w", "kl", "kl_x", "kl_w", "elbo", "loss"}
        assert all(np.isfinite(v) for v in r["train"].values())
    assert lines[1]["test"]["elbo"] > lines[0]["test"]["elbo"] - 5  # learning, not diverging
    assert (out / "samples-e0002.png").exists()
    assert len(checkpoint.list_checkpoints(str(out))) == 2  # the newest two are kept
    assert json.load(open(out / "config.json"))["variant"] == "kl"


@pytest.mark.parametrize("variant", ["jmvae", "h"])
def test_other_variants_train(tmp_path, variant):
    out = tmp_path / variant
    assert main(["mnist", "--variant", variant, "--epochs", "1", "--out", str(out)] + FAST) == 0
    assert (out / "samples-e0001.png").exists()


def test_resume_is_bit_identical(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    args = ["mnist", "--variant", "h", "--warmup", "2"] + FAST
    assert main(args + ["--epochs", "3", "--out", str(a)]) == 0
    assert main(args + ["--epochs", "1", "--out", str(b)]) == 0           # stop after epoch 1 ...
    assert main(args + ["--epochs", "3", "--out", str(b), "--resume"]) == 0  # ... and continue
    pa, ma, meta_a = _final_params(str(a))
    pb, mb, meta_b = _final_params(str(b))
    assert meta_a["epoch"] == meta_b["epoch"] == 3
    for k in pa:
        assert np.array_equal(pa[k], pb[k]), k
        assert np.array_equal(ma[k], mb[k]), k
    ra = [json.loads(ln) for ln in open(a / "metrics.jsonl")]
    rb = [json.loads(ln) for ln in open(b / "metrics.jsonl")]
    assert [r["test"] for r in ra] == [r["test"] for r in rb]


def test_resume_mid_epoch_is_bit_identical(tmp_path):
    """A checkpoint taken inside an epoch (--checkpoint-steps) resumes at that very step."""
    a, b = tmp_path / "a", tmp_path / "b"
    args = ["mnist", "--variant", "kl", "--epochs", "2", "--checkpoint-steps", "1"] + FAST
    assert main(args + ["--out", str(a)]) == 0
    assert main(args + ["--out", str(b)]) == 0
    # throw away the epoch-end checkpoints of b: the newest left is a mid-epoch one (epoch 1, step 1)
    for p in checkpoint.list_checkpoints(str(b)):
        os.unlink(p)
    assert main(["mnist", "--variant", "kl", "--epochs", "1", "--checkpoint-steps", "1", "--out", str(tmp_path / "c")]
                + FAST) == 0
    mid = [p for p in checkpoint.list_checkpoints(str(tmp_path / "c")) if not p.endswith("-000000.h5")]
    assert mid, "expected a mid-epoch checkpoint"
    os.replace(mid[0], b / os.path.basename(mid[0]))
    os.unlink(b / "metrics.jsonl")
    assert main(args + ["--out", str(b), "--resume"]) == 0
    pa, _, _ = _final_params(str(a))
    pb, _, _ = _final_params(str(b))
    for k in pa:
        assert np.array_equal(pa[k], pb[k]), k


def _err(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1
    return err[-1]


def test_bad_inputs_give_one_line_errors(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["mnist", "--variant", "vae", "--out", str(out)] + FAST) == 1
    assert "unknown variant" in _err(capsys)
    assert main(["mnist", "--epochs", "0", "--out", str(out)] + FAST) == 1
    assert "--epochs" in _err(capsys)
    assert main(["mnist", "--data-dir", str(tmp_path / "nowhere"), "--out", str(out)] + FAST) == 1
    assert "error:" in _err(capsys)
    assert not out.exists()  # nothing half-made: not even an empty run directory
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["mnist", "--out", str(blocker / "sub")] + FAST) == 1
    assert "output directory" in _err(capsys)


def test_existing_run_is_not_overwritten_and_conflicts_are_caught(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["mnist", "--variant", "kl", "--epochs", "1", "--out", str(out)] + FAST) == 0
    before = sorted(os.listdir(out))
    assert main(["mnist", "--variant", "kl", "--epochs", "1", "--out", str(out)] + FAST) == 1
    assert "already holds a run" in _err(capsys)
    assert main(["mnist", "--variant", "jmvae", "--epochs", "2", "--out", str(out), "--resume"] + FAST) == 1
    assert "variant" in _err(capsys)
    assert main(["mnist", "--variant", "kl", "--latent", "8", "--epochs", "2", "--out", str(out), "--resume"]
                + FAST) == 1
    assert "latent" in _err(capsys)
    assert sorted(os.listdir(out)) == before


def test_corrupted_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["mnist", "--epochs", "2", "--out", str(out)] + FAST) == 0
    newest, older = checkpoint.list_checkpoints(str(out))
    with h5py.File(newest, "r+") as f:  # flip one parameter value: the checksum must catch it
        d = f["params/px.4.b"]
        v = d[()]
        v[0] += 1.0
        d[...] = v
    with pytest.raises(checkpoint.CheckpointError, match="checksum"):
        checkpoint.load(newest)
    with open(older, "r+b") as f:  # and truncate the other one: nothing good is left
        f.truncate(1000)
    with pytest.raises(checkpoint.CheckpointError, match="truncated or corrupted"):
        checkpoint.load(older)
    assert main(["mnist", "--epochs", "3", "--out", str(out), "--resume"] + FAST) == 1
    assert "no good checkpoint" in _err(capsys)
