"""The training command end to end on the embedded MNIST subset (small: a few hundred digits)."""

import json
import os

import h5py
import numpy as np
import pytest

from jmvae_cupy import checkpoint
from jmvae_cupy.data.__main__ import main as data_main
from jmvae_cupy.distributed import GlobalNoiseRng, rows_of
from jmvae_cupy.layers.batchnorm import MOMENTUM
from jmvae_cupy.rng import Rng
from jmvae_cupy.train import Trainer, beta_at, build_parser, config_from_args, main
from tests.data.test_celeba import make_celeba

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
    from PIL import Image

    from jmvae_cupy.viz import HEADER_PX

    # 8 rows x 10 labels of 28x28 digits (pad 2, scale 2) under the strip of the labels 0-9
    assert Image.open(out / "samples-e0002.png").size == (2 * (10 * 30 + 2), 2 * HEADER_PX + 2 * (8 * 30 + 2))
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
    assert main(["mnist", "--alpha", "-1", "--out", str(out)] + FAST) == 1
    assert _err(capsys) == "error: --alpha must be >= 0, got -1.0"  # (it trained to a loss of -7e24 before)
    assert main(["mnist", "--batch-size", "20000", "--out", str(out), "--no-progress", "--device", "cpu"]) == 1
    assert _err(capsys) == "error: --batch-size 20000 is larger than the 8000 training digits"
    assert not out.exists()
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


# ---------------------------------------------------------------------------- --micro-batches K
def test_micro_batches_average_chunks_of_the_same_batch_and_noise(tmp_path):
    """K = 1 is the plain step bit for bit; K = 2 processes the same 100 rows with the same noise as
    two chunks of 50 and averages their gradients: the same update up to the summation order
    (float64: 1e-12; measured ~2e-14), and not bit-identical (the test can tell)."""
    args = ["mnist", "--variant", "kl", "--epochs", "1", "--dtype", "float64"] + FAST
    runs = {}
    for name, extra in (("plain", []), ("k1", ["--micro-batches", "1"]), ("k2", ["--micro-batches", "2"])):
        assert main(args + ["--out", str(tmp_path / name)] + extra) == 0
        runs[name] = _final_params(str(tmp_path / name))
    (p0, m0, meta0), (p1, m1, meta1), (p2, _, meta2) = runs["plain"], runs["k1"], runs["k2"]
    for k in p0:
        assert np.array_equal(p0[k], p1[k]) and np.array_equal(m0[k], m1[k]), k
        assert np.abs(p0[k] - p2[k]).max() <= 1e-12, (k, np.abs(p0[k] - p2[k]).max())
    assert any(not np.array_equal(p0[k], p2[k]) for k in p0)
    assert "micro_batches" not in meta1["config"] and meta2["config"]["micro_batches"] == 2
    assert meta0["noise_rng"] == meta2["noise_rng"]  # the chunks drew the step's noise once, in effect
    t0 = [json.loads(ln)["train"] for ln in open(tmp_path / "plain" / "metrics.jsonl")]
    t2 = [json.loads(ln)["train"] for ln in open(tmp_path / "k2" / "metrics.jsonl")]
    assert all(np.isclose(a[k], b[k], rtol=1e-12) for a, b in zip(t0, t2) for k in ("loss", "rec_x", "kl"))


def test_micro_batches_resume_exactly_and_must_agree(tmp_path, capsys):
    """A run resumed from a checkpoint taken inside an epoch (after step 2 of 3) ends bit-identical."""
    b = tmp_path / "b"
    args = ["mnist", "--variant", "kl", "--micro-batches", "4", "--checkpoint-steps", "1", "--epochs", "2"] + FAST
    assert main(args + ["--out", str(b)]) == 0
    pa, ma, _ = _final_params(str(b))
    os.unlink(checkpoint.list_checkpoints(str(b))[0])  # the epoch-end one: the newest left is mid-epoch
    assert (_final_params(str(b))[2]["epoch"], _final_params(str(b))[2]["step"]) == (1, 2)
    assert main(args + ["--out", str(b), "--resume"]) == 0
    pb, mb, meta = _final_params(str(b))
    assert (meta["epoch"], meta["step"]) == (2, 0)
    for k in pa:
        assert np.array_equal(pa[k], pb[k]) and np.array_equal(ma[k], mb[k]), k
    capsys.readouterr()
    other = [x if x != "4" else "2" for x in args]
    assert main(other + ["--epochs", "3", "--out", str(b), "--resume"]) == 1
    assert "micro_batches: checkpoint 4 vs now 2" in _err(capsys)
    without = [x for x in args if x not in ("--micro-batches", "4")]
    assert main(without + ["--epochs", "3", "--out", str(b), "--resume"]) == 1
    assert "micro_batches: checkpoint 4 vs now None" in _err(capsys)


