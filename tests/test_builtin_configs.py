"""The built-in MNIST and CelebA setups give the numbers they gave before they were written as model
configs (jmvae_cupy/configs/).

* On any machine: the configs build the very architectures that were written by hand before
  (``BEFORE``: the Arch fields of models/architectures.py then, copied here), so every model is
  built, initialised and trained by the same code as before.
* Where the numbers were recorded (OpenBLAS with its Haswell kernels: this project's AMD EPYC
  machines): the same seed gives the same step losses, to the last bit, the same parameters after
  the steps, and the same test bound.  A thread count changes summation orders, so these run with
  one BLAS and one Numba thread and hold at any core count; another CPU's kernels (AVX-512 on an
  Intel Xeon) sum in another order, and there the recorded bits are skipped with that reason.
"""

import hashlib
import json

import numba
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from jmvae_cupy import checkpoint, train
from jmvae_cupy.data.__main__ import main as data_main
from jmvae_cupy.distributions import Bernoulli, Categorical, FixedVarGaussian
from jmvae_cupy.models import architectures as A
from tests.data.test_celeba import make_celeba

# (step losses as float.hex, sha256 of the parameters after the last step, test ELBO as float.hex)
RECORDED = {
    "mnist-jmvae": (["0x1.1238d40000000p+9", "0x1.0629340000000p+9", "0x1.e9fb720000000p+8", "0x1.b874e20000000p+8"],
                    "a37f6d1d25adfb2ea27dc2995fc7de068d10a3579a52b3305f328bfd4d7f576d", "-0x1.8b7a2d8000000p+8"),
    "mnist-kl": (["0x1.1238d40000000p+9", "0x1.06a5120000000p+9", "0x1.eccfc00000000p+8", "0x1.c1adb80000000p+8"],
                 "87eef9bc530ac68ffccd07abc2bf268f9e257a61dab56d31b06937db17589815", "-0x1.8807dd0000000p+8"),
    "mnist-h": (["0x1.124b680000000p+9", "0x1.05af500000000p+9", "0x1.ea1ec20000000p+8", "0x1.b691620000000p+8"],
                "8b4d49edd37ded564636ca28e14a2399f4b3c652b12412a427c222a86c8548f5", "-0x1.82384e0000000p+8"),
    "celeba-kl": (["0x1.b6b75c0000000p+11", "0x1.b96d6c0000000p+11", "0x1.b763e20000000p+11", "0x1.c0ea200000000p+11"],
                  "b5530b40a5da7d41a80dc8c091ae0a3ea18168fba27581aa1bcd42487565eddb", "-0x1.a916da0000000p+11"),
}
COMMON = ["--epochs", "1", "--no-progress", "--device", "cpu", "--sample-every", "1"]
RECORDED_WITH = "Haswell"  # OpenBLAS's kernel family on the machine that recorded RECORDED

_GAUSS = FixedVarGaussian(1.0)
# the hand-written Archs before the configs: (name, x_shape, w_dim, x_lik, w_lik, enc_x, enc_w, enc_joint,
# enc_x_uni, enc_w_uni, dec_x, dec_w, prior_z1, h_chain, latent)
BEFORE = {
    "mnist": ("mnist", (784,), 10, Bernoulli(), Categorical(), "D512R-D512R", "D512R-D512R", "", "D512R-D512R",
              "D512R-D512R", "D512R-D512R-D784", "D512R-D512R-D10", "D512R-D512R", "D64-D512R-D512R", 64),
    "celeba": ("celeba", (3, 64, 64), 40, _GAUSS, _GAUSS, "C64R-C128BR-C256BR-C256BR-F", "D512R-D512BR", "D1024R",
               "C64R-C128BR-C256BR-C256BR-F-D1024R", "D512R-D512BR-D1024R", "D4096R-DC256BR-DC128BR-DC64BR-DC3",
               "D512R-D4096R-D40", "D512R-D512R", "D64-D512R-D512R", 128),
    "celeba32/16": ("celeba", (3, 32, 32), 40, _GAUSS, _GAUSS, "C4R-C8BR-C16BR-F", "D32R-D32BR", "D64R",
                    "C4R-C8BR-C16BR-F-D64R", "D32R-D32BR-D64R", "D256R-DC8BR-DC4BR-DC3", "D32R-D256R-D40",
                    "D32R-D32R", "D4-D32R-D32R", 8),
}


