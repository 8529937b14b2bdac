"""The estimators of jmvae_cupy/estimators.py on linear-Gaussian models, where every quantity
they target has a closed form:

    z ~ N(0, I_2),  x | z ~ N(A z + b, s^2 I_4)   =>   x ~ N(b, A A^T + s^2 I),
    p(z|x) = N(m, V),  V = (I + A^T A / s^2)^-1,  m = V A^T (x - b) / s^2,
    INT N(z; m', V') p(x|z) dz = N(x; A m' + b, A V' A^T + s^2 I).

Monte Carlo margins: an estimate is compared through the mean of R independent repeats, with a
margin of 4 standard errors of that mean (plus 1e-9): a correct estimator fails with probability
below 1e-4 per check, and the seeds are fixed, so the tests are deterministic.
"""

import math

import numpy as np
import pytest

from jmvae_cupy.distributions import gaussian_loglik
from jmvae_cupy.estimators import (
    DIRECTIONS,
    EstimatorError,
    complete,
    eq5_bound,
    eq6_bound,
    evaluate_model,
    importance_estimates,
    iw_bound,
    paper_estimate,
    snis_conditional,
)
from jmvae_cupy.models import build_model, mnist_arch
from jmvae_cupy.rng import Rng

R = np.random.default_rng(0)
DZ, DX, S2 = 2, 4, 0.25
A = R.standard_normal((DX, DZ))
B = R.standard_normal(DX)
X = B + (R.standard_normal((6, DZ)) @ A.T) + math.sqrt(S2) * R.standard_normal((6, DX))  # 6 data points


def mvn_logpdf(x, mean, cov):
    d = x - mean
    L = np.linalg.cholesky(cov)
    sol = np.linalg.solve(L, d.T)
    return -0.5 * (sol * sol).sum(0) - np.log(np.diag(L)).sum() - 0.5 * x.shape[1] * math.log(2 * math.pi)


def exact_logp(x, A=A, b=B, s2=S2):
    return mvn_logpdf(x, b, A @ A.T + s2 * np.eye(A.shape[0]))


def loglik(x, A=A, b=B, s2=S2):
    return lambda z: gaussian_loglik(x, z @ A.T + b, np.full(x.shape, s2))[0]


def posterior(x):
    V = np.linalg.inv(np.eye(DZ) + A.T @ A / S2)
    m = (x - B) @ A @ V / S2
    return m, np.broadcast_to(np.diag(V), m.shape).copy(), V


def repeats(fn, r=30):
    vals = np.array([fn(Rng(1000 + i)) for i in range(r)])  # (r, B)
    return vals.mean(0), vals.std(0, ddof=1) / math.sqrt(r)


def test_eq5_with_the_prior_is_a_lower_bound_on_log_p():
    mu, var = np.zeros((6, DZ)), np.ones((6, DZ))
    mean, se = repeats(lambda rng: eq5_bound(mu, var, loglik(X), rng, 10))
    assert np.all(mean <= exact_logp(X) + 4 * se + 1e-9)
    # and it estimates E_p(z)[log p(x|z)] = log N(x; b, s^2 I) - tr(A A^T) / (2 s^2) without bias
    closed = mvn_logpdf(X, B, S2 * np.eye(DX)) - np.trace(A @ A.T) / (2 * S2)
    assert np.all(np.abs(mean - closed) <= 4 * se + 1e-9)


def test_eq5_bounds_the_encoder_predictive_not_the_exact_likelihood():
    m, _, _ = posterior(X)
    var = np.full_like(m, 0.05)  # a too-narrow q(z|.) centred on the posterior mean
    mean, se = repeats(lambda rng: eq5_bound(m, var, loglik(X), rng, 10))
    predictive = np.array([mvn_logpdf(X[i:i + 1], A @ m[i] + B, 0.05 * A @ A.T + S2 * np.eye(DX))[0]
                           for i in range(len(X))])
    assert np.all(mean <= predictive + 4 * se + 1e-9)
    # a concentrated q can exceed the exact log p(x): Eq. 5 is no bound on the model's likelihood
    assert np.any(mean > exact_logp(X) + 4 * se)


