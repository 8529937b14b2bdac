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
from jmvae_cupy.estimators import EstimatorError, eq5_bound, eq6_bound, evaluate_model, iw_bound, snis_conditional
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


@pytest.mark.parametrize("variant", ["jmvae", "kl", "h", "cvae", "cmma"])
@pytest.mark.parametrize("direction", ["label2image", "image2label"])
def test_model_estimators_have_names_and_sane_values(variant, direction):
    kw = {"direction": direction} if variant in ("cvae", "cmma") else {}
    model = build_model(ARCH, variant, seed=0, dtype="float64", device="cpu", **kw)
    r = np.random.default_rng(1)
    x = (r.random((20, 12)) < 0.5).astype(np.float64)
    w = np.eye(4)[r.integers(0, 4, 20)]
    res = evaluate_model(model, x, w, direction, Rng(0), samples=3, iterations=2, importance=5, batch_size=8)
    names = set(res)
    expected = {"jmvae": "eq5-iter2", "kl": "eq5-unimodal", "h": "eq6-iter2", "cvae": "eq5-prior",
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
