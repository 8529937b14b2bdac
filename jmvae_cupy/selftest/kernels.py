"""Every fused kernel against its twin: the checks the selftest runs (their inputs and error bounds:
selftest/bounds.py, shared with the kernel tests).

``python -m jmvae_cupy.selftest`` runs :data:`KERNEL_CHECKS`, each kernel in float32 and float64 on
the selftest's device:

* the device side is the public function on arrays of the device's namespace (CuPy arrays: the
  Numba CUDA kernel on CuPy's stream; NumPy arrays: the Numba CPU twin);
* its twin is, on a GPU, the same public function on the same inputs as NumPy arrays (the CPU
  twin), and on the CPU the plain-xp reference (``*_ref``) in the same dtype;

and both sides must meet the kernel's bound (selftest/bounds.py; or equal the reference bit for bit, where the
kernel only copies, adds in the reference's order or compares).

Grid-stride loops: the bias + ReLU and Winograd CUDA kernels put at most ``_dispatch.GRID_YZ_CAP``
blocks along grid y and z and loop over the rest.  Their checks run shapes with that cap lowered
to 1-3 blocks (:func:`grid_cap`), so that small arrays take several strides as arrays beyond
65,535 blocks do; the full (not ``--quick``) selftest also runs one shape past 65,535 blocks on a
GPU.  On the CPU the cap changes nothing (the twins have no grid): the same shapes check the twins.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import numpy as np

from jmvae_cupy.backend import asnumpy, get_array_module
from jmvae_cupy.kernels import _dispatch
from jmvae_cupy.kernels import winograd as wg
from jmvae_cupy.kernels.adam import adam_update, adam_update_ref
from jmvae_cupy.kernels.batchnorm import ROW_BLOCK
from jmvae_cupy.kernels.bernoulli import bernoulli_loglik_forward, bernoulli_loglik_forward_ref
from jmvae_cupy.kernels.bias_relu import (
    bias_relu_backward,
    bias_relu_backward_ref,
    bias_relu_forward,
    bias_relu_forward_ref,
)
from jmvae_cupy.kernels.finite import all_finite, all_finite_ref
from jmvae_cupy.kernels.gauss_kl import gauss_kl_backward, gauss_kl_backward_ref, gauss_kl_forward, gauss_kl_forward_ref
from jmvae_cupy.kernels.im2col import col2im, im2col
from jmvae_cupy.kernels.reparam import reparam_backward, reparam_backward_ref, reparam_forward, reparam_forward_ref
from jmvae_cupy.layers.batchnorm import bn_train_backward_xp, bn_train_forward_xp, train_backward, train_forward
from jmvae_cupy.layers.im2col import col2im_xp as col2im_ref
from jmvae_cupy.layers.im2col import im2col_xp as im2col_ref

from .bounds import (
    IM2COL_CASES,
    CheckFailed,
    adam_inputs,
    assert_close,
    assert_equal,
    assert_within,
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
    eps,
    f64,
    gaussians,
    im2col_inputs,
    kl_args,
    reparam_inputs,
    require,
)

# --------------------------------------------------------------------------------------------
# The selftest's comparison of a kernel on the device with its twin
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def grid_cap(blocks):
    """Within the block the strided CUDA grids put at most ``blocks`` blocks along y and z (None:
    the hardware limit, unchanged), so that the kernels' grid-stride loops take several strides."""
    saved = _dispatch.GRID_YZ_CAP
    if blocks is not None:
        _dispatch.GRID_YZ_CAP = blocks
    try:
        yield
    finally:
        _dispatch.GRID_YZ_CAP = saved


def sides(xp) -> tuple:
    """The names of the two sides on device ``xp``: (device, twin)."""
    return ("CUDA kernel", "CPU twin") if xp is not np else ("CPU twin", "plain-xp reference")


def _after(fn, sizes, *arrays):
    """fn(*arrays, *sizes): a kernel called with its array arguments first, its sizes after."""
    return fn(*arrays, *sizes)


def _tuple(out):
    return tuple(out) if isinstance(out, tuple) else (out,)


