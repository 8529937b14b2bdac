"""The fused kernels' test inputs and error bounds, shared by the kernel tests (tests/kernels/: the
Numba CPU twins, the CUDA kernels under Numba's simulator and on a GPU) and by the selftest's
kernel checks (selftest/kernels.py).

Error bounds are stated per element as  |actual - expected| <= tol * scale,  where ``scale`` is
the magnitude of the terms the kernel combined (so that a result that is small because of
cancellation is not held to a relative bound it cannot meet) and ``tol`` a few units of
roundoff of the dtype.  ``expected`` is the plain-xp reference evaluated in float64 on the very
same (possibly float32) inputs: the closest thing to the exact answer.  A check that fails raises
:class:`CheckFailed` (an AssertionError, so that pytest reports it as a failed test) with a
one-line message naming the output, the worst element and the bound.
"""

from __future__ import annotations

import numpy as np

from jmvae_cupy.kernels.adam import flush_thresholds
from jmvae_cupy.kernels.bernoulli import bernoulli_loglik_forward_ref
from jmvae_cupy.kernels.bias_relu import (
    bias_relu_backward_ref,
    bias_relu_forward_ref,
)
from jmvae_cupy.kernels.gauss_kl import gauss_kl_backward_ref, gauss_kl_forward_ref
from jmvae_cupy.kernels.reparam import reparam_backward_ref, reparam_forward_ref
from jmvae_cupy.layers.im2col import col2im_xp as col2im_ref
from jmvae_cupy.layers.im2col import im2col_xp as im2col_ref

DTYPES = (np.float32, np.float64)
VAR_MIN, VAR_MAX = 1e-6, 1e4  # the variance range the kernels promise to handle


class CheckFailed(AssertionError):
    """A kernel, a training step or a run did not give what its check expects (one-line message)."""


def require(condition, message: str) -> None:
    """Raise CheckFailed(message) unless ``condition`` (a plain ``assert`` vanishes under python -O)."""
    if not condition:
        raise CheckFailed(message)


def eps(dtype) -> float:
    """Unit roundoff (machine epsilon) of ``dtype``."""
    return float(np.finfo(dtype).eps)


def log_uniform(rng, shape, lo=VAR_MIN, hi=VAR_MAX, dtype=np.float64):
    """Positive numbers spread evenly in log scale over [lo, hi]; the first row holds lo and hi
    themselves (where the shape allows), so that every batch meets the extremes."""
    v = np.exp(rng.uniform(np.log(lo), np.log(hi), shape))
    if v.ndim == 2 and v.shape[1] >= 2:
        v[0, 0], v[0, 1] = lo, hi
    return v.astype(dtype)


def gaussians(rng, n, d, dtype, lo=VAR_MIN, hi=VAR_MAX):
    """Means off zero and variances log-uniform in [lo, hi]: dict of (n, d) arrays
    mu1, var1, mu2, var2 of ``dtype``."""
    return {
        "mu1": (rng.standard_normal((n, d)) * 2 + 0.5).astype(dtype),
        "var1": log_uniform(rng, (n, d), lo, hi, dtype),
        "mu2": (rng.standard_normal((n, d)) - 0.3).astype(dtype),
        # rows reversed: the extremes of var2 sit in the last row, facing random var1
        "var2": log_uniform(rng, (n, d), lo, hi, dtype)[::-1].copy(),
    }


def f64(*arrays):
    """The arrays cast to float64 (for the reference)."""
    return [None if a is None else np.asarray(a, dtype=np.float64) for a in arrays]


