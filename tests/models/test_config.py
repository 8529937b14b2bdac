"""Model configs (jmvae_cupy/models/config.py): the built-in setups, the defaults chosen from the
data, width scaling, the learned-variance decoder, and a table of malformed configs, each refused
with one line by ``python -m jmvae_cupy.data check FILE --config CFG`` (and by train)."""

import json

import numpy as np
import pytest

from jmvae_cupy.data.__main__ import main as data_main
from jmvae_cupy.data.paired import value_stats, write_paired
from jmvae_cupy.distributions import FixedVarGaussian, LearnedVarGaussian
from jmvae_cupy.models import build_model
from jmvae_cupy.models.architectures import CELEBA, MNIST
from jmvae_cupy.models.config import (
    ConfigError,
    arch_from_model,
    builtin_config,
    check_config,
    conv_nets,
    infer_config,
    parse_config,
    resolve,
    scale_widths,
)
from jmvae_cupy.rng import Rng
from jmvae_cupy.train import main as train_main


def test_the_builtin_configs_are_the_appendix_networks():
    assert (MNIST.enc_x, MNIST.dec_x, MNIST.dec_w, MNIST.enc_joint) == ("D512R-D512R", "D512R-D512R-D784",
                                                                        "D512R-D512R-D10", "")
    assert (CELEBA.enc_x, CELEBA.enc_x_uni) == ("C64R-C128BR-C256BR-C256BR-F", "C64R-C128BR-C256BR-C256BR-F-D1024R")
    assert (CELEBA.dec_x, CELEBA.dec_w, CELEBA.enc_w_uni) == ("D4096R-DC256BR-DC128BR-DC64BR-DC3", "D512R-D4096R-D40",
                                                              "D512R-D512BR-D1024R")
    assert CELEBA.x_lik == FixedVarGaussian(1.0) and builtin_config("mnist")["train"]["epochs"] == 30


def test_conv_stack_for_square_images_only():
    assert conv_nets((3, 32, 32)) == ("C64R-C128BR-C256BR-F", "D4096R-DC128BR-DC64BR")
    assert conv_nets((1, 8, 8)) == ("C64R-F", "D4096R-256x4x4")
    assert conv_nets((1, 8, 6)) is None and conv_nets((3, 12, 12)) is None and conv_nets((64,)) is None


def test_scaling_keeps_reshapes_whole():
    assert scale_widths("D4096R-DC256BR-DC3", 1 / 3) == "D1360R-DC85BR-DC1"  # 1360 = 85 x 16
    assert scale_widths("D4608R-512x3x3-DC64", 0.5) == "D2304R-256x3x3-DC32"
    assert scale_widths("C64R-F-D1024R", 1.0) == "C64R-F-D1024R"


def _stats(a):
    return value_stats(np.asarray(a, dtype=np.float64))


@pytest.mark.parametrize("x, w, x_lik, w_lik", [
    (np.eye(4)[[0, 1, 2, 3, 1]], np.array([[0, 1], [1, 1], [0, 0], [1, 0], [1, 1]]), "categorical", "bernoulli"),
    (np.random.default_rng(0).random((5, 3)), np.eye(3)[[0, 1, 2, 0, 1]], "gaussian_fixed", "categorical"),
    (np.ones((5, 1)), np.full((5, 2), -1.0), "bernoulli", "gaussian_fixed"),  # one column of ones: not one-hot
])
def test_likelihoods_are_inferred_from_the_values(x, w, x_lik, w_lik):
    cfg = infer_config(x.shape[1:], w.shape[1], _stats(x), _stats(w))
    assert (cfg["x"]["likelihood"], cfg["w"]["likelihood"]) == (x_lik, w_lik)


def test_images_get_the_conv_stack_and_other_shapes_a_flatten():
    s = _stats(np.random.default_rng(0).random((4, 3, 16, 16)))
    cfg = infer_config((3, 16, 16), 2, s, _stats(np.eye(2)))
    assert cfg["x"]["encoder"] == "C64R-C128BR-F" and cfg["joint"] == "D1024R" and cfg["train"]["lr"] == 1e-4
    cfg = infer_config((5, 7), 2, s, _stats(np.eye(2)))
    assert cfg["x"]["encoder"] == "F-D512R-D512R" and cfg["latent"] == 64


