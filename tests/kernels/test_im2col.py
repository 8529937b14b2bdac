"""im2col / col2im kernels (kernels/im2col.py): the parallel Numba CPU twins against the plain-xp
references of layers/im2col.py (equality: im2col is a copy, col2im adds in the reference's
order), argument checks, the dispatch of layers/im2col.py.  The CUDA kernels run against the
same references under the simulator (test_cuda_kernels.py)."""

from __future__ import annotations

import numpy as np
import pytest

from jmvae_cupy.kernels import KernelArgumentError
from jmvae_cupy.kernels import im2col as kernels
from jmvae_cupy.layers import im2col as layer
from jmvae_cupy.selftest.bounds import DTYPES, IM2COL_CASES, check_col2im, check_im2col, im2col_inputs


@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", IM2COL_CASES)
def test_cpu_twins_match_reference(rng, case, dtype, layout):
    x, col, geometry = im2col_inputs(rng, case, dtype, layout)
    check_im2col(kernels.im2col(x, *geometry), x, geometry)
    _, _, sy, sx, ph, pw = geometry
    check_col2im(kernels.col2im(col, *x.shape[1:3], sy, sx, ph, pw), col, x.shape[1:3], geometry)


@pytest.mark.parametrize("dtype", DTYPES)
def test_col2im_strided_col_and_out(rng, dtype):
    # the conv layers hand col2im a transposed view (C < 8) and want a channels-first canvas back
    x, col, (kh, kw, sy, sx, ph, pw) = im2col_inputs(rng, IM2COL_CASES[1], dtype)
    col_view = np.ascontiguousarray(col.transpose(3, 4, 5, 0, 1, 2)).transpose(3, 4, 5, 0, 1, 2)
    N, H, W, C = x.shape
    out = np.full((N, C, H, W), np.nan, dtype).transpose(0, 2, 3, 1)
    got = kernels.col2im(col_view, H, W, sy, sx, ph, pw, out=out)
    assert got is out
    check_col2im(got, col, (H, W), (kh, kw, sy, sx, ph, pw))


def test_col2im_rows_beyond_the_last_window(rng):
    # conv backward with (H + 2p - K) % s != 0: the last image rows see no window and get 0
    x, col, geometry = im2col_inputs(rng, (2, 8, 8, 3, 3, 3, (2, 2), (0, 0)), np.float64)
    assert col.shape[1] == 3  # windows cover rows 0..6 only
    _, _, sy, sx, ph, pw = geometry
    got = kernels.col2im(col, 8, 8, sy, sx, ph, pw)
    check_col2im(got, col, (8, 8), geometry)
    assert not got[:, 7].any()


def test_im2col_col2im_are_adjoint(rng):
    x, col, geometry = im2col_inputs(rng, IM2COL_CASES[4], np.float64)
    _, _, sy, sx, ph, pw = geometry
    lhs = np.vdot(kernels.im2col(x, *geometry), col)
    rhs = np.vdot(x, kernels.col2im(col, *x.shape[1:3], sy, sx, ph, pw))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12)


@pytest.mark.parametrize("C", [3, 64])
def test_layer_dispatch_large_arrays_go_to_the_kernels(rng, C, monkeypatch):
    # above PARALLEL_MIN the layer functions use the kernels: same numbers, same memory layout
    x = rng.standard_normal((4, 16, 16, C)).astype(np.float32)
    geometry = (4, 4, 2, 2, 1, 1)
    monkeypatch.setattr(layer, "PARALLEL_MIN", 1 << 62)
    col_ref = layer.im2col(x, *geometry)
    x_ref = layer.col2im(col_ref, 16, 16, 2, 2, 1, 1)
    calls = []
    monkeypatch.setattr(layer, "PARALLEL_MIN", 0)

    def spy(name):
        real = getattr(kernels, name)
        return lambda *a, **k: calls.append(name) or real(*a, **k)

    for name in ("im2col", "col2im"):
        monkeypatch.setattr(kernels, name, spy(name))
    col = layer.im2col(x, *geometry)
    x2 = layer.col2im(col, 16, 16, 2, 2, 1, 1)
    assert calls == ["im2col", "col2im"]
    np.testing.assert_array_equal(col, col_ref)
    np.testing.assert_array_equal(x2, x_ref)
    assert x2.strides == x_ref.strides  # channels-first canvas for C < 8, channels-last otherwise


def test_small_arrays_stay_on_the_xp_path(rng, monkeypatch):
    monkeypatch.setattr(kernels, "im2col", lambda *a, **k: pytest.fail("kernel called"))
    x = rng.standard_normal((1, 4, 4, 2))
    layer.im2col(x, 2, 2, 1, 1, 0, 0)


def test_bad_arguments():
    x = np.zeros((1, 4, 4, 2), np.float32)
    with pytest.raises(KernelArgumentError, match="4-D"):
        kernels.im2col(x[0], 2, 2, 1, 1, 0, 0)
    with pytest.raises(KernelArgumentError, match="dtype"):
        kernels.im2col(x.astype(np.int32), 2, 2, 1, 1, 0, 0)
    with pytest.raises(KernelArgumentError, match="does not fit"):
        kernels.im2col(x, 5, 5, 1, 1, 0, 0)
    with pytest.raises(KernelArgumentError, match="geometry"):
        kernels.im2col(x, 2, 2, 0, 1, 0, 0)
    col = np.zeros((1, 3, 3, 2, 2, 2), np.float32)
    with pytest.raises(KernelArgumentError, match="out is"):
        kernels.col2im(col, 4, 4, 1, 1, 0, 0, out=np.zeros((1, 4, 4, 3), np.float32))