def test_eq6_is_a_lower_bound_of_the_two_layer_model():
    C = R.standard_normal((DZ, DZ))
    d, r2 = R.standard_normal(DZ), 0.3

    def prior_z1(z2):
        return z2 @ C.T + d, np.full(z2.shape, r2)
    mu2, var2 = np.zeros((6, DZ)), np.ones((6, DZ))
    mean, se = repeats(lambda rng: eq6_bound(mu2, var2, prior_z1, loglik(X), rng, 10))
    exact = mvn_logpdf(X, A @ d + B, A @ (C @ C.T + r2 * np.eye(DZ)) @ A.T + S2 * np.eye(DX))
    assert np.all(mean <= exact + 4 * se + 1e-9)
    # Eq. 6 is looser than Eq. 5 on the same model (Jensen twice): compare with Eq. 5 over p(z1)
    cov1 = C @ C.T + r2 * np.eye(DZ)
    e5 = mvn_logpdf(X, A @ d + B, S2 * np.eye(DX)) - np.trace(A @ cov1 @ A.T) / (2 * S2)
    assert np.all(np.abs(mean - e5) <= 4 * se + 1e-9)  # equal in expectation here (z1 marginal = p(z1))


@pytest.mark.parametrize("proposal", ["prior", "wide"])
def test_importance_weighted_bound_is_below_and_converges(proposal):
    exact = exact_logp(X)
    scale = 1.0 if proposal == "prior" else 1.5
    mu, var = np.zeros((6, DZ)), np.full((6, DZ), scale ** 2)
    if proposal == "wide":
        mu = posterior(X)[0]
    lj = lambda z: loglik(X)(z) + gaussian_loglik(z, 0.0 * z, np.ones_like(z))[0]  # noqa: E731
    gaps = []
    for S in (1, 10, 100, 2000):
        mean, se = repeats(lambda rng, S=S: iw_bound(mu, var, lj, rng, S), r=20)
        assert np.all(mean <= exact + 4 * se + 1e-9), (S, mean - exact)
        gaps.append(float(np.mean(exact - mean)))
    assert gaps[0] > gaps[1] > gaps[2] > gaps[3] >= -0.01  # tighter with S
    assert gaps[3] < 0.05, gaps                           # and close to exact at S = 2000


def test_importance_weighted_bound_is_exact_with_the_true_posterior():
    A2 = np.vstack([np.diag([1.5, 0.7]), np.zeros((2, DZ))])  # A^T A diagonal: a diagonal posterior
    V = np.linalg.inv(np.eye(DZ) + A2.T @ A2 / S2)
    m = (X - B) @ A2 @ V / S2
    var = np.broadcast_to(np.diag(V), m.shape).copy()
    lj = lambda z: loglik(X, A2)(z) + gaussian_loglik(z, 0.0 * z, np.ones_like(z))[0]  # noqa: E731
    est = iw_bound(m, var, lj, Rng(0), 3)
    np.testing.assert_allclose(est, exact_logp(X, A2), rtol=0, atol=1e-9)


def test_snis_conditional_converges_to_the_exact_conditional():
    # x = (t, c): t the first two coordinates, c the last two; log p(t|c) = log p(x) - log p(c)
    exact = exact_logp(X) - mvn_logpdf(X[:, 2:], B[2:], A[2:] @ A[2:].T + S2 * np.eye(2))
    m, var, _ = posterior(X)
    var = 1.5 * var
    lt = loglik(X[:, :2], A[:2], B[:2])
    lr = lambda z: loglik(X[:, 2:], A[2:], B[2:])(z) + gaussian_loglik(z, 0.0 * z, np.ones_like(z))[0]  # noqa: E731
    mean, se = repeats(lambda rng: snis_conditional(m, var, lt, lr, rng, 2000), r=10)
    assert np.all(np.abs(mean - exact) < 0.02 + 4 * se)


ARCH = mnist_arch(hidden=8, latent=3, x_dim=12, w_dim=4, chain=4)


def _build(variant, **kw):
    """build_model on ARCH; "h-z1" is JMVAE-h with the top layer q(z2|z1)."""
    if variant == "h-z1":
        return build_model(ARCH, "h", h_top="z1", **kw)
    return build_model(ARCH, variant, **kw)


