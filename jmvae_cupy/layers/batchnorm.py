"""Batch normalisation of (N, C) features or (N, C, H, W) feature maps, per channel c.

Training mode normalises with the statistics of the batch, over the M = N (dense) or
M = N*H*W (spatial) values of each channel:

    mu = (1/M) sum_m x_m        var = (1/M) sum_m (x_m - mu)^2          (biased)
    xhat = (x - mu) / sqrt(var + eps)        y = gamma * xhat + beta

and updates the running statistics, in place, in the state dict:

    state["mean"] <- (1 - momentum) state["mean"] + momentum mu
    state["var"]  <- (1 - momentum) state["var"]  + momentum var * M / (M - 1)   (unbiased)

Eval mode normalises with state["mean"], state["var"] instead (a fixed affine map).

Conventions, chosen and written down:

* eps = 1e-4 and momentum = 0.1: the defaults of Lasagne's BatchNormLayer (the paper's library).
* Normalisation uses the *biased* batch variance (it is the variance of the numbers being
  normalised, and the gradient below assumes it); the running variance stores the *unbiased*
  estimate var * M / (M - 1), the population estimate eval mode wants (Chainer and PyTorch do
  the same; Lasagne keeps a running 1/std of the biased variance instead).  M = 1 keeps var.
* Two-pass variance: the mean first, then the mean of squared deviations.  The one-pass
  E[x^2] - E[x]^2 cancels catastrophically in float32 when |mu| >> std.
* Parameters gamma (C,), beta (C,); state mean (C,), var (C,) (initially 0 and 1).

A spatial input is handled as rows: (N, C, H, W) -> (N*H*W, C), one row per pixel (free for a
conv output, which is channels-last in memory); y comes back in the same NCHW view.

Derivation: docs/derivations/batchnorm.md.  Checked by tests/layers/test_batchnorm.py.
"""

from __future__ import annotations

from ..backend import get_array_module
from ..kernels.bias_relu import bias_relu_backward, bias_relu_forward

EPS = 1e-4
MOMENTUM = 0.1


def _rows(x):
    """(N, C) -> itself; (N, C, H, W) -> (N*H*W, C)."""
    if x.ndim == 2:
        return x
    return x.transpose(0, 2, 3, 1).reshape(-1, x.shape[1])


def _unrows(y_rows, shape):
    """Inverse of _rows: (M, C) -> (N, C) or an NCHW view (N, C, H, W) of the rows."""
    if len(shape) == 2:
        return y_rows
    N, C, H, W = shape
    return y_rows.reshape(N, H, W, C).transpose(0, 3, 1, 2)


def batchnorm_init(c: int, dtype, xp):
    """params {"gamma": ones (C,), "beta": zeros (C,)}, state {"mean": zeros (C,), "var": ones (C,)}."""
    params = {"gamma": xp.ones((c,), dtype=dtype), "beta": xp.zeros((c,), dtype=dtype)}
    state = {"mean": xp.zeros((c,), dtype=dtype), "var": xp.ones((c,), dtype=dtype)}
    return params, state


def batchnorm_forward(
    x, gamma, beta, state, train: bool, momentum: float = MOMENTUM, eps: float = EPS, relu: bool = False
):
    """y = gamma * (x - mu) / sqrt(var + eps) + beta, per channel; relu=True: y = max(that, 0).

    x: (N, C) or (N, C, H, W); gamma, beta: (C,); state: {"mean": (C,), "var": (C,)}.
    train=True: batch statistics (mu, biased var); state updated in place (see module docstring).
    train=False: mu, var = state["mean"], state["var"]; state untouched.
    relu=True: the "+ beta" and the ReLU that follows batch norm in the paper's ...BR layers run
    as one pass (kernels/bias_relu.py).
    Returns y (shape of x) and the cache (xc = x - mu as (M, C), inv_std (C,), gamma, x.shape,
    train, y as (M, C) if relu else None).
    """
    xp = get_array_module(x)
    x_rows = _rows(x)  # (M, C)
    M = x_rows.shape[0]
    if train:
        mu = x_rows.mean(axis=0)  # (C,)   pass 1
        xc = x_rows - mu  # (M, C)
        var = xp.einsum("mc,mc->c", xc, xc) / M  # (C,)   pass 2: biased variance, no cancellation
        # running statistics, in place (the arrays are shared with the model's state dict)
        state["mean"] *= 1.0 - momentum
        state["mean"] += momentum * mu
        state["var"] *= 1.0 - momentum
        state["var"] += (momentum * M / max(M - 1, 1)) * var  # unbiased
    else:
        xc = x_rows - state["mean"]  # (M, C)
        var = state["var"]
    inv_std = 1.0 / (var + eps) ** 0.5  # (C,)
    y_rows = xc * (gamma * inv_std)  # (M, C) = gamma * xhat
    if relu:
        y_rows = xp.ascontiguousarray(y_rows)  # (a no-op unless x was an odd view)
        bias_relu_forward(y_rows, beta)  # y_rows <- max(y_rows + beta, 0), in place
    else:
        y_rows += beta
    return _unrows(y_rows, x.shape), (xc, inv_std, gamma, x.shape, train, y_rows if relu else None)


def batchnorm_backward(dy, cache):
    """Closed form, per channel, with xhat = xc * inv_std, dbeta = sum_m dy_m, dgamma = sum_m dy_m xhat_m (C,):

    train:  dx = gamma * inv_std * (dy - dbeta / M - xhat * dgamma / M)     (shape of x)
    eval:   dx = gamma * inv_std * dy          (mu, var are constants)

    With the fused ReLU, dy is first masked: dy <- dy * [y > 0].
    dy: shape of x. Returns (dx, {"gamma": dgamma, "beta": dbeta}).
    """
    xp = get_array_module(dy)
    xc, inv_std, gamma, shape, train, y_relu = cache
    dy_rows = _rows(dy)  # (M, C)
    M = dy_rows.shape[0]
    if y_relu is not None:
        dy_rows, dbeta = bias_relu_backward(dy_rows, y_relu)  # dy [y > 0] and its column sums, one pass
    else:
        dbeta = dy_rows.sum(axis=0)  # (C,)
    dgamma = xp.einsum("mc,mc->c", dy_rows, xc) * inv_std  # (C,) = sum_m dy_m xhat_m
    scale = gamma * inv_std  # (C,)
    if train:
        # the batch statistics depend on x: remove from dy its mean and its projection on xhat
        dx_rows = xc * (-inv_std * dgamma / M)  # (M, C) = -xhat dgamma / M
        dx_rows += dy_rows
        dx_rows -= dbeta / M
        dx_rows *= scale
    else:
        dx_rows = dy_rows * scale  # (M, C)
    return _unrows(dx_rows, shape), {"gamma": dgamma, "beta": dbeta}