def device_and_twin(xp, api, ref, inputs):
    """The outputs of ``api`` on copies of the host ``inputs`` in ``xp``'s namespace, and of its twin
    on host copies: on a GPU ``api`` itself on NumPy arrays (the Numba CPU twin), on the CPU the
    plain-xp reference ``ref``.  Each a tuple of host arrays (None stays None); the inputs are not
    written (copies: some kernels work in place)."""
    dev = _tuple(api(*[None if a is None else xp.array(a) for a in inputs]))
    twin = _tuple((api if xp is not np else ref)(*[None if a is None else a.copy() for a in inputs]))
    host = lambda outs: tuple(None if a is None else asnumpy(a) for a in outs)  # noqa: E731
    return host(dev), host(twin)


def verify_both(xp, outputs: tuple, where: str, verify: Callable, *inputs) -> None:
    """``verify(*outputs_of_one_side, *inputs)`` for the device side and the twin; CheckFailed names
    the side and ``where`` (the shape or case)."""
    for side, outs in zip(sides(xp), outputs):
        try:
            verify(*outs, *inputs)
        except CheckFailed as e:
            raise CheckFailed(f"{side}, {where}: {e}") from None


class KernelCheck(NamedTuple):
    """One kernel's check: ``run(xp, dtype, rng, quick)`` raises CheckFailed or returns what it covered."""

    name: str
    what: str
    run: Callable


def _reparam(xp, dtype, rng, quick):
    shapes = [(1, 1), (37, 300)] + ([] if quick else [(1000, 512)])
    for n, d in shapes:
        mu, var, noise, dz = reparam_inputs(rng, n, d, dtype)
        out = device_and_twin(xp, reparam_forward, reparam_forward_ref, (mu, var, noise))
        verify_both(xp, out, f"forward {n}x{d}", check_reparam_forward, mu, var, noise)
        out = device_and_twin(xp, reparam_backward, reparam_backward_ref, (dz, var, noise))
        verify_both(xp, out, f"backward {n}x{d}", check_reparam_backward, dz, var, noise)
    return f"{len(shapes)} shapes, forward and backward"


def _check_kl_grads(dmu1, dvar1, dmu2, dvar2, dkl, args):
    check_kl_backward((dmu1, dvar1, dmu2, dvar2), dkl, args)


def _gauss_kl(xp, dtype, rng, quick):
    shapes = [(2, 5), (9, 300)] + ([] if quick else [(1000, 128)])  # D < 128 threads, D > 2 x 128 threads
    for n, d in shapes:
        g = gaussians(rng, n, d, dtype)
        dkl = rng.standard_normal(n).astype(dtype)
        for prior in (False, True):
            args = kl_args(g, prior)
            where = f"{'prior' if prior else 'general'} {n}x{d}"
            out = device_and_twin(xp, gauss_kl_forward, gauss_kl_forward_ref, args)
            verify_both(xp, out, f"forward {where}", check_kl_forward, args)
            out = device_and_twin(xp, gauss_kl_backward, gauss_kl_backward_ref, (dkl, *args))
            verify_both(xp, out, f"backward {where}", _check_kl_grads, dkl, args)
    return f"{len(shapes)} shapes x (N(0, I) prior, general), forward and backward"


def _bernoulli(xp, dtype, rng, quick):
    shapes = [(2, 5), (9, 300)] + ([] if quick else [(100, 784)])
    for n, d in shapes:
        x, logits = bernoulli_inputs(rng, n, d, dtype)
        out = device_and_twin(xp, bernoulli_loglik_forward, bernoulli_loglik_forward_ref, (x, logits))
        verify_both(xp, out, f"{n}x{d}", check_bernoulli, x, logits)
    return f"{len(shapes)} shapes"


# (M, D, grid cap): one row, one column; M not a multiple of the 8 rows of a block nor of the 128 rows
# of a row block; with the cap lowered to 3 blocks: several strides over the rows (forward) and over
# the row blocks (backward).
BIAS_RELU_SHAPES = [(1, 1, None), (260, 33, None), (300, 1, 3), (129, 33, 3)]
BIAS_RELU_FULL = [(1000, 70, 3)]