@pytest.mark.parametrize("variant", ["jmvae", "kl", "h", "h-z1", "cvae", "cmma"])
@pytest.mark.parametrize("direction", ["label2image", "image2label"])
def test_model_estimators_have_names_and_sane_values(variant, direction):
    kw = {"direction": direction} if variant in ("cvae", "cmma") else {}
    model = _build(variant, seed=0, dtype="float64", device="cpu", **kw)
    r = np.random.default_rng(1)
    x = (r.random((20, 12)) < 0.5).astype(np.float64)
    w = np.eye(4)[r.integers(0, 4, 20)]
    res = evaluate_model(model, x, w, direction, Rng(0), samples=3, iterations=2, importance=5, batch_size=8)
    names = set(res)
    expected = {"jmvae": "eq5-iter2", "kl": "eq5-unimodal", "h": "eq6-iter2", "h-z1": "eq6-iter2", "cvae": "eq5-prior",
                "cmma": "eq5-prior"}[variant]
    assert expected in names
    assert ("iw5" in names) if variant in ("cvae", "cmma") else {"snis5", "iw5-joint"} <= names
    assert all(np.isfinite(v) for v in res.values())
    if direction == "image2label":
        assert all(v <= 1e-12 for v in res.values())  # log-probabilities of a discrete label
    if variant in ("cvae", "cmma"):
        other = "image2label" if direction == "label2image" else "label2image"
        with pytest.raises(EstimatorError, match="trained for"):
            evaluate_model(model, x, w, other, Rng(0), samples=2)


# ---------------------------------------------------------------------------- model estimators, semantics
def _data(n, seed=1):
    r = np.random.default_rng(seed)
    x = (r.random((n, ARCH.x_dim)) < 0.5).astype(np.float64)
    w = np.eye(ARCH.w_dim)[r.integers(0, ARCH.w_dim, n)]
    return x, w


def _jiggle(model, prefix, seed):
    """Add noise to every parameter of the components under ``prefix``."""
    r = np.random.default_rng(seed)
    names = [k for k in model.params if k.startswith(prefix)]
    assert names
    for k in names:
        model.params[k] += 0.5 * r.standard_normal(model.params[k].shape)


@pytest.mark.parametrize("variant", ["jmvae", "kl", "h", "h-z1"])
def test_snis_label_probabilities_sum_to_one(variant):
    """snisS for image->label estimates p(w|x): summed over the K labels it is 1.  Exactly so when
    every label gets the same draws: q(z|x,w) made blind to w (first layer of its w branch zeroed)
    and the same Rng per label; then sum_w exp(snis) = sum_s softmax_s(log p(x|z_s) + log p(z_s) -
    log q(z_s)) sum_w p(w|z_s) = 1.  And close to 1 at large S for the model as built."""
    model = _build(variant, seed=0, dtype="float64", device="cpu")
    x, _ = _data(1)
    K = ARCH.w_dim

    def total(S):
        return sum(math.exp(float(importance_estimates(model, x, np.eye(K)[k:k + 1], "image2label", Rng(7), S)
                                  [f"snis{S}"][0])) for k in range(K))
    assert abs(total(2000) - 1.0) < 0.01
    model.params["qxw.w.0.W"][...] = 0.0
    assert abs(total(20) - 1.0) < 1e-12


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_eq5_unimodal_reads_the_conditions_encoder_only(direction):
    """JMVAE-kl's Eq. 5 draws z from q(z|c): label->image from q(z|w), image->label from q(z|x).
    The target's unimodal encoder and the joint encoder play no part (the estimate is unchanged,
    bit for bit, when their parameters change); the condition's encoder does."""
    model = build_model(ARCH, "kl", seed=0, dtype="float64", device="cpu")
    x, w = _data(6)
    target, cond = ("qx.", "qw.") if direction == "label2image" else ("qw.", "qx.")

    def est():
        name, val = paper_estimate(model, x, w, direction, Rng(3), samples=4)
        assert name == "eq5-unimodal"
        return val
    base = est()
    _jiggle(model, target, 1)
    _jiggle(model, "qxw.", 2)
    np.testing.assert_array_equal(est(), base)
    _jiggle(model, cond, 3)
    assert np.abs(est() - base).max() > 1e-3


