"""Networks from the paper's notation: parsing, the appendix architectures' shapes, and a
finite-difference check of whole small stacks (conv, transposed conv, batch norm, dense) in
float64, tolerance 1e-6 (ReLU kinks nearby; h = 1e-5)."""

import numpy as np
import pytest

from jmvae_cupy.gradcheck import check_gradients, dot
from jmvae_cupy.nets import BatchNorm, Conv2D, Deconv2D, Dense, Flatten, Net, NetSpecError, ReLU, Reshape, parse
from jmvae_cupy.rng import Rng

TOL_FD = 1e-6
ENCODER = "C64R-C128BR-C256BR-C256BR-F"
DECODER = "D4096R-DC256BR-DC128BR-DC64BR-DC3"


def test_parse_tokens():
    layers = parse("C8R-C16BR-F-D32BR-D4")
    kinds = [type(layer) for layer in layers]
    assert kinds == [Conv2D, ReLU, Conv2D, BatchNorm, ReLU, Flatten, Dense, BatchNorm, ReLU, Dense]
    # no bias right before batch norm, a bias everywhere else
    assert [layer.bias for layer in layers if hasattr(layer, "bias")] == [True, False, False, True]
    assert (layers[0].ksize, layers[0].stride, layers[0].pad) == (4, 2, 1)


def test_parse_reshapes():
    implicit = parse("D4096R-DC256BR-DC3")
    assert [type(layer) for layer in implicit] == [Dense, ReLU, Reshape, Deconv2D, BatchNorm, ReLU, Deconv2D]
    assert implicit[2].shape is None  # resolved at init: (n/16, 4, 4)
    explicit = parse("D4096R-256x4x4-DC256BR-DC3")
    assert explicit[2].shape == (256, 4, 4)
    assert [type(layer) for layer in parse("C8R-DC3")] == [Conv2D, ReLU, Deconv2D]  # image in: no reshape


@pytest.mark.parametrize(
    "spec, in_shape, match",
    [
        ("D1000R-DC64", 128, "not a multiple of 16"),
        ("D64-48x4x4-DC8", 10, "needs 768 inputs"),
        ("C64R", (784,), "needs an image input"),
        ("C8R-D10", (3, 16, 16), "insert F"),
        ("C8R-C8R-C8R", (3, 4, 4), "does not fit"),
        ("D512Q", 10, "cannot parse"),
        ("D0", 10, "positive"),
    ],
)
def test_spec_errors(spec, in_shape, match):
    with pytest.raises(NetSpecError, match=match):
        Net(spec, in_shape).init(Rng(0), np.float32, np)


def test_celeba_encoder_and_decoder_shapes():
    """The appendix's CelebA trunks: (N, 3, 64, 64) -> (N, 4096), and z (N, 128) -> (N, 3, 64, 64)."""
    gen = np.random.default_rng(0)
    enc = Net(ENCODER, (3, 64, 64))
    params, state = enc.init(Rng(0), np.float32, np)
    assert enc.out_shape == (4096,)
    h, caches = enc.forward(params, state, gen.standard_normal((2, 3, 64, 64)).astype(np.float32))
    assert h.shape == (2, 4096) and h.dtype == np.float32
    dx, grads = enc.backward(np.ones_like(h), caches)
    assert dx.shape == (2, 3, 64, 64) and set(grads) == set(params)
    assert params["0.W"].shape == (64, 3, 4, 4) and "2.b" not in params  # C128BR: no conv bias

    dec = Net(DECODER, 128)
    params, state = dec.init(Rng(0), np.float32, np)
    assert dec.out_shape == (3, 64, 64)
    x, caches = dec.forward(params, state, gen.standard_normal((2, 128)).astype(np.float32))
    assert x.shape == (2, 3, 64, 64) and x.dtype == np.float32 and x.flags.c_contiguous
    dz, grads = dec.backward(np.ones_like(x), caches)
    assert dz.shape == (2, 128) and dz.flags.c_contiguous and set(grads) == set(params)


def test_other_appendix_networks():
    qzw = Net("D512R-D512BR", 40)
    params, state = qzw.init(Rng(0), np.float32, np)
    assert qzw.out_shape == (512,) and set(state) == {"3.mean", "3.var"} and "2.b" not in params
    disc = Net("C64R-C128BR-C256BR-C256BR-F-D1024R-D1", (3, 64, 64))
    disc.init(Rng(0), np.float32, np)
    assert disc.out_shape == (1,)
    qzx = Net("C64R-C128BR-C256BR-C256BR-F-D1024R", (3, 64, 64))
    qzx.init(Rng(0), np.float32, np)
    assert qzx.out_shape == (1024,)


def test_implicit_and_explicit_reshape_agree():
    z = np.random.default_rng(1).standard_normal((3, 8))
    outs = []
    for spec in ("D64R-DC4BR-DC2", "D64R-4x4x4-DC4BR-DC2"):
        net = Net(spec, 8)
        params, state = net.init(Rng(5), np.float64, np)
        assert net.out_shape == (2, 16, 16)
        outs.append(net.forward(params, state, z)[0])
    np.testing.assert_array_equal(outs[0], outs[1])


