"""The checks conv (test_conv.py) and transposed conv (test_conv_transpose.py) share: the fast
layer against its loop oracle, by finite differences, and the oracle itself by finite
differences.  Each takes the layer's functions, so both files run the very same assertions.

Tolerances: the fast path equals the oracle to 1e-12 (float64, the same sums in another order);
finite differences of a linear layer reach ~1e-10, checked at 1e-8.
"""

from jmvae_cupy.gradcheck import check_gradients, dot, rel_error

TOL_ORACLE = 1e-12
TOL_FD = 1e-8


def check_against_oracle(rng, forward, backward, forward_naive, backward_naive, x, Wt, b, s, p):
    """forward/backward (x, W, b, stride, pad) equal the loop oracle, with a random upstream gradient."""
    y, cache = forward(x, Wt, b, s, p)
    assert rel_error(y, forward_naive(x, Wt, b, s, p)) < TOL_ORACLE
    dy = rng.standard_normal(y.shape)
    dx, g = backward(dy, cache)
    dx_n, g_n = backward_naive(dy, x, Wt, s, p)
    assert dx.shape == x.shape and g["W"].shape == Wt.shape and g["b"].shape == b.shape
    for a, n in ((dx, dx_n), (g["W"], g_n["W"]), (g["b"], g_n["b"])):
        assert rel_error(a, n) < TOL_ORACLE


def check_by_finite_differences(rng, forward, backward, x, Wt, b, s, p):
    """The fast backward against central differences of <forward(x, W, b), dy>, dy random."""
    y, cache = forward(x, Wt, b, s, p)
    dy = rng.standard_normal(y.shape)  # random upstream gradient, never all ones
    dx, g = backward(dy, cache)
    errs = check_gradients(lambda: dot(forward(x, Wt, b, s, p)[0], dy), {"x": x, "W": Wt, "b": b}, {"x": dx, **g})
    assert max(errs.values()) < TOL_FD, errs


def check_oracle_by_finite_differences(rng, forward_naive, backward_naive, x, Wt, b, s, p):
    """The loop oracle's own backward against central differences (so the oracle is not trusted blindly)."""
    dy = rng.standard_normal(forward_naive(x, Wt, b, s, p).shape)
    dx, g = backward_naive(dy, x, Wt, s, p)
    errs = check_gradients(lambda: dot(forward_naive(x, Wt, b, s, p), dy), {"x": x, "W": Wt, "b": b}, {"x": dx, **g})
    assert max(errs.values()) < TOL_FD, errs