def test_a_learned_variance_decoder_outputs_mean_and_variance_per_feature():
    user = parse_config(json.dumps({"latent": 2, "x": {"likelihood": "gaussian_learned", "encoder": "C4R-F",
                                                       "decoder": "D64R-4x4x4"},
                                    "w": {"likelihood": "gaussian_learned", "encoder": "D4R", "decoder": "D4R"}}),
                        "json", "cfg.json")
    arch = arch_from_model(resolve(user, (1, 8, 8), 2, builtin_config("mnist")))
    assert arch.dec_w == "D4R-D4" and arch.x_lik == LearnedVarGaussian()
    assert arch.dec_x == "D64R-4x4x4-DC2"  # after an image: the output deconv, 2 C channels (mean, variance)
    model = build_model(arch, "kl", dtype="float64")
    x, w = np.random.default_rng(1).standard_normal((3, 1, 8, 8)), np.ones((3, 2))
    loss, terms, _ = model.loss_and_grads(x, w, Rng(0))
    assert np.isfinite(float(loss)) and model.decode_x(model.encode(x, w)[0]).shape == (3, 2, 8, 8)
    assert model.arch.x_lik.mean(model.decode_x(model.encode(x, w)[0])).shape == (3, 64)


NETS = {"encoder": "D8R", "decoder": "D8R"}
# (config as written -> what the one line says); "toml:" / "json:" texts are written as they are
MALFORMED = [
    ("json:[1, 2]", "a model config is a table of keys"),
    ("json:{nope", "not valid JSON"),
    ("toml:latent = ", "not valid TOML"),
    ({"latnet": 2}, "unknown key 'latnet' (did you mean 'latent'?)"),
    ({"x": {"likelyhood": "bernoulli"}}, "unknown key x.'likelyhood' (did you mean 'likelihood'?)"),
    ({"x": "bernoulli"}, "'x' must be a table of keys"),
    ({"variant": "cvae"}, 'variant must be "jmvae" | "kl" | "h"'),
    ({"latent": 0}, "latent must be an integer >= 1, not 0"),
    ({"latent": "8"}, 'latent must be an integer >= 1, not "8"'),
    ({"alpha": -1}, "alpha must be a finite number >= 0"),
    ({"x": {"likelihood": "poisson"}}, 'x.likelihood must be "bernoulli" | "categorical"'),
    ({"x": {"likelihood": "bernoulli", "variance": 2.0}}, 'x.variance applies to likelihood "gaussian_fixed" only'),
    ({"w": {"likelihood": "gaussian_fixed", "variance": 0}}, "w.variance must be a finite number > 0"),
    ({"x": {"encoder": "D8Q"}}, "x.encoder: cannot parse token 'D8Q'"),
    ({"x": {"encoder": 512}}, "x.encoder must be a network string"),
    ({"w": {"encoder": ""}}, "w.encoder is empty"),
    ({"jmvae_h": {"prior_z1": "C4R"}, "variant": "h"}, "C4 needs an image input (C, H, W), got shape (64,)"),
    ({"train": {"epochs": 0}}, "train.epochs must be an integer >= 1"),
    ({"train": {"lr": -0.1}}, "train.lr must be a finite number > 0"),
    ({"train": {"warmup": "3"}}, "train.warmup must be a finite number >= 0"),
    ({"x": {"encoder": "C8R"}}, "C8 needs an image input (C, H, W), got shape (6,)"),
    ({"x": {"likelihood": "bernoulli"}}, 'x.likelihood "bernoulli" needs values in [0, 1]'),
    ({"w": {"likelihood": "categorical"}}, 'w.likelihood "categorical" needs vectors of non-negative class weights'),
]


@pytest.fixture(scope="module")
def real_pairs(tmp_path_factory):
    r = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("cfg") / "real.npz"
    write_paired(path, r.standard_normal((30, 6)), r.standard_normal((30, 2)))
    return path


@pytest.mark.parametrize("cfg, msg", MALFORMED, ids=[m[:40] for _, m in MALFORMED])
def test_malformed_configs_are_refused_with_one_line(tmp_path, capsys, real_pairs, cfg, msg):
    if isinstance(cfg, str):
        fmt, text = cfg.split(":", 1)
        path = tmp_path / f"cfg.{fmt}"
        path.write_text(text)
    else:
        path = tmp_path / "cfg.json"
        cfg = {**cfg, "x": {**NETS, **cfg.get("x", {})} if isinstance(cfg.get("x", {}), dict) else cfg["x"]}
        path.write_text(json.dumps(cfg))
    assert data_main(["check", str(real_pairs), "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and msg in err, err
    out = tmp_path / "run"
    assert train_main(["data", "--data", str(real_pairs), "--config", str(path), "--out", str(out), "--device", "cpu",
                       "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and msg in err, err
    assert not out.exists()  # nothing written


def test_a_config_file_must_be_toml_or_json(tmp_path):
    (tmp_path / "c.yaml").write_text("latent: 2\n")
    with pytest.raises(ConfigError, match="must be a .toml or .json file"):
        from jmvae_cupy.models.config import read_config_file

        read_config_file(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="no such config file"):
        read_config_file(tmp_path / "c.toml")
    assert check_config({}, "x")["x"]["likelihood"] is None
