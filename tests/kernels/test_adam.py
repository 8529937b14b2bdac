"""Fused Adam update (kernels/adam.py): the Numba CPU twin against the plain-xp reference (same
bits: same operations in the same order and dtype), the fallback for strided arrays, and the
argument checks.  The CUDA kernel runs against the same reference under the simulator, in a
subprocess (test_cuda_kernels.py), and compiles to PTX there too."""

from __future__ import annotations

import numpy as np
import pytest

from jmvae_cupy.kernels import KernelArgumentError
from jmvae_cupy.kernels.adam import adam_update, adam_update_ref, flush_thresholds
from jmvae_cupy.selftest.bounds import DTYPES, adam_inputs

SHAPES = [(), (1,), (513,), (7, 37), (3, 4, 5, 2)]
HYPER = (0.9, 0.999, 1e-3 * 0.0447 / 0.1, 1e-8 * 0.0447)  # beta1, beta2, step_size, eps_hat at t = 1


def run_both(rng, shape, dtype, steps=3):
    """The state after ``steps`` updates by the fused kernel and by the reference, same inputs."""
    p, m, v, grads = adam_inputs(rng, shape, dtype, steps)
    ours = [a.copy() for a in (p, m, v)]
    ref = [a.copy() for a in (p, m, v)]
    for g in grads:
        adam_update(ours[0], g, ours[1], ours[2], *HYPER)
        adam_update_ref(ref[0], g, ref[1], ref[2], *HYPER)
    assert not np.array_equal(ours[0], p) and not np.array_equal(ref[0], p)  # both really updated
    return ours, ref


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_cpu_twin_gives_the_reference_bits(rng, dtype, shape):
    ours, ref = run_both(rng, shape, dtype)
    for name, a, b in zip("pmv", ours, ref):
        assert a.dtype == dtype, name
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_updates_in_place(rng):
    p, m, v, (g,) = adam_inputs(rng, (4, 5), np.float32, 1)
    ids = [id(a) for a in (p, m, v)]
    before = p.copy()
    adam_update(p, g, m, v, *HYPER)
    assert [id(a) for a in (p, m, v)] == ids and not np.array_equal(p, before)


def test_strided_arrays_fall_back_to_the_reference(rng):
    p, m, v, (g,) = adam_inputs(rng, (6, 8), np.float64, 1)
    pt, mt, vt = (np.asfortranarray(a) for a in (p, m, v))  # not C-contiguous: the fused path cannot view them flat
    adam_update(pt, g[:, ::-1].copy()[:, ::-1], mt, vt, *HYPER)
    adam_update_ref(p, g, m, v, *HYPER)
    for a, b in ((pt, p), (mt, m), (vt, v)):
        np.testing.assert_array_equal(a, b)


def test_strided_gradient_uses_the_fused_path(rng):
    p, m, v, (g,) = adam_inputs(rng, (6, 8), np.float32, 1)
    wide = np.repeat(g, 2, axis=1)[:, ::2]  # a strided view holding the values of g
    p2, m2, v2 = p.copy(), m.copy(), v.copy()
    adam_update(p, wide, m, v, *HYPER)
    adam_update_ref(p2, g, m2, v2, *HYPER)
    np.testing.assert_array_equal(p, p2)


@pytest.mark.parametrize(
    "args, message",
    [
        ((np.zeros(3), np.zeros(4), np.zeros(3), np.zeros(3)), "shape"),
        ((np.zeros(3), [0.0, 0.0, 0.0], np.zeros(3), np.zeros(3)), "must be a NumPy or CuPy array"),
    ],
)
def test_bad_arguments_raise(args, message):
    with pytest.raises(KernelArgumentError, match=message):
        adam_update(*args, *HYPER)


# ------------------------------------------------------------------ the flush (no subnormal numbers)

UPDATES = {"fused": adam_update, "reference": adam_update_ref}


