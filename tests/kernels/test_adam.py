"""Fused Adam update (kernels/adam.py): the Numba CPU twin against the plain-xp reference (same
bits: same operations in the same order and dtype), the fallback for strided arrays, and the
argument checks.  The CUDA kernel runs against the same reference under the simulator, in a
subprocess (test_cuda_kernels.py), and compiles to PTX there too."""

from __future__ import annotations

import numpy as np
import pytest

from jmvae_cupy.kernels import KernelArgumentError
from jmvae_cupy.kernels.adam import adam_update, adam_update_ref

from .kernel_checks import DTYPES, adam_inputs

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