def test_batchnorm_state_is_updated_through_the_net_and_used_in_eval():
    net = Net("C4BR-F", (2, 8, 8))
    params, state = net.init(Rng(0), np.float64, np)
    var_arr = state["1.var"]
    x = np.random.default_rng(2).standard_normal((4, 2, 8, 8)) + 2.0
    y_eval_before, _ = net.forward(params, state, x, train=False)
    net.forward(params, state, x, train=True)
    assert state["1.var"] is var_arr and not np.allclose(var_arr, 1.0)  # updated in place
    y_eval_after, _ = net.forward(params, state, x, train=False)
    assert not np.allclose(y_eval_before, y_eval_after)


def _check_net(spec, in_shape, n, train, seed):
    gen = np.random.default_rng(seed)
    net = Net(spec, in_shape)
    params, state = net.init(Rng(seed), np.float64, np)
    for v in params.values():  # move biases and BN parameters off their initial 0 / 1
        v += 0.1 * gen.standard_normal(v.shape)
    state = {k: v + 0.5 * gen.uniform(size=v.shape) for k, v in state.items()}
    x = gen.standard_normal((n, *net.in_shape)) * 1.3 + 0.4

    def run():
        # fresh copies of the running statistics: training mode updates them in place
        return net.forward(params, {k: v.copy() for k, v in state.items()}, x, train)

    y, caches = run()
    dy = gen.standard_normal(y.shape)
    dx, grads = net.backward(dy, caches)
    assert set(grads) == set(params)
    errs = check_gradients(lambda: dot(run()[0], dy), {"x": x, **params}, {"x": dx, **grads})
    assert max(errs.values()) < TOL_FD, errs


@pytest.mark.parametrize("train", [True, False])
def test_small_encoder_stack_gradients(train):
    """C3R-C4BR-F-D5BR-D3 on 3 images of 2x8x8 (odd widths), float64."""
    _check_net("C3R-C4BR-F-D5BR-D3", (2, 8, 8), 3, train, seed=11)


@pytest.mark.parametrize("train", [True, False])
def test_small_decoder_stack_gradients(train):
    """D32R-DC3BR-DC2 (implicit reshape 32 -> 2x4x4, then 4 -> 8 -> 16) from z of size 5, float64."""
    _check_net("D32R-DC3BR-DC2", 5, 3, train, seed=12)


FUSION_CASES = [
    # spec, in_shape, layer kinds, indices that run fused with their ReLU
    ("D9R-D8BR-D7R-D5", (6,), "Dense ReLU Dense BatchNorm ReLU Dense ReLU Dense", {0, 3, 5}),
    (
        "C4R-C5BR-F-D6BR-D3",
        (2, 8, 8),
        "Conv2D ReLU Conv2D BatchNorm ReLU Flatten Dense BatchNorm ReLU Dense",
        {0, 3, 7},
    ),
    ("D32R-DC3BR-DC2", (5,), "Dense ReLU Reshape Deconv2D BatchNorm ReLU Deconv2D", {0, 4}),
]


@pytest.mark.parametrize("need_dx", [True, False])
@pytest.mark.parametrize("case", FUSION_CASES, ids=[c[0] for c in FUSION_CASES])
def test_fused_relu_matches_the_layers_one_by_one(case, need_dx):
    """A Net runs Dense(bias) + ReLU, Conv2D(bias) + ReLU and BatchNorm + ReLU pairs fused (bias or
    beta and ReLU in one pass): same parameter names, same outputs and gradients as the layers'
    own forward/backward one by one, in float64."""
    spec, in_shape, kinds, fused = case
    net = Net(spec, in_shape)
    params, state = net.init(Rng(3), np.float64, np)
    assert [type(la).__name__ for la in net.layers] == kinds.split()
    assert net.fused == fused  # no bias (before batch norm): not fused; the BN before the ReLU is
    r = np.random.default_rng(0)
    x = r.standard_normal((4, *in_shape)) + 0.2
    y, caches = net.forward(params, {k: v.copy() for k, v in state.items()}, x)
    dy = r.standard_normal(y.shape)
    dx, grads = net.backward(dy, caches, need_dx=need_dx)

    net1 = Net(spec, in_shape)
    net1.init(Rng(3), np.float64, np)
    net1.fused = frozenset()  # layer by layer
    y1, caches1 = net1.forward(params, {k: v.copy() for k, v in state.items()}, x)
    dx1, grads1 = net1.backward(dy, caches1, need_dx=need_dx)
    np.testing.assert_allclose(y, y1, rtol=1e-13, atol=1e-14)
    assert grads.keys() == grads1.keys() == params.keys()
    for k in grads:
        np.testing.assert_allclose(grads[k], grads1[k], rtol=1e-12, atol=1e-14, err_msg=k)
    if need_dx:
        np.testing.assert_allclose(dx, dx1, rtol=1e-12, atol=1e-14)
    else:
        assert dx is None or type(net.layers[0]).__name__ not in ("Dense", "Conv2D")