@pytest.mark.parametrize("which", UPDATES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_the_flush_thresholds(which, dtype):
    b1, b2 = HYPER[0], HYPER[1]
    g_min, mm = flush_thresholds(dtype, b2)
    fi = np.finfo(dtype)
    assert g_min == pytest.approx((2 * fi.tiny / (1 - b2)) ** 0.5) and mm == fi.tiny / fi.eps
    #              decays below | negative | stays above | g below g_min | g above g_min
    m = np.array([1.05 * mm, -1.05 * mm, 2 * mm, 0.0, 0.0], dtype)
    v = np.array([1.0005 * mm, 0.0, 0.0, 0.0, 0.0], dtype)
    g = np.array([0.0, 0.0, 0.0, 0.9 * g_min, 1.1 * g_min], dtype)
    p = np.array([1, 1, 1, 1, 0], dtype)  # (the 5th step is ~5e-13 in float32: from p = 0, so that it shows)
    UPDATES[which](p, g, m, v, *HYPER)
    assert m[0] == 0 and m[1] == 0 and not np.signbit(m[1]), m  # stored as +0, not -0
    assert m[2] == dtype(2 * mm) * dtype(b1)  # above the threshold: untouched
    assert m[3] == 0 and v[3] == 0 and p[3] == 1  # a gradient below g_min counts as 0
    assert m[4] == dtype(1 - b1) * g[4]  # above it: counts; (1 - b2) g^2 is normal but below mm: v = 0
    assert v[0] == 0 and v[4] == 0
    np.testing.assert_array_equal(p[:4], 1)  # zero moments: no step
    assert p[4] < 0  # m > 0, v = 0: a step of step_size m / eps_hat


@pytest.mark.parametrize("which", UPDATES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_zero_gradient_history_reaches_zero_without_a_step_size_product_turning_subnormal(rng, which, dtype):
    """A dead unit: m decays by b1 per step.  Every stored m is 0 or at least moment_min, so the
    update's ``step_size * m`` is normal (this HYPER's step size) until m is exactly 0 (after ~610
    steps in float32, ~6,300 in float64)."""
    tiny = np.finfo(dtype).tiny
    _, mm = flush_thresholds(dtype, HYPER[1])
    assert HYPER[2] * mm >= tiny
    p = rng.standard_normal(5).astype(dtype)
    m = (rng.standard_normal(5) * 1e-3).astype(dtype)
    v = np.full(5, 1e-6, dtype)
    g = np.zeros(5, dtype)
    steps = 700 if dtype == np.float32 else 6500
    for _ in range(steps):
        UPDATES[which](p, g, m, v, *HYPER)
        assert np.all((m == 0) | (np.abs(m) >= mm)) and np.all((v == 0) | (v >= mm))
    np.testing.assert_array_equal(m, 0)
    assert np.all(v > 0)  # v decays 1000 times more slowly: still above the threshold here


def test_non_finite_values_pass_through_the_flush():
    p, m, v = np.ones(3, np.float32), np.zeros(3, np.float32), np.zeros(3, np.float32)
    g = np.array([np.nan, np.inf, 1.0], np.float32)
    adam_update(p, g, m, v, *HYPER)
    assert np.isnan(m[0]) and np.isinf(m[1]) and np.isnan(p[0]) and np.isfinite(p[2])


@pytest.mark.parametrize("dtype", DTYPES)
def test_flush_false_keeps_everything_and_the_twin_still_gives_the_reference_bits(rng, dtype):
    p, m, v, grads = adam_inputs(rng, (50,), dtype, 2)
    ours = [a.copy() for a in (p, m, v)]
    for g in grads:
        adam_update(ours[0], g, ours[1], ours[2], *HYPER, flush=False)
        adam_update_ref(p, g, m, v, *HYPER, flush=False)
    for a, b in zip(ours, (p, m, v)):
        np.testing.assert_array_equal(a, b)
    _, mm = flush_thresholds(dtype, HYPER[1])
    assert np.all((m[1::5] != 0) & (np.abs(m[1::5]) < mm))  # adam_inputs' edge elements: kept below it