def _bias_relu(xp, dtype, rng, quick, cases=None):
    cases = cases or BIAS_RELU_SHAPES + ([] if quick else BIAS_RELU_FULL)
    for m, d, cap in cases:
        u, b, dy = bias_relu_inputs(rng, m, d, dtype)
        y = bias_relu_forward_ref(u, b)
        with grid_cap(cap):
            fwd = device_and_twin(xp, bias_relu_forward, bias_relu_forward_ref, (u, b))
            bwd = device_and_twin(xp, bias_relu_backward, bias_relu_backward_ref, (dy, y))
        outs = tuple((*f, *g) for f, g in zip(fwd, bwd))
        where = f"{m}x{d}" + (f", grid capped at {cap} blocks" if cap else "")
        verify_both(xp, outs, where, check_bias_relu, u, b, dy)
    return f"{len(cases)} shapes ({sum(c is not None for *_, c in cases)} with the grid capped), forward and backward"


def _im2col_in_layout(x, layout, geometry):
    """im2col of x, first put in ``layout`` where it lives (nchw: channels-first memory seen as NHWC,
    a strided view, as the conv layers pass it)."""
    if layout == "nchw":
        x = get_array_module(x).ascontiguousarray(x.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
    return im2col(x, *geometry)


def _im2col(xp, dtype, rng, quick):
    cases = IM2COL_CASES[:4] if quick else IM2COL_CASES
    for i, case in enumerate(cases):
        for layout in ("nhwc", "nchw"):
            x, col, geometry = im2col_inputs(rng, case, dtype, layout)
            hw = x.shape[1:3]
            out = device_and_twin(xp, partial(_im2col_in_layout, layout=layout, geometry=geometry),
                                  partial(_after, im2col_ref, geometry), (x,))
            verify_both(xp, out, f"im2col case {i} {layout}", check_im2col, x, geometry)
            sizes = (*hw, *geometry[2:])  # (h, w, sy, sx, ph, pw)
            out = device_and_twin(xp, partial(_after, col2im, sizes), partial(_after, col2im_ref, sizes), (col,))
            verify_both(xp, out, f"col2im case {i}", check_col2im, col, hw, geometry)
    return f"{len(cases)} geometries x (NHWC, NCHW views)"


def _winograd_case(xp, rng, dtype, shape, a, where):
    """The six transforms on one (N, H, W, B) input with A output channels: equal to the plain-xp
    references bit for bit (they only add and subtract, in the reference's order)."""
    n, h, w, b = shape
    x = rng.standard_normal(shape).astype(dtype)
    dV = rng.standard_normal((9, n * (h // 4) * (w // 4), 4 * b)).astype(dtype)
    M = rng.standard_normal((9, n * (h // 4) * (w // 4), a)).astype(dtype)
    dy = rng.standard_normal((n, h // 2, w // 2, a)).astype(dtype)
    W = rng.standard_normal((a, b, 4, 4)).astype(dtype)
    dUt = rng.standard_normal((9, a, 4 * b)).astype(dtype)
    pairs = [("input", wg.wino_input, wg.wino_input_ref, (x,), ()),
             ("input_adj", wg.wino_input_adj, wg.wino_input_adj_ref, (dV,), (n, h, w)),
             ("output", wg.wino_output, wg.wino_output_ref, (M,), (n, h // 2, w // 2)),
             ("output_adj", wg.wino_output_adj, wg.wino_output_adj_ref, (dy,), ()),
             ("weight", wg.wino_weight, wg.wino_weight_ref, (W,), ()),
             ("weight_adj", wg.wino_weight_adj, wg.wino_weight_adj_ref, (dUt,), (W.shape,))]
    for name, api, ref, arrays, sizes in pairs:
        expected = ref(*arrays, *sizes)
        out = device_and_twin(xp, partial(_after, api, sizes), partial(_after, ref, sizes), arrays)
        verify_both(xp, out, f"{name} {where}", assert_equal, expected, name)


# ((N, H, W, B), A, grid cap): one tile; non-square with several tiles; 33 channels (2 blocks along
# x) with the cap lowered to 1 and 2 blocks: every kernel strides along grid y and z.
WINOGRAD_SHAPES = [((1, 4, 4, 1), 5, None), ((2, 8, 12, 3), 5, None), ((2, 8, 20, 33), 3, 1), ((2, 8, 20, 33), 3, 2)]


def _winograd(xp, dtype, rng, quick, cases=None):
    cases = cases or WINOGRAD_SHAPES
    for shape, a, cap in cases:
        with grid_cap(cap):
            _winograd_case(xp, rng, dtype, shape, a, f"{shape}" + (f", grid capped at {cap}" if cap else ""))
    return f"{len(cases)} shapes x 6 transforms, bit for bit"


# rows: one partial block of ROW_BLOCK rows, exactly one block, several blocks with a ragged end.
# float32: the CPU kernels sum in float64, the reference in float32 (pairwise): both within 2e-5 of the
# float64 result relative to the output's largest magnitude; float64: 1e-12.
BATCHNORM_SHAPES = [(1, 3), (7, 37), (ROW_BLOCK, 5), (3 * ROW_BLOCK + 17, 64)]
BATCHNORM_RTOL = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-12}


def _close_to_max(rtol, names, expected):
    """verify(*outputs): each output within rtol * max|expected| of ``expected`` (float64)."""
    def verify(*got):
        for name, a, b in zip(names, got, expected):
            scale = max(float(np.max(np.abs(b))), 1e-30)
            assert_within(a, b, np.full(b.shape, scale), rtol, name)
    return verify


def _xp_backward(dy, x, y, mu, inv_std, gamma, relu):
    """The plain-xp backward with the layer's convention (y None without the ReLU)."""
    return bn_train_backward_xp(dy, x, x if y is None else y, mu, inv_std, gamma, relu)


def _batchnorm(xp, dtype, rng, quick):
    shapes = BATCHNORM_SHAPES[1::2] if quick else BATCHNORM_SHAPES
    rtol = BATCHNORM_RTOL[np.dtype(dtype)]
    for m, c in shapes:
        x = (rng.standard_normal((m, c)) * 3.0 + 5.0).astype(dtype)  # |mu| > std: the two-pass case
        gamma, beta = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
        dy = rng.standard_normal((m, c)).astype(dtype)
        for relu in (False, True):
            where = f"{m}x{c}{' relu' if relu else ''}"
            expected = bn_train_forward_xp(*f64(x, gamma, beta), 1e-4, relu)
            # the device side: the layer's choice (the fused CPU passes on NumPy, plain xp on CuPy)
            out = device_and_twin(xp, partial(_after, train_forward, (1e-4, relu)),
                                  partial(_after, bn_train_forward_xp, (1e-4, relu)), (x, gamma, beta))
            verify_both(xp, out, f"forward {where}", _close_to_max(rtol, ("y", "mu", "var", "inv_std"), expected))
            y, mu, _, inv_std = bn_train_forward_xp(x, gamma, beta, 1e-4, relu)
            y = y if relu else None
            expected = _xp_backward(*f64(dy, x), y if y is None else y.astype(np.float64),
                                    *f64(mu, inv_std, gamma), relu)
            out = device_and_twin(xp, partial(_after, train_backward, (relu,)),
                                  partial(_after, _xp_backward, (relu,)), (dy, x, y, mu, inv_std, gamma))
            verify_both(xp, out, f"backward {where}", _close_to_max(rtol, ("dx", "dgamma", "dbeta"), expected))
    return f"{len(shapes)} shapes x (with, without ReLU), forward and backward, within {rtol:g} of float64"


# 0-d, one element, two blocks of 256 threads the second partly idle, 2-D; full: many blocks.
ADAM_SHAPES = [(), (1,), (513,), (7, 37)]
ADAM_HYPER = (0.9, 0.999, 1e-3 * 0.0447 / 0.1, 1e-8 * 0.0447)  # beta1, beta2, step_size, eps_hat at t = 1


def _adam(xp, dtype, rng, quick):
    """3 updates in place on both sides; p, m, v within 4 eps relative of the plain-xp reference in the
    dtype (the CPU twin gives its bits; a CUDA compiler may contract a multiply-add into an FMA), 0 exactly
    where the reference flushed a moment to 0."""
    shapes = ADAM_SHAPES + ([] if quick else [(300_001,)])
    for shape in shapes:
        p, m, v, grads = adam_inputs(rng, shape, dtype, 3)
        dev = [xp.array(a) for a in (p, m, v)]
        twin = [a.copy() for a in (p, m, v)]
        ref = [a.copy() for a in (p, m, v)]
        for g in grads:
            adam_update(*dev[:1], xp.array(g), *dev[1:], *ADAM_HYPER)
            (adam_update if xp is not np else adam_update_ref)(*twin[:1], g.copy(), *twin[1:], *ADAM_HYPER)
            adam_update_ref(*ref[:1], g, *ref[1:], *ADAM_HYPER)
        require(not np.array_equal(ref[0], p), f"{shape}: the reference did not move p")
        for side, state in zip(sides(xp), (dev, twin)):
            for name, a, b in zip("pmv", state, ref):
                a = asnumpy(a)
                require(a.dtype == np.dtype(dtype), f"{side}, {shape}: {name} has dtype {a.dtype}")
                try:
                    assert_close(a, b, 4 * eps(dtype), name)
                except CheckFailed as e:
                    raise CheckFailed(f"{side}, {shape}: {e}") from None
    return f"{len(shapes)} shapes, 3 updates each, flush edges included"


FINITE_SHAPES = [(), (1,), (7, 37), (513,)]


def _finite(xp, dtype, rng, quick):
    """all_finite on the device's arrays (with a host scalar beside them, as the trainer passes a host
    loss) against the plain-xp oracle: True for finite arrays, False for one NaN / inf / -inf at the
    first, middle or last element of any array."""
    arrays = [np.asarray(rng.standard_normal(s) * 1e3, dtype) for s in FINITE_SHAPES]
    host_loss = np.dtype(dtype).type(1.5)
    cases = [(None, None, None)] + [(bad, k, pos) for bad in (np.nan, np.inf, -np.inf) for k, a in enumerate(arrays)
                                    for pos in sorted({0, a.size // 2, a.size - 1})[:1 if quick else 3]]
    for bad, k, pos in cases:
        broken = [a.copy() for a in arrays]
        if bad is not None:
            broken[k].reshape(-1)[pos] = bad
        expected = all_finite_ref(broken)
        require(expected == (bad is None), f"the oracle says {expected} for {bad} at array {k} position {pos}")
        got = all_finite([host_loss, *[xp.array(a) for a in broken]])
        twin = (all_finite if xp is not np else all_finite_ref)([host_loss, *broken])
        for side, answer in zip(sides(xp), (got, twin)):
            where = "finite arrays" if bad is None else f"{bad} in array {k} {broken[k].shape} at {pos}"
            require(answer == expected, f"{side}: {answer} for {where}, expected {expected}")
    return f"{len(cases)} cases: finite, and NaN / inf / -inf in each of {len(arrays)} arrays"


# Past the hardware's grid limit, no cap lowered (GPU only: the CPU twins have no grid): bias + ReLU
# on 1024 x 512 rows, 65,536 blocks of 8 rows, one more than grid y allows (the CelebA 64x64 layers
# at batch 512); the Winograd transforms on 7,300 images of 20x20, whose z extents (9 N, N H, N OH)
# pass 65,535 blocks.
BIG_BIAS_RELU = [(1024 * 512, 64, None)]
BIG_WINOGRAD = [((7300, 20, 20, 2), 3, None)]


def big_grids(xp, dtype, rng):
    """The grid-stride kernels on arrays past 65,535 blocks along grid y or z (a GPU's own limit)."""
    _bias_relu(xp, dtype, rng, False, BIG_BIAS_RELU)
    _winograd(xp, dtype, rng, False, BIG_WINOGRAD)
    return "bias + ReLU on 524,288 x 64 rows and the Winograd transforms of 7,300 images of 20x20"


KERNEL_CHECKS = [
    KernelCheck("reparam", "z = mu + sqrt(var) eps, forward and backward", _reparam),
    KernelCheck("gauss_kl", "KL between diagonal Gaussians", _gauss_kl),
    KernelCheck("bernoulli", "Bernoulli log-likelihood and its gradient", _bernoulli),
    KernelCheck("bias_relu", "bias + ReLU epilogue and its backward (grid-stride)", _bias_relu),
    KernelCheck("im2col", "im2col / col2im", _im2col),
    KernelCheck("winograd", "Winograd F(2x2, 2x2) data and weight transforms (grid-stride)", _winograd),
    KernelCheck("batchnorm", "training-mode batch norm (+ ReLU), forward and backward", _batchnorm),
    KernelCheck("adam", "the fused Adam update", _adam),
    KernelCheck("finite", "the non-finite check of the trainer's guard", _finite),
]
