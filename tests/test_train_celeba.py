"""The training command on CelebA end to end: a synthetic folder in CelebA's format, prepared at
32x32, trained a few steps with narrow networks (--width-scale) on the CPU."""

import json

import numpy as np
import pytest

from jmvae_cupy import checkpoint
from jmvae_cupy.models import build_model
from jmvae_cupy.models.architectures import CELEBA, celeba_arch
from jmvae_cupy.train import main

FAST = ["--no-progress", "--device", "cpu", "--sample-every", "1", "--width-scale", "0.0625",
        "--batch-size", "8", "--latent", "8"]


@pytest.mark.parametrize("variant", ["jmvae", "kl", "h"])
def test_each_variant_trains_and_writes_samples(tmp_path, celeba_h5, variant):
    out = tmp_path / variant
    assert main(["celeba", "--variant", variant, "--epochs", "2", "--warmup", "1", "--data", str(celeba_h5),
                 "--out", str(out)] + FAST) == 0
    lines = [json.loads(ln) for ln in open(out / "metrics.jsonl")]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert all(np.isfinite(v) for r in lines for v in list(r["train"].values()) + list(r["test"].values()))
    assert (out / "samples-e0002.png").exists()
    cfg = json.load(open(out / "config.json"))
    assert cfg["lr"] == 1e-4 and cfg["data"] == str(celeba_h5) and cfg["width_scale"] == 0.0625
    ck = checkpoint.load(checkpoint.list_checkpoints(str(out))[0])
    assert any("running" in k or "mean" in k or "var" in k for k in ck["state"])  # batch-norm statistics


def test_resume_is_bit_identical(tmp_path, celeba_h5):
    a, b = tmp_path / "a", tmp_path / "b"
    args = ["celeba", "--variant", "kl", "--warmup", "1", "--data", str(celeba_h5)] + FAST
    assert main(args + ["--epochs", "2", "--out", str(a)]) == 0
    assert main(args + ["--epochs", "1", "--out", str(b)]) == 0
    assert main(args + ["--epochs", "2", "--out", str(b), "--resume"]) == 0
    ca = checkpoint.load(checkpoint.list_checkpoints(str(a))[0])
    cb = checkpoint.load(checkpoint.list_checkpoints(str(b))[0])
    for k in ca["params"]:
        assert np.array_equal(ca["params"][k], cb["params"][k]), k
    for k in ca["state"]:
        assert np.array_equal(ca["state"][k], cb["state"][k]), k


def test_bad_celeba_arguments(tmp_path, capsys, celeba_h5):
    assert main(["celeba", "--out", str(tmp_path / "r")] + FAST) == 1
    assert "--data" in capsys.readouterr().err
    assert main(["celeba", "--data", str(tmp_path / "none.h5"), "--out", str(tmp_path / "r2")] + FAST) == 1
    assert "no such file" in capsys.readouterr().err
    assert main(["mnist", "--data", str(celeba_h5), "--out", str(tmp_path / "r3")] + FAST) == 1
    assert "--data is for celeba" in capsys.readouterr().err
    for extra, message in ((["--batch-size", "1000"], "--batch-size 1000 is larger than the "),
                           (["--train-subset", "4"], "--train-subset 4 is smaller than one batch")):
        assert main(["celeba", "--data", str(celeba_h5), "--out", str(tmp_path / "r4")] + FAST + extra) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith(f"error: {message}") and "Traceback" not in "".join(err)
    assert not (tmp_path / "r4").exists()


def test_arch_helper_reproduces_the_appendix():
    assert celeba_arch() == CELEBA
    m = build_model(celeba_arch(32, 0.125, 4), "kl", device="cpu")
    assert m.arch.x_shape == (3, 32, 32)


def test_gan_trains_and_resumes_bit_identically(tmp_path, celeba_h5, capsys):
    """--gan: the discriminator trains beside the model, is checkpointed (its own groups and Adam), and a
    resumed run (mid-epoch checkpoints) ends bit-identical to an uninterrupted one."""
    a, b = tmp_path / "a", tmp_path / "b"
    args = ["celeba", "--variant", "kl", "--warmup", "1", "--data", str(celeba_h5), "--gan",
            "--gan-weight", "0.5"] + FAST
    assert main(args + ["--epochs", "2", "--out", str(a)]) == 0
    assert main(args + ["--epochs", "1", "--out", str(b), "--checkpoint-steps", "2"]) == 0
    assert main(args + ["--epochs", "2", "--out", str(b), "--resume"]) == 0
    lines = [json.loads(ln) for ln in open(a / "metrics.jsonl")]
    assert all(k in lines[-1]["train"] for k in ("gan_d", "gan_g", "d_real", "d_fake"))
    assert np.isfinite(lines[-1]["train"]["gan_d"])
    assert json.load(open(a / "config.json"))["gan"] is True
    ca = checkpoint.load(checkpoint.list_checkpoints(str(a))[0])
    cb = checkpoint.load(checkpoint.list_checkpoints(str(b))[0])
    assert ca["extra"]["disc/params"] and ca["extra"]["disc/adam/m"] and "disc_adam" in ca["meta"]
    assert not set(ca["params"]) & set(ca["extra"]["disc/params"])  # model params untouched by the GAN
    for g in ("params", "state"):
        for k in ca[g]:
            assert np.array_equal(ca[g][k], cb[g][k]), k
    for g in ("disc/params", "disc/state", "disc/adam/m", "disc/adam/v"):
        for k in ca["extra"][g]:
            assert np.array_equal(ca["extra"][g][k], cb["extra"][g][k]), (g, k)
    # resuming a GAN run without --gan is refused, and --gan is for celeba only
    capsys.readouterr()
    assert main(args[:-len(FAST)][:-3] + FAST + ["--epochs", "3", "--out", str(a), "--resume"]) == 1
    assert "gan" in capsys.readouterr().err
    assert main(["mnist", "--gan", "--out", str(tmp_path / "m")] + FAST) == 1
    assert "--gan is for celeba" in capsys.readouterr().err


def test_micro_batches_with_batch_norm_and_gan(tmp_path, celeba_h5):
    """--micro-batches with batch norm ("ghost" batch norm: each chunk normalises its own B/K rows)
    and the GAN (its discriminator's gradients and statistics averaged with the model's): K = 1 is
    the plain run bit for bit; K = 2 is another run (other normalisation), which still trains."""
    args = ["celeba", "--variant", "kl", "--warmup", "1", "--data", str(celeba_h5), "--gan", "--epochs", "1",
            "--dtype", "float64"] + FAST
    cks = {}
    for name, extra in (("plain", []), ("k1", ["--micro-batches", "1"]), ("k2", ["--micro-batches", "2"])):
        assert main(args + ["--out", str(tmp_path / name)] + extra) == 0
        cks[name] = checkpoint.load(checkpoint.list_checkpoints(str(tmp_path / name))[0])
    p, k1, k2 = cks["plain"], cks["k1"], cks["k2"]
    for g in ("params", "state"):
        for k in p[g]:
            assert np.array_equal(p[g][k], k1[g][k]), (g, k)
    for k in p["extra"]["disc/params"]:
        assert np.array_equal(p["extra"]["disc/params"][k], k1["extra"]["disc/params"][k]), k
    assert any(not np.allclose(p["state"][k], k2["state"][k], rtol=1e-6) for k in p["state"])
    lines = [json.loads(ln) for ln in open(tmp_path / "k2" / "metrics.jsonl")]
    assert all(np.isfinite(v) for v in lines[-1]["train"].values()) and "gan_d" in lines[-1]["train"]
