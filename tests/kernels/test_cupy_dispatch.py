"""The public kernels on CuPy arrays: the real CUDA path (zero-copy Numba views, CuPy's current
stream).  Runs only where a CUDA device is usable, and never under the simulator."""

from __future__ import annotations

import os

import numpy as np
import pytest

from jmvae_cupy.backend import asnumpy, gpu_available, select_device
from jmvae_cupy.selftest.bounds import (
    DTYPES,
    check_kl_backward,
    check_kl_forward,
    check_reparam_backward,
    check_reparam_forward,
    gaussians,
    kl_args,
    reparam_inputs,
)

pytestmark = pytest.mark.skipif(
    not gpu_available() or os.environ.get("NUMBA_ENABLE_CUDASIM") == "1",
    reason="needs a usable CUDA device and the real numba.cuda",
)


def on_gpu(*arrays):
    xp = select_device("gpu")
    return [None if a is None else xp.asarray(a) for a in arrays]


@pytest.mark.parametrize("dtype", DTYPES)
def test_reparam_on_cupy_arrays(rng, dtype):
    from jmvae_cupy.kernels.reparam import reparam_backward, reparam_forward

    mu, var, noise, dz = reparam_inputs(rng, 100, 64, dtype)
    z = reparam_forward(*on_gpu(mu, var, noise))
    assert not isinstance(z, np.ndarray) and z.dtype == dtype
    check_reparam_forward(asnumpy(z), mu, var, noise)
    dmu, dvar = reparam_backward(*on_gpu(dz, var, noise))
    check_reparam_backward(asnumpy(dmu), asnumpy(dvar), dz, var, noise)


