"""The CUDA kernels against the plain-xp reference under the Numba CUDA simulator.

Not collected by a plain ``pytest`` run (the name does not start with ``test_``): the simulator
must be switched on before numba.cuda is first imported, so test_cuda_kernels.py runs this
file in a fresh process,

    NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/kernels/cuda_sim_cases.py

The launchers get NumPy host arrays, which the simulator accepts as device arrays.  Outputs
start as NaN, so an element a kernel forgets to write fails the test.  The simulator runs every
thread as a Python thread: the sizes are small, but chosen to cover several blocks along both
grid axes (2-D block 32 x 8) and rows longer than the 128 threads of the KL reduction.

The kernels that loop over a capped grid (grid-stride: bias_relu, winograd) are also run with
``_dispatch.GRID_YZ_CAP`` lowered (monkeypatch), so that these small arrays take several strides
along grid y and z, as arrays beyond 65,535 blocks do on a GPU.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    pytest.skip("needs NUMBA_ENABLE_CUDASIM=1 set before numba.cuda is imported", allow_module_level=True)

from jmvae_cupy.kernels import _dispatch, adam, bernoulli, bias_relu, gauss_kl, im2col, reparam, winograd
from jmvae_cupy.selftest.bounds import (
    DTYPES,
    IM2COL_CASES,
    adam_inputs,
    bernoulli_inputs,
    bias_relu_inputs,
    check_bernoulli,
    check_bias_relu,
    check_col2im,
    check_im2col,
    check_kl_backward,
    check_kl_forward,
    check_reparam_backward,
    check_reparam_forward,
    gaussians,
    im2col_inputs,
    kl_args,
    reparam_inputs,
)


def nans_like(a, shape=None):
    return np.full(a.shape if shape is None else shape, np.nan, dtype=a.dtype)


def test_kernels_are_simulated():
    from numba.cuda import config

    assert config.ENABLE_CUDASIM
    for module in (reparam, gauss_kl, adam, bernoulli, bias_relu, im2col, winograd):
        for kernel in vars(module._cuda_kernels()).values():
            assert type(kernel).__module__.startswith("numba.cuda.simulator"), type(kernel)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (9, 40)])  # (9, 40): 2 x 2 blocks of 32 x 8
def test_reparam_kernels(rng, dtype, shape):
    mu, var, noise, dz = reparam_inputs(rng, *shape, dtype)
    z = reparam._reparam_forward_cuda(mu, var, noise, nans_like(mu))
    check_reparam_forward(z, mu, var, noise)
    dmu, dvar = reparam._reparam_backward_cuda(dz, var, noise, nans_like(dz), nans_like(dz))
    check_reparam_backward(dmu, dvar, dz, var, noise)


@pytest.mark.parametrize("prior", [False, True], ids=["general", "prior"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 5), (2, 300)])  # D < 128 threads, D > 2 x 128 threads
def test_gauss_kl_forward_kernel(rng, shape, dtype, prior):
    g = gaussians(rng, *shape, dtype)
    mu2, var2 = (g["mu1"], g["var1"]) if prior else (g["mu2"], g["var2"])  # placeholders for the prior
    kl = nans_like(g["mu1"], shape[:1])
    gauss_kl._gauss_kl_forward_cuda(g["mu1"], g["var1"], mu2, var2, kl, prior=prior)
    check_kl_forward(kl, kl_args(g, prior))


@pytest.mark.parametrize("prior", [False, True], ids=["general", "prior"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gauss_kl_backward_kernels(rng, dtype, prior):
    g = gaussians(rng, 9, 40, dtype)
    dkl = rng.standard_normal(9).astype(dtype)
    args = kl_args(g, prior)
    outs = [nans_like(g["mu1"]) for _ in args]  # dmu1, dvar1 (, dmu2, dvar2)
    if prior:
        grads = (*gauss_kl._gauss_kl_prior_backward_cuda(dkl, *args, *outs), None, None)
    else:
        grads = gauss_kl._gauss_kl_backward_cuda(dkl, *args, *outs)
    check_kl_backward(grads, dkl, args)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [1, 300])  # 300: two blocks of 256 threads, the second partly idle
def test_adam_kernel(rng, dtype, size):
    p, m, v, grads = adam_inputs(rng, (size,), dtype, 2)
    ref = [a.copy() for a in (p, m, v)]
    hyper = (0.9, 0.999, 3e-4, 4e-10)
    t = np.dtype(dtype).type
    flush = adam.flush_thresholds(dtype, 0.999)
    scalars = (t(0.9), t(1 - 0.9), t(0.999), t(1 - 0.999), t(3e-4), t(4e-10), *map(t, flush))
    for g in grads:
        adam._adam_cuda(p, g, m, v, *scalars)
        adam.adam_update_ref(*ref[:1], g, *ref[1:], *hyper)
    rtol = 4 * float(np.finfo(dtype).eps)
    for name, a, b in zip("pmv", (p, m, v), ref):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, b, rtol=rtol, atol=0, err_msg=name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 5), (2, 300)])  # D < 128 threads, D > 2 x 128 threads
def test_bernoulli_kernel(rng, dtype, shape):
    x, logits = bernoulli_inputs(rng, *shape, dtype)
    ll, r = bernoulli._bernoulli_loglik_cuda(x, logits, nans_like(x, shape[:1]), nans_like(x))
    check_bernoulli(ll, r, x, logits)


def run_bias_relu_cuda(u, b, dy):
    """The forward (on a copy of u) and the backward, with the scratch buffer backward_scratch asks
    for, as launch() allocates it on a GPU (here NaN-filled: a partial sum left unwritten shows)."""
    y = bias_relu._bias_relu_forward_cuda(u.copy(), b)
    scratch = [np.full(shape, np.nan, dtype) for shape, dtype in bias_relu.backward_scratch(*dy.shape, dy.dtype)]
    du, db = bias_relu._bias_relu_backward_cuda(dy, y, nans_like(dy), nans_like(b), *scratch)
    return y, du, db, scratch


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (9, 140)])  # (9, 140): 5 x 2 blocks of 32 x 8
def test_bias_relu_kernels(rng, dtype, shape):
    u, b, dy = bias_relu_inputs(rng, *shape, dtype)
    y, du, db, _ = run_bias_relu_cuda(u, b, dy)
    check_bias_relu(y, du, db, u, b, dy)


# (M, D, grid cap): one row, one column, M not a multiple of the 8 rows of a block nor of the
# 128 rows of a row block (P = ceil(M / 128) blocks of partial sums), D not a multiple of 32, a
# larger M (P = 8 row blocks, capped at 3: 16 strides per thread).  Cap 3 (GRID_YZ_CAP lowered):
# the forward's grid y (ceil(M / 8) blocks) and the backward's P are capped at 3, so each thread
# strides over several row groups, as at M > 8 * 65,535 on a GPU.  (The simulator takes ~0.1 s
# per block: the uncapped shapes stay small.)
BIAS_RELU_CASES = [(1, 1, None), (1, 70, None), (260, 33, None), (1, 1, 3), (300, 1, 3), (129, 33, 3),
                   (1000, 70, 3)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M, D, cap", BIAS_RELU_CASES, ids=[f"{m}x{d}-cap{c}" for m, d, c in BIAS_RELU_CASES])
def test_bias_relu_kernels_stride_over_rows(rng, dtype, M, D, cap, monkeypatch):
    """Forward and backward against the oracle for any M and D, grid y capped or not."""
    if cap is not None:
        monkeypatch.setattr(_dispatch, "GRID_YZ_CAP", cap)
    u, b, dy = bias_relu_inputs(rng, M, D, dtype)
    y, du, db, scratch = run_bias_relu_cuda(u, b, dy)
    check_bias_relu(y, du, db, u, b, dy)
    P = bias_relu.row_blocks(M)
    assert P == min(-(-M // 128), cap or 65535)
    assert [s.shape for s in scratch] == ([(P, D)] if P > 1 else [])
    if P > 1:  # db is the partials added in the second launch's fixed order, bit for bit
        np.testing.assert_array_equal(db, ordered_column_sums(scratch[0]))


def ordered_column_sums(part):
    """The second backward launch's order: thread row ty adds the partials ty, ty + 8, ... in
    turn, then the 8 thread rows are added in order (no atomics: the same bits every run)."""
    acc = np.zeros((8, part.shape[1]), part.dtype)
    for ty in range(8):
        for p in range(ty, part.shape[0], 8):
            acc[ty] += part[p]
    total = acc[0].copy()
    for k in range(1, 8):
        total += acc[k]
    return total


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("P", [2, 5])
def test_bias_relu_backward_any_number_of_row_blocks(rng, dtype, P):
    """The launcher takes P from the scratch buffer: more row blocks than rows (idle blocks write
    zero partials) and fewer (strides) both give the oracle's du and db."""
    u, b, dy = bias_relu_inputs(rng, 3, 40, dtype)
    y = bias_relu.bias_relu_forward_ref(u, b)
    part = nans_like(dy, (P, 40))
    du, db = bias_relu._bias_relu_backward_cuda(dy, y, nans_like(dy), nans_like(b), part)
    check_bias_relu(y, du, db, u, b, dy)
    assert not np.isnan(part).any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [IM2COL_CASES[i] for i in (0, 1, 2, 3)],
                         ids=["s1p0C1", "s2p1C3", "s21p21C8", "s12p2C3"])  # (2: unequal paddings, strides)