def test_micro_batches_must_divide_the_batch(tmp_path, capsys):
    assert main(["mnist", "--micro-batches", "3", "--out", str(tmp_path / "r")] + FAST) == 1
    assert _err(capsys) == ("error: --batch-size 100 is not divisible by --micro-batches 3 "
                            "(each micro-batch takes B/K rows)")
    assert main(["mnist", "--micro-batches", "0", "--out", str(tmp_path / "r")] + FAST) == 1
    assert _err(capsys) == "error: --micro-batches must be >= 1, got 0"
    assert not (tmp_path / "r").exists()



# ---------------------------------------------------------------------------- warm-up
def test_beta_rises_linearly_from_zero_to_one_over_the_warmup():
    assert beta_at(0, 3) == 0.0
    assert beta_at(1.5, 3) == 0.5
    assert beta_at(0.75, 3) == 0.25
    assert beta_at(3, 3) == 1.0
    assert beta_at(5, 3) == 1.0
    assert beta_at(0, 0) == beta_at(2.5, 0) == 1.0  # no warm-up: the bound from the first step


def test_steps_use_the_warm_up_beta_and_metrics_record_it(tmp_path, monkeypatch):
    """3 steps per epoch (300 digits, batches of 100), --warmup 2: step s of epoch e (from 0) trains with
    beta = (e + s/3) / 2, and the metrics line of epoch e records the beta reached at its end, e / 2."""
    seen = []
    part = Trainer._part

    def spy(self, x, w, rng, beta):
        seen.append(beta)
        return part(self, x, w, rng, beta)
    monkeypatch.setattr(Trainer, "_part", spy)
    out = tmp_path / "run"
    assert main(["mnist", "--variant", "jmvae", "--epochs", "2", "--warmup", "2", "--out", str(out)] + FAST) == 0
    np.testing.assert_allclose(seen, [0.0, 1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6], rtol=1e-15, atol=0)
    assert [json.loads(ln)["beta"] for ln in open(out / "metrics.jsonl")] == [0.5, 1.0]


# ---------------------------------------------------------------------------- micro-batches and batch norm
def test_micro_batches_average_the_batch_norm_statistics_of_chunks_from_the_same_start(tmp_path):
    """--micro-batches 2 on a CelebA model with batch norm: every chunk's forward starts from the
    step's running statistics s0, and the step leaves the mean of what the two chunks left,
    (1 - m) s0 + m (b_0 + b_1) / 2 -- not the statistics of the chunks applied one after the other,
    nor those of the last chunk alone.  Each chunk's result is rebuilt here by a forward of the model
    on that chunk alone, from s0, with that chunk's rows of the batch's noise."""
    src, h5 = tmp_path / "src", tmp_path / "celeba32.h5"
    make_celeba(src, n=20)
    assert data_main(["prepare", "celeba", str(src), "--out", str(h5), "--size", "32", "--no-progress"]) == 0
    args = build_parser().parse_args(["celeba", "--variant", "kl", "--data", str(h5), "--width-scale", "0.0625",
                                      "--batch-size", "8", "--latent", "4", "--micro-batches", "2",
                                      "--dtype", "float64", "--device", "cpu"])
    trainer = Trainer(config_from_args(args), str(tmp_path / "run"), device="cpu", progress=False,
                      log=lambda *a, **k: None)
    model = trainer.model
    assert any(".mean" in k for k in model.state)  # batch norm is there
    _, batch = trainer._epoch_batches()
    x, w = batch(0)
    assert len(x) == 8
    s0 = {k: v.copy() for k, v in model.state.items()}
    noise0 = trainer.noise_rng.get_state()
    trainer._step_grads(x, w, 0.5)
    after = {k: v.copy() for k, v in model.state.items()}
    left = []
    for k in range(2):  # each chunk on its own, from s0
        for name, v in model.state.items():
            v[...] = s0[name]
        r = Rng(0)
        r.set_state(noise0)
        model.loss_and_grads(rows_of(x, k, 2), rows_of(w, k, 2), GlobalNoiseRng(r, k, 2), beta=0.5)
        left.append({name: v.copy() for name, v in model.state.items()})
    for name in s0:
        want = (left[0][name] + left[1][name]) / 2
        np.testing.assert_allclose(after[name], want, rtol=1e-12, atol=1e-14, err_msg=name)
        if name.endswith(".mean"):  # the chunks' batch means b_k differ: the test can tell the schemes apart
            b = [(left[k][name] - (1 - MOMENTUM) * s0[name]) / MOMENTUM for k in range(2)]
            assert np.abs(b[0] - b[1]).max() > 1e-6, name