@pytest.mark.parametrize("prior", [False, True], ids=["general", "prior"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gauss_kl_on_cupy_arrays(rng, dtype, prior):
    from jmvae_cupy.kernels.gauss_kl import gauss_kl_backward, gauss_kl_forward

    args = kl_args(gaussians(rng, 1000, 128, dtype), prior)
    dkl = rng.standard_normal(1000).astype(dtype)
    kl = gauss_kl_forward(*on_gpu(*args))
    assert not isinstance(kl, np.ndarray) and kl.dtype == dtype
    check_kl_forward(asnumpy(kl), args)
    grads = gauss_kl_backward(*on_gpu(dkl, *args))
    check_kl_backward([None if g is None else asnumpy(g) for g in grads], dkl, args)


def test_kernels_run_on_cupys_current_stream(rng):
    """A chain of CuPy and Numba work on a non-blocking stream, read after synchronising only
    that stream: correct only if every kernel was queued on it."""
    from jmvae_cupy.kernels.gauss_kl import gauss_kl_forward
    from jmvae_cupy.kernels.reparam import reparam_forward

    cp = select_device("gpu")
    mu, var, noise, _ = reparam_inputs(rng, 512, 128, np.float32, lo=0.5, hi=2.0)
    with cp.cuda.Stream(non_blocking=True) as stream:
        mu_d, var_d, noise_d = on_gpu(mu, var, noise)
        z = reparam_forward(mu_d * 2, var_d, noise_d)  # consumes a CuPy result on the stream
        kl = gauss_kl_forward(z, var_d)
        total = kl.sum()
        stream.synchronize()
    z_host = mu * 2 + np.sqrt(var) * noise
    expected = 0.5 * np.sum(var - 1 - np.log(var) + z_host.astype(np.float64) ** 2, axis=1)
    np.testing.assert_allclose(float(total), expected.sum(), rtol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_winograd_conv_on_cupy_arrays(rng, dtype):
    """conv2d with method="winograd" on CuPy (the plain-xp transforms, batched cuBLAS GEMMs) gives
    the NumPy path's numbers, forward and both gradients."""
    from jmvae_cupy.layers.conv import conv2d_backward, conv2d_forward

    x = rng.standard_normal((2, 16, 16, 16)).astype(dtype)
    W = (rng.standard_normal((24, 16, 4, 4)) * 0.1).astype(dtype)
    dy = rng.standard_normal((2, 24, 8, 8)).astype(dtype)
    y, cache = conv2d_forward(x, W, None, 2, 1, method="winograd")
    dx, g = conv2d_backward(dy, cache)
    xg, Wg, dyg = on_gpu(x, W, dy)
    y_g, cache_g = conv2d_forward(xg, Wg, None, 2, 1, method="winograd")
    dx_g, g_g = conv2d_backward(dyg, cache_g)
    tol = 1e-4 if dtype == np.float32 else 1e-12
    for a, b in ((y_g, y), (dx_g, dx), (g_g["W"], g["W"])):
        np.testing.assert_allclose(asnumpy(a), b, rtol=tol, atol=tol * float(np.abs(b).max()))


def test_all_finite_takes_host_scalars_with_device_arrays(rng):
    """The trainer's guard passes a host loss (micro-batches: StepMean's float64) with device
    gradients in one call: each side is checked where it lives, one host read for the device."""
    from jmvae_cupy.kernels.finite import all_finite

    (g,) = on_gpu(rng.standard_normal((7, 37)).astype(np.float32))
    assert all_finite([np.float64(1.5), g])
    assert not all_finite([np.float64(np.nan), g])
    g[3, 4] = np.inf
    assert not all_finite([np.float64(1.5), g])


@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_relu_on_cupy_arrays_beyond_65535_row_blocks(rng, dtype):
    """M = 1024 * 512 rows (the CelebA 64x64 -> 32x32 layers at batch 512: 65,536 blocks of 8 rows,
    one more than grid y allows): forward and backward launch and match the oracle; the column
    sums are the same bits on a second run (no atomics)."""
    from jmvae_cupy.kernels.bias_relu import bias_relu_backward, bias_relu_forward
    from jmvae_cupy.selftest.bounds import bias_relu_inputs, check_bias_relu

    u, b, dy = bias_relu_inputs(rng, 1024 * 512, 64, dtype)
    ug, bg, dyg = on_gpu(u, b, dy)
    y = bias_relu_forward(ug, bg)
    du, db = bias_relu_backward(dyg, y)
    _, db2 = bias_relu_backward(dyg, y)
    check_bias_relu(asnumpy(y), asnumpy(du), asnumpy(db), u, b, dy)
    np.testing.assert_array_equal(asnumpy(db2), asnumpy(db))


def test_winograd_transforms_on_cupy_arrays_beyond_65535_z_blocks(rng):
    """N = 7,300 images of 20x20: every data transform's z extent (9 N, N H, N OH) passes 65,535
    blocks; the CUDA kernels stride over it and equal the plain-xp references bit for bit."""
    from jmvae_cupy.kernels import winograd as wg

    n, h, w, b, a = 7300, 20, 20, 2, 3
    assert min(9 * n, n * h, n * h // 2) > 65535
    x = rng.standard_normal((n, h, w, b)).astype(np.float32)
    M = rng.standard_normal((9, n * (h // 4) * (w // 4), a)).astype(np.float32)
    (xg, Mg) = on_gpu(x, M)
    V = wg.wino_input(xg)
    np.testing.assert_array_equal(asnumpy(V), asnumpy(wg.wino_input_ref(xg)))
    np.testing.assert_array_equal(asnumpy(wg.wino_input_adj(V, n, h, w)), asnumpy(wg.wino_input_adj_ref(V, n, h, w)))
    y = wg.wino_output(Mg, n, h // 2, w // 2)
    np.testing.assert_array_equal(asnumpy(y), asnumpy(wg.wino_output_ref(Mg, n, h // 2, w // 2)))
    np.testing.assert_array_equal(asnumpy(wg.wino_output_adj(y)), asnumpy(wg.wino_output_adj_ref(y)))


def test_package_launches_print_no_low_occupancy_warning(rng):
    """A small launch (1 block) through the public API warns nothing; the user's own setting is
    untouched afterwards."""
    import warnings

    import numba

    from jmvae_cupy.kernels.bias_relu import bias_relu_backward, bias_relu_forward

    before = numba.config.CUDA_LOW_OCCUPANCY_WARNINGS
    u, b = on_gpu(rng.standard_normal((4, 8)).astype(np.float32), np.zeros(8, np.float32))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bias_relu_backward(u, bias_relu_forward(u, b))
    assert not [w for w in caught if "occupancy" in str(w.message)], [str(w.message) for w in caught]
    assert numba.config.CUDA_LOW_OCCUPANCY_WARNINGS == before