def assert_within(actual, expected, scale, tol, what=""):
    """|actual - expected| <= tol * scale element-wise, else CheckFailed naming the worst element."""
    actual, expected, scale = np.asarray(actual), np.asarray(expected), np.asarray(scale)
    require(actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}")
    require(np.all(np.isfinite(actual)), f"{what}: non-finite values")
    err = np.abs(actual.astype(np.float64) - expected)
    ratio = err / np.maximum(tol * scale, np.finfo(np.float64).tiny)
    worst = np.unravel_index(np.argmax(ratio), ratio.shape) if ratio.size else ()
    require(not ratio.size or ratio[worst] <= 1.0,
            f"{what}: error {err[worst]:.3e} at {worst} exceeds {tol:.1e} * scale {scale[worst]:.3e} "
            f"(actual {actual[worst]!r}, expected {expected[worst]!r})")


def assert_equal(actual, expected, what=""):
    """``actual`` equals ``expected`` bit for bit (NaN where NaN), else CheckFailed naming how many
    elements differ and the worst."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    require(actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}")
    require(actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}")
    same = (actual == expected) | (np.isnan(actual) & np.isnan(expected))
    if not same.all():
        diff = np.where(same, 0, np.abs(actual.astype(np.float64) - expected))
        worst = np.unravel_index(np.argmax(np.nan_to_num(diff, nan=np.inf)), diff.shape)
        raise CheckFailed(f"{what}: {int((~same).sum())} of {same.size} elements differ from the reference, "
                          f"e.g. {actual[worst]!r} != {expected[worst]!r} at {worst}")


def assert_close(actual, expected, rtol, what=""):
    """|actual - expected| <= rtol |expected| element-wise (so a 0 must be exactly 0)."""
    assert_within(actual, np.asarray(expected, dtype=np.float64), np.abs(np.asarray(expected, np.float64)), rtol,
                  what)


# --------------------------------------------------------------------------------------------
# Reparameterisation
# --------------------------------------------------------------------------------------------


def reparam_inputs(rng, n, d, dtype, lo=VAR_MIN, hi=VAR_MAX):
    """mu, var (log-uniform in [lo, hi], extremes included), eps and dz, all (n, d) of dtype."""
    mu = (rng.standard_normal((n, d)) * 3 + 1).astype(dtype)
    var = log_uniform(rng, (n, d), lo, hi, dtype)
    noise = rng.standard_normal((n, d)).astype(dtype)
    dz = rng.standard_normal((n, d)).astype(dtype)
    return mu, var, noise, dz


def check_reparam_forward(z, mu, var, noise):
    """z = mu + sqrt(var)*eps takes 3 roundings (sqrt, *, +):
    |err| <= 4 eps (|mu| + sqrt(var) |eps|)."""
    mu64, var64, noise64 = f64(mu, var, noise)
    require(z.dtype == mu.dtype, f"z: dtype {z.dtype}, the inputs {mu.dtype}")
    scale = np.abs(mu64) + np.sqrt(var64) * np.abs(noise64)
    assert_within(z, reparam_forward_ref(mu64, var64, noise64), scale, 4 * eps(mu.dtype), "z")


def check_reparam_backward(dmu, dvar, dz, var, noise):
    """dmu = dz exactly; dvar = dz*eps/(2 sqrt(var)) is products and quotients only:
    |err| <= 4 eps |dvar|."""
    require(dmu.dtype == dvar.dtype == dz.dtype, f"dmu, dvar: dtypes {dmu.dtype}, {dvar.dtype}, dz {dz.dtype}")
    assert_equal(dmu, dz, "dmu")
    _, expected = reparam_backward_ref(*f64(dz, var, noise))
    assert_within(dvar, expected, np.abs(expected), 4 * eps(dz.dtype), "dvar")


# --------------------------------------------------------------------------------------------
# Gaussian KL
# --------------------------------------------------------------------------------------------


def kl_args(g, prior):
    """(mu1, var1) for the N(0, I) prior, else (mu1, var1, mu2, var2), from a gaussians() dict."""
    return (g["mu1"], g["var1"]) if prior else (g["mu1"], g["var1"], g["mu2"], g["var2"])


def check_kl_forward(kl, args):
    """kl against the float64 reference.  Every dimension adds two non-negative parts, each with
    an absolute error of a few eps * (part + 1), and the sum over D adds at most D eps relative:
    |err| <= D eps (kl + 1)."""
    expected = gauss_kl_forward_ref(*f64(*args))
    require(kl.dtype == args[0].dtype, f"kl: dtype {kl.dtype}, the inputs {args[0].dtype}")
    assert_within(kl, expected, expected + 1.0, args[0].shape[1] * eps(kl.dtype), "kl")


def check_kl_backward(grads, dkl, args):
    """Each gradient against the float64 reference, with the scale of the terms it combines:
    dmu1 is a product (scale |dmu1|); dvar1 = g/2 (1/var2 - 1/var1) and dvar2 = g/2 (1/var2)
    (1 - (var1 + u^2)/var2) subtract, so their scale is the sum of the magnitudes.  8 eps."""
    expected = gauss_kl_backward_ref(*f64(dkl, *args))
    mu1, var1, mu2, var2 = f64(*args) if len(args) == 4 else (*f64(*args), 0.0, 1.0)
    g = np.abs(f64(dkl)[0])[:, None]
    inv2 = 1.0 / var2 * np.ones_like(var1)
    s = (var1 + (mu1 - mu2) ** 2) * inv2
    scales = [np.abs(expected[0]), g * (inv2 + 1 / var1), np.abs(expected[0]), g * inv2 * (1 + s)]
    names = ["dmu1", "dvar1", "dmu2", "dvar2"]
    for got, want, scale, name in zip(grads, expected, scales, names):
        if want is None:
            require(got is None, f"{name} must be None for the prior")
            continue
        require(got.dtype == dkl.dtype, f"{name}: dtype {got.dtype}, dkl {dkl.dtype}")
        assert_within(got, want, scale, 8 * eps(dkl.dtype), name)


# --------------------------------------------------------------------------------------------
# Adam
# --------------------------------------------------------------------------------------------


def adam_inputs(rng, shape, dtype, steps):
    """p (any values), moments m (signed) and v (>= 0, some exactly 0: a fresh optimiser), and
    ``steps`` gradients, all of ``shape`` and ``dtype``.  Every 5th element from the 2nd on has
    moments just above the flush threshold (kernels/adam.py) and zero gradients: its first update
    takes them below it, so they must be stored as 0; every 7th from the 4th has gradients just
    below g_min, which must count as 0."""
    p = np.asarray(rng.standard_normal(shape), dtype)  # asarray: shape () gives 0-d arrays, not scalars
    m = np.asarray(rng.standard_normal(shape) * 0.1, dtype)
    v = np.asarray(rng.standard_normal(shape) ** 2 * 0.01, dtype)
    grads = [np.asarray(rng.standard_normal(shape) * 10.0 ** rng.uniform(-4, 1), dtype) for _ in range(steps)]
    if v.ndim:
        v.reshape(-1)[::3] = 0
        g_min, moment_min = flush_thresholds(dtype, 0.999)
        edge, small = slice(1, None, 5), slice(3, None, 7)
        m.reshape(-1)[edge] = moment_min * 1.05 * np.where(rng.random(m.reshape(-1)[edge].shape) < 0.5, -1, 1)
        v.reshape(-1)[edge] = moment_min * 1.0005
        for g in grads:
            g.reshape(-1)[edge] = 0
            g.reshape(-1)[small] = g_min * 0.9 * np.sign(g.reshape(-1)[small])
    return p, m, v, grads


# ------------------------------------------------------------------ Bernoulli log-likelihood


def bernoulli_inputs(rng, n, d, dtype):
    """Binary x and logits N(0.3, 3^2) with +-40 in the first row (where it fits): (x, logits)."""
    x = (rng.random((n, d)) < 0.4).astype(dtype)
    logits = rng.standard_normal((n, d)) * 3 + 0.3
    if d >= 2:
        logits[0, 0], logits[0, 1] = 40.0, -40.0
    return x, logits.astype(dtype)


def check_bernoulli(ll, r, x, logits):
    """ll (N,) and r = x - sigmoid(l) (N, D) against the reference in float64 on the same inputs.

    ll sums D non-negative terms (log1p(e) + max(l, 0) - l x >= 0): error <= D * eps * |ll| (a
    left-to-right sum in the dtype), plus a few eps of each term; r: a few eps (|r| <= 1)."""
    ll_ref, r_ref = bernoulli_loglik_forward_ref(x.astype(np.float64), logits.astype(np.float64))
    e = eps(ll.dtype)
    d = x.shape[1]
    assert_within(ll, ll_ref, np.abs(ll_ref) + 4 / (d + 4), (d + 4) * e, "ll")
    assert_within(r, r_ref, np.ones_like(r_ref), 4 * e, "r")


# ------------------------------------------------------------------ bias + ReLU epilogue


def bias_relu_inputs(rng, n, d, dtype):
    """GEMM output u (n, d), bias b (d,), upstream gradient dy (n, d); about half of u + b < 0."""
    u = rng.standard_normal((n, d)).astype(dtype)
    b = (rng.standard_normal(d) * 0.5).astype(dtype)
    return u, b, rng.standard_normal((n, d)).astype(dtype)


def check_bias_relu(y, du, db, u, b, dy):
    """y = max(u + b, 0) and du = dy [y > 0] exactly as the reference in the dtype; db (column sums
    of du, N terms) within N eps of the float64 sums."""
    assert_equal(y, bias_relu_forward_ref(u, b), "y")
    du_ref, _ = bias_relu_backward_ref(dy, y)
    assert_equal(du, du_ref, "du")
    exact = du_ref.astype(np.float64).sum(axis=0)
    scale = np.abs(du_ref.astype(np.float64)).sum(axis=0)
    assert_within(db, exact, scale + 1e-300, (u.shape[0] + 2) * eps(db.dtype), "db")


# im2col / col2im geometries (N, H, W, C, KH, KW, stride, padding): odd sizes, stride 1 and 2,
# padding 0, 1, 2 (2 on a 2-wide kernel: windows entirely in the padding), C = 1, 3, 8.
IM2COL_CASES = [
    (2, 7, 5, 1, 3, 2, (1, 1), (0, 0)),
    (3, 9, 8, 3, 4, 4, (2, 2), (1, 1)),
    (2, 6, 7, 8, 3, 3, (2, 1), (2, 1)),
    (1, 5, 5, 3, 2, 2, (1, 2), (2, 2)),
    (2, 11, 9, 8, 5, 3, (2, 2), (2, 0)),
    (1, 1, 1, 1, 1, 1, (1, 1), (0, 0)),
]


def im2col_inputs(rng, case, dtype, layout="nhwc"):
    """x (N, H, W, C) for one IM2COL_CASES entry -- C-contiguous, or (layout="nchw") a
    channels-first array seen as NHWC, as the conv layers pass it -- and a random col of the
    matching shape, and the geometry (kh, kw, sy, sx, ph, pw)."""
    N, H, W, C, kh, kw, (sy, sx), (ph, pw) = case
    x = rng.standard_normal((N, H, W, C)).astype(dtype)
    if layout == "nchw":
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
    OH, OW = (H + 2 * ph - kh) // sy + 1, (W + 2 * pw - kw) // sx + 1
    col = rng.standard_normal((N, OH, OW, kh, kw, C)).astype(dtype)
    return x, col, (kh, kw, sy, sx, ph, pw)


def check_im2col(col, x, geometry):
    """col equals the plain-xp im2col exactly (a copy: no rounding)."""
    expected = im2col_ref(x, *geometry)
    assert_equal(col, expected, "col")


def check_col2im(x, col, hw, geometry):
    """x equals the plain-xp col2im exactly: both add each pixel's terms in the order (i, j)."""
    _, _, sy, sx, ph, pw = geometry
    assert_equal(x, col2im_ref(col, *hw, sy, sx, ph, pw), "x")