def test_im2col_kernels(rng, case, dtype):
    # several 256-thread blocks, the last partly idle (the simulator takes C-contiguous host
    # arrays only; strided views are covered by the CPU twin's tests, same layout-'A' code)
    x, col, geometry = im2col_inputs(rng, case, dtype)
    got = im2col._im2col_cuda(x, nans_like(col), *geometry[2:])
    check_im2col(got, x, geometry)
    out = im2col._col2im_cuda(col, nans_like(x), *geometry[2:])
    check_col2im(out, col, x.shape[1:3], geometry)


def check_winograd_cuda(rng, dtype, n, h, w, b, a):
    """The four CUDA data transforms equal the plain-xp references bit for bit (they only add and
    subtract, in the same order)."""
    x = rng.standard_normal((n, h, w, b)).astype(dtype)
    V = winograd.wino_input_ref(x)
    got = winograd._input_cuda(x, nans_like(V, (3, 3, n, h // 4, w // 4, 2, 2, b)))
    np.testing.assert_array_equal(got.reshape(V.shape), V)
    dV = rng.standard_normal(V.shape).astype(dtype)
    got = winograd._input_adj_cuda(dV.reshape(3, 3, n, h // 4, w // 4, 2, 2, b), nans_like(x))
    np.testing.assert_array_equal(got, winograd.wino_input_adj_ref(dV, n, h, w))
    M = rng.standard_normal((9, n * (h // 4) * (w // 4), a)).astype(dtype)
    y = winograd.wino_output_ref(M, n, h // 2, w // 2)
    got = winograd._output_cuda(M.reshape(3, 3, n, h // 4, w // 4, a), nans_like(y), False)
    np.testing.assert_array_equal(got, y)
    dM6 = nans_like(M, (3, 3, n, h // 4, w // 4, a))
    winograd._output_cuda(dM6, y, True)
    np.testing.assert_array_equal(dM6.reshape(M.shape), winograd.wino_output_adj_ref(y))


@pytest.mark.parametrize("dtype", DTYPES)
def test_winograd_kernels(rng, dtype):
    """(2, 8, 4, 3): border and inner windows, 2 blocks of 256."""
    check_winograd_cuda(rng, dtype, 2, 8, 4, 3, 5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cap", [1, 2])
def test_winograd_kernels_stride_over_y_and_z(rng, dtype, cap, monkeypatch):
    """GRID_YZ_CAP lowered to 1 or 2 blocks: every kernel strides along grid y (4 TH TW = 40, W = 20,
    OW = 10, TH TW = 10 threads: 2 to 5 blocks of 8) and z (9 N = 18, N H = 16, N OH = 8 blocks of
    1), as at a batch beyond 65,535 blocks on a GPU; 33 channels: 2 blocks along x."""
    monkeypatch.setattr(_dispatch, "GRID_YZ_CAP", cap)
    blocks, _ = winograd._grid(33, 40, 18)
    assert blocks == (2, cap, cap)
    check_winograd_cuda(rng, dtype, 2, 8, 20, 33, 3)
