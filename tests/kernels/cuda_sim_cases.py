"""The CUDA kernels against the plain-xp reference under the Numba CUDA simulator.

Not collected by a plain ``pytest`` run (the name does not start with ``test_``): the simulator
must be switched on before numba.cuda is first imported, so test_cuda_kernels.py runs this
file in a fresh process,

    NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/kernels/cuda_sim_cases.py

The launchers get NumPy host arrays, which the simulator accepts as device arrays.  Outputs
start as NaN, so an element a kernel forgets to write fails the test.  The simulator runs every
thread as a Python thread: the sizes are small, but chosen to cover several blocks along both
grid axes (2-D block 32 x 8) and rows longer than the 128 threads of the KL reduction.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    pytest.skip("needs NUMBA_ENABLE_CUDASIM=1 set before numba.cuda is imported", allow_module_level=True)

from jmvae_cupy.kernels import adam, bernoulli, bias_relu, gauss_kl, im2col, reparam, winograd

from .kernel_checks import (
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


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (9, 140)])  # (9, 140): 5 x 2 blocks forward, 2 blocks of 128 backward
def test_bias_relu_kernels(rng, dtype, shape):
    u, b, dy = bias_relu_inputs(rng, *shape, dtype)
    y = bias_relu._bias_relu_forward_cuda(u.copy(), b)
    du, db = bias_relu._bias_relu_backward_cuda(dy, y, nans_like(dy), nans_like(b))
    check_bias_relu(y, du, db, u, b, dy)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [IM2COL_CASES[i] for i in (0, 1, 3)], ids=["s1p0C1", "s2p1C3", "s12p2C3"])
def test_im2col_kernels(rng, case, dtype):
    # several 256-thread blocks, the last partly idle (the simulator takes C-contiguous host
    # arrays only; strided views are covered by the CPU twin's tests, same layout-'A' code)
    x, col, geometry = im2col_inputs(rng, case, dtype)
    got = im2col._im2col_cuda(x, nans_like(col), *geometry[2:])
    check_im2col(got, x, geometry)
    out = im2col._col2im_cuda(col, nans_like(x), *geometry[2:])
    check_col2im(out, col, x.shape[1:3], geometry)


@pytest.mark.parametrize("dtype", DTYPES)
def test_winograd_kernels(rng, dtype):
    """The four data transforms equal the plain-xp references bit for bit (they only add and
    subtract, in the same order); (2, 8, 4, 3): border and inner windows, 2 blocks of 256."""
    n, h, w, b, a = 2, 8, 4, 3, 5
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