def test_snapshots_keep_every_nth_epoch_and_survive_a_kill_between_checkpoint_and_snapshot(tmp_path, monkeypatch):
    out = tmp_path / "s"
    args = ["mnist", "--variant", "kl", "--snapshot-every", "2", "--out", str(out)] + FAST
    assert main(args + ["--epochs", "5"]) == 0
    snaps = sorted(os.listdir(out / "snapshots"))
    assert snaps == ["ckpt-000002.h5", "ckpt-000004.h5"]                 # epochs 2 and 4, never pruned
    assert len(checkpoint.list_checkpoints(str(out))) == checkpoint.KEEP  # the pruned series is separate
    assert checkpoint.load(str(out / "snapshots" / "ckpt-000004.h5"))["meta"]["epoch"] == 4
    # killed after epoch 6's checkpoint, before its snapshot: the resume makes the snapshot first
    monkeypatch.setattr(Trainer, "keep_snapshot", lambda self, path: None)
    assert main(args + ["--epochs", "6", "--resume"]) == 0
    assert not (out / "snapshots" / "ckpt-000006.h5").exists()
    monkeypatch.undo()
    assert main(args + ["--epochs", "6", "--resume"]) == 0
    assert checkpoint.load(str(out / "snapshots" / "ckpt-000006.h5"))["meta"]["epoch"] == 6
    assert main(["mnist", "--snapshot-every", "-1", "--out", str(tmp_path / "bad")] + FAST) == 1


def test_h_top_z1_is_recorded_resumed_and_checked(tmp_path, capsys):
    out = tmp_path / "hz1"
    args = ["mnist", "--variant", "h", "--h-top", "z1", "--out", str(out)] + FAST
    assert main(args + ["--epochs", "1"]) == 0
    assert json.load(open(out / "config.json"))["h_top"] == "z1"
    assert "qz2.net.0.W" in _final_params(str(out))[0]
    assert _final_params(str(out))[0]["qz2.net.0.W"].shape[0] == 64  # q(z2|z1) reads z1 (latent 64)
    assert main(["mnist", "--variant", "h", "--epochs", "2", "--out", str(out), "--resume"] + FAST) == 1
    assert "h_top" in capsys.readouterr().err                             # the chain cannot resume a z1 run
    assert main(args + ["--epochs", "2", "--resume"]) == 0
    assert main(["mnist", "--variant", "kl", "--h-top", "z1", "--out", str(tmp_path / "x")] + FAST) == 1
    assert "--h-top applies to JMVAE-h" in capsys.readouterr().err


def test_every_train_option_is_documented_in_the_readme():
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md"), encoding="utf-8").read()
    options = [o for a in build_parser()._actions if a.help != "==SUPPRESS==" for o in a.option_strings
               if o.startswith("--") and o != "--help"]
    assert len(options) > 20
    missing = [o for o in options if f"`{o}" not in readme]
    assert not missing, f"train options missing from README.md: {missing}"