def _complete_by_hand(model, x, w, direction, seed, iterations):
    """The paper's iterative sampling: the target starts at zeros, then K times z ~ q(z|t^, c)
    (z = mu + sqrt(var) eps), t^ ~ p(t|z) (Bernoulli: u < sigmoid(l); Categorical: inverse CDF with
    one uniform per row), all from one stream."""
    r = Rng(seed)
    th = np.zeros_like(x if direction == "label2image" else w)
    for _ in range(iterations):
        mu, var = model.encode(th, w) if direction == "label2image" else model.encode(x, th)
        z = mu + np.sqrt(var) * r.normal(mu.shape, np.float64)
        if direction == "label2image":
            p = 1.0 / (1.0 + np.exp(-model.decode_x(z)))
            th = (r.uniform(p.shape, np.float64) < p).astype(np.float64)
        else:
            lg = model.decode_w(z)
            cdf = np.cumsum(np.exp(lg) / np.exp(lg).sum(1, keepdims=True), axis=1)
            k = np.minimum((cdf < r.uniform((len(lg), 1), np.float64)).sum(1), lg.shape[1] - 1)
            th = np.eye(lg.shape[1])[k]
    return th


@pytest.mark.parametrize("variant", ["jmvae", "h"])
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_iterative_completion_never_sees_the_true_target(variant, direction, monkeypatch):
    """complete() fills the missing modality from zeros: the encoder is first asked q(z|0, c), and
    every later call gets a sampled t^ and the true condition; the result does not depend on the
    true target at all (two different targets, the same stream: the same completion), the
    condition is passed through, and it is the by-hand iterative sampling."""
    model = build_model(ARCH, variant, seed=0, dtype="float64", device="cpu")
    x, w = _data(50)
    x2, w2 = _data(50, seed=9)
    ti, ci = (0, 1) if direction == "label2image" else (1, 0)  # positions of target, condition in (x, w)
    t, c = (x, w)[ti], (x, w)[ci]
    calls = []
    encode = model.encode

    def spy(xx, ww, *a, **k):
        calls.append((xx.copy(), ww.copy()))
        return encode(xx, ww, *a, **k)
    monkeypatch.setattr(model, "encode", spy)
    a = complete(model, x, w, direction, Rng(4), 3)
    b = complete(model, x2 if ti == 0 else x, w2 if ti == 1 else w, direction, Rng(4), 3)
    monkeypatch.undo()
    assert len(calls) == 6
    np.testing.assert_array_equal(calls[0][ti], np.zeros_like(t))  # the paper: start from zeros
    for call in calls[:3]:
        np.testing.assert_array_equal(call[ci], c)
        assert not np.array_equal(call[ti], t)
    np.testing.assert_array_equal(b[ti], a[ti])
    np.testing.assert_array_equal(a[ci], c)
    np.testing.assert_array_equal(a[ti], _complete_by_hand(model, x, w, direction, 4, 3))


@pytest.mark.parametrize("variant", ["jmvae", "kl", "h", "h-z1"])
def test_one_sample_iw_joint_is_the_elbo_in_expectation(variant):
    """With S = 1, iwS-joint is log p(x, w, z) - log q(z|x,w) at one z ~ q: its expectation is the
    ELBO that the model reports (beta = 1, eval mode): rec_x + rec_w - KL(q || N(0, I)), JMVAE-h
    rec_x + rec_w - KL(q(z2) || N(0, I)) - E_q(z2) KL(q(z1) || p(z1|z2)).  Compared on 4000 copies
    of one pair (means within 4 standard errors).  JMVAE-h's p(z1|z2) is moved far from N(0, I)
    (mean 1.5, variance ~0.3), so that a wrong prior term would cost nats, not hundredths.
    JMVAE-h with q(z2|z1): q = q(z1|x,w) q(z2|z1), and the model's kl_z1 is log q(z1) - log p(z1|z2)
    with the entropy in closed form."""
    model = _build(variant, seed=0, dtype="float64", device="cpu")
    L = ARCH.latent
    if variant.startswith("h"):
        model.params["pz1.head.b"][:L] = 1.5
        model.params["pz1.head.b"][L:] = -1.0
    x, w = _data(1)
    n, chunks = 4000, 20
    X, W = np.repeat(x, n, 0), np.repeat(w, n, 0)
    iw = importance_estimates(model, X, W, "label2image", Rng(1), 1)["iw1-joint"]
    m = n // chunks
    elbos = np.array([float(model.loss_and_grads(X[i * m:(i + 1) * m], W[i * m:(i + 1) * m], Rng(100 + i),
                                                 beta=1.0, train=False)[1]["elbo"]) for i in range(chunks)])
    se = math.sqrt(iw.var(ddof=1) / n + elbos.var(ddof=1) / chunks)
    assert abs(iw.mean() - elbos.mean()) < 4 * se + 1e-9, (iw.mean(), elbos.mean(), se)
