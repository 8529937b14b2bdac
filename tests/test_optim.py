"""Adam: one step against values computed by hand, the folded bias correction against the
textbook four-line form, and an exact save/restore round trip."""

import numpy as np

from jmvae_cupy.optim import Adam


def test_first_step_by_hand():
    # t = 1: m = 0.1 g, v = 0.001 g^2, m_hat = g, v_hat = g^2, step = lr * g / (|g| + eps)
    p = {"w": np.array([1.0, -2.0, 0.5])}
    g = {"w": np.array([0.5, -0.25, 0.0])}
    opt = Adam(lr=0.1, eps=1e-8)
    opt.step(p, g)
    expected = np.array([1.0 - 0.1 * 0.5 / (0.5 + 1e-8), -2.0 + 0.1 * 0.25 / (0.25 + 1e-8), 0.5])
    np.testing.assert_allclose(p["w"], expected, rtol=1e-14)
    assert opt.t == 1


def test_matches_textbook_form(rng):
    p0 = rng.standard_normal(7)
    p = {"w": p0.copy()}
    ref, m, v = p0.copy(), np.zeros(7), np.zeros(7)
    opt = Adam(lr=0.01, beta1=0.8, beta2=0.99, eps=1e-3)
    for t in range(1, 6):
        g = rng.standard_normal(7)
        opt.step(p, {"w": g})
        m = 0.8 * m + 0.2 * g
        v = 0.99 * v + 0.01 * g * g
        ref = ref - 0.01 * (m / (1 - 0.8**t)) / (np.sqrt(v / (1 - 0.99**t)) + 1e-3)
    np.testing.assert_allclose(p["w"], ref, rtol=1e-12)


def test_state_round_trip_is_exact(rng):
    pa = {"w": rng.standard_normal((3, 2)).astype(np.float32)}
    pb = {"w": pa["w"].copy()}
    a = Adam(lr=1e-3)
    grads = [{"w": rng.standard_normal((3, 2)).astype(np.float32)} for _ in range(6)]
    for g in grads[:3]:
        a.step(pa, g)
    state = a.state_dict()
    snapshot = {k: (dict((n, x.copy()) for n, x in v.items()) if isinstance(v, dict) else v) for k, v in state.items()}
    pb["w"] = pa["w"].copy()
    b = Adam(lr=5.0)
    b.load_state_dict(snapshot)
    for g in grads[3:]:
        a.step(pa, g)
        b.step(pb, g)
    assert np.array_equal(pa["w"], pb["w"]) and a.t == b.t == 6


def test_subnormal_flush_changes_a_dead_units_parameter_by_nothing_visible(rng):
    """A unit that stops receiving gradient: with the flush its moment reaches exactly 0 (no
    subnormal, kernels/adam.py); without it, m decays through the subnormals.  The parameters of
    the two runs are the same bits (the steps the flush skips are far below float32 resolution)."""
    p0 = rng.standard_normal(6).astype(np.float32)
    g1 = rng.standard_normal(6).astype(np.float32)
    runs = {}
    for flush in (True, False):
        opt, p = Adam(lr=1e-3, flush_subnormals=flush), {"w": p0.copy()}
        opt.step(p, {"w": g1})  # one real gradient, then none
        for _ in range(900):
            opt.step(p, {"w": np.zeros(6, np.float32)})
        runs[flush] = (p["w"], opt.m["w"])
    tiny = np.finfo(np.float32).tiny
    np.testing.assert_array_equal(runs[True][1], 0)
    assert np.all((runs[False][1] != 0) & (np.abs(runs[False][1]) < tiny))
    np.testing.assert_array_equal(runs[True][0], runs[False][0])  # the skipped steps were below p's ulp