def _openblas_kernels() -> str:
    from threadpoolctl import threadpool_info

    return next((p.get("architecture") or "?" for p in threadpool_info() if p.get("internal_api") == "openblas"),
                "no OpenBLAS")


needs_recording_cpu = pytest.mark.skipif(
    _openblas_kernels() != RECORDED_WITH,
    reason=f"bits recorded with OpenBLAS's {RECORDED_WITH} kernels, this machine's are {_openblas_kernels()} "
           "(test_builtin_configs_build_the_architectures_written_before covers it)")


@pytest.mark.parametrize("key, arch", [("mnist", lambda: A.MNIST), ("celeba", lambda: A.CELEBA),
                                       ("celeba32/16", lambda: A.celeba_arch(32, 0.0625, 8))])
def test_builtin_configs_build_the_architectures_written_before(key, arch):
    """Field by field (likelihoods included), so a config that drifts names its field."""
    from dataclasses import fields

    got = arch()
    for f, want in zip(fields(A.Arch), BEFORE[key]):
        assert getattr(got, f.name) == want, f"{key}: {f.name} {getattr(got, f.name)!r} != {want!r}"


def _run(argv, out, monkeypatch):
    """train.main(argv) with one BLAS / Numba thread: (the step losses as float.hex, the parameters' sha256,
    the epoch's test ELBO as float.hex)."""
    losses = []
    step = train.Trainer._step_grads

    def recording(self, x, w, beta):
        out_ = step(self, x, w, beta)
        losses.append(float(out_[0]).hex())
        return out_

    monkeypatch.setattr(train.Trainer, "_step_grads", recording)
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            assert train.main(argv + ["--out", str(out)]) == 0
    finally:
        numba.set_num_threads(before)
    ck = checkpoint.load(checkpoint.list_checkpoints(str(out))[0])
    h = hashlib.sha256()
    for k in sorted(ck["params"]):
        h.update(k.encode())
        h.update(np.ascontiguousarray(ck["params"][k]).tobytes())
    test = json.loads(open(out / "metrics.jsonl").readline())["test"]
    return losses, h.hexdigest(), float(test["elbo"]).hex()


@needs_recording_cpu
@pytest.mark.parametrize("variant", ["jmvae", "kl", "h"])
def test_builtin_mnist_config_gives_the_recorded_losses_bit_for_bit(tmp_path, monkeypatch, variant):
    argv = ["mnist", "--variant", variant, "--train-subset", "200", "--batch-size", "50"] + COMMON
    assert _run(argv, tmp_path / "run", monkeypatch) == RECORDED[f"mnist-{variant}"]


@needs_recording_cpu
def test_builtin_celeba_config_gives_the_recorded_losses_bit_for_bit(tmp_path, monkeypatch):
    make_celeba(tmp_path / "src", n=40)
    h5 = tmp_path / "c.h5"
    assert data_main(["prepare", "celeba", str(tmp_path / "src"), "--out", str(h5), "--size", "32",
                      "--no-progress"]) == 0
    argv = ["celeba", "--variant", "kl", "--data", str(h5), "--width-scale", "0.0625", "--batch-size", "8",
            "--latent", "8"] + COMMON
    assert _run(argv, tmp_path / "run", monkeypatch) == RECORDED["celeba-kl"]


def test_a_run_recorded_before_models_were_still_evaluates_and_generates(tmp_path, capsys):
    """A config.json without "model" (runs made before configs existed) is read with its dataset's built-in
    model; a run's own "model" is what rebuilds it otherwise."""
    from jmvae_cupy import evaluate, generate

    run = tmp_path / "run"
    assert train.main(["mnist", "--variant", "kl", "--train-subset", "100", "--batch-size", "50", "--out", str(run)]
                      + COMMON) == 0
    cfg = json.load(open(run / "config.json"))
    assert cfg["model"]["x"] == {"likelihood": "bernoulli", "encoder": "D512R-D512R", "encoder_alone": "D512R-D512R",
                                 "decoder": "D512R-D512R"}
    del cfg["model"]
    (run / "config.json").write_text(json.dumps(cfg))
    capsys.readouterr()
    assert evaluate.main([str(run), "--json", "--test-size", "50", "--samples", "2", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["test_size"] == 50
    assert generate.main([str(run), "faces", "--attrs", "3", "--out", str(tmp_path / "g.png")]) == 0
