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
from ..kernels import batchnorm as bn_kernels
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
    The passes run fused (:func:`train_forward`: kernels/batchnorm.py's multi-threaded Numba passes
    on NumPy, the plain-xp :func:`bn_train_forward_xp` on CuPy), "+ beta" and the ReLU of the
    paper's ...BR layers included.
    train=False: mu, var = state["mean"], state["var"]; state untouched.
    Returns y (shape of x) and the cache (x as (M, C) rows, mu (C,), inv_std (C,), gamma, x.shape,
    train, y as (M, C) rows if relu else None).
    """
    xp = get_array_module(x)
    x_rows = xp.ascontiguousarray(_rows(x))  # (M, C); a no-op for a conv output (channels-last in memory)
    M = x_rows.shape[0]
    if train:
        y_rows, mu, var, inv_std = train_forward(x_rows, gamma, beta, eps, relu)
        # running statistics, in place (the arrays are shared with the model's state dict)
        state["mean"] *= 1.0 - momentum
        state["mean"] += momentum * mu
        state["var"] *= 1.0 - momentum
        state["var"] += (momentum * M / max(M - 1, 1)) * var  # unbiased
    else:
        mu = state["mean"]
        inv_std = 1.0 / (state["var"] + eps) ** 0.5  # (C,)
        y_rows = (x_rows - mu) * (gamma * inv_std)  # (M, C) = gamma * xhat
        if relu:
            bias_relu_forward(y_rows, beta)  # y_rows <- max(y_rows + beta, 0), in place
        else:
            y_rows += beta
    return _unrows(y_rows, x.shape), (x_rows, mu, inv_std, gamma, x.shape, train, y_rows if relu else None)


def batchnorm_backward(dy, cache):
    """Closed form, per channel, with xhat = (x - mu) inv_std, dbeta = sum_m dy_m, dgamma = sum_m dy_m xhat_m (C,):

    train:  dx = gamma * inv_std * (dy - dbeta / M - xhat * dgamma / M)     (shape of x)
    eval:   dx = gamma * inv_std * dy          (mu, var are constants)

    With the fused ReLU, dy is first masked: dy <- dy * [y > 0].
    dy: shape of x. Returns (dx, {"gamma": dgamma, "beta": dbeta}).
    """
    xp = get_array_module(dy)
    x_rows, mu, inv_std, gamma, shape, train, y_relu = cache
    dy_rows = xp.ascontiguousarray(_rows(dy))  # (M, C)
    if train:
        dx_rows, dgamma, dbeta = train_backward(dy_rows, x_rows, y_relu, mu, inv_std, gamma, y_relu is not None)
    else:
        if y_relu is not None:
            dy_rows, dbeta = bias_relu_backward(dy_rows, y_relu)  # dy [y > 0] and its column sums, one pass
        else:
            dbeta = dy_rows.sum(axis=0)  # (C,)
        dgamma = xp.einsum("mc,mc->c", dy_rows, x_rows - mu) * inv_std  # (C,) = sum_m dy_m xhat_m
        dx_rows = dy_rows * (gamma * inv_std)  # (M, C)
    return _unrows(dx_rows, shape), {"gamma": dgamma, "beta": dbeta}


# --------------------------------------------------------------------------------------------
# The training-mode passes in plain xp (CuPy's path, the oracle of the fused CPU kernels)
# --------------------------------------------------------------------------------------------


def bn_train_forward_xp(x, gamma, beta, eps: float, relu: bool):
    """x (M, C); gamma, beta (C,).  Returns y (M, C) new, and mu, var (biased), inv_std (C,); the
    contract of kernels/batchnorm.bn_train_forward, in plain xp, sums in x's dtype."""
    xp = get_array_module(x)
    M = x.shape[0]
    mu = x.mean(axis=0)  # (C,)   pass 1
    y = xp.ascontiguousarray(x - mu)  # (M, C) = x - mu (C order for bias_relu_forward; no copy if x is)
    var = xp.einsum("mc,mc->c", y, y) / M  # (C,)   pass 2: biased variance, no cancellation
    inv_std = 1.0 / (var + eps) ** 0.5  # (C,)
    y *= gamma * inv_std  # gamma * xhat
    if relu:
        bias_relu_forward(y, beta)  # y <- max(y + beta, 0), in place
    else:
        y += beta
    return y, mu, var, inv_std


def bn_train_backward_xp(dy, x, y, mu, inv_std, gamma, relu: bool):
    """dy, x (M, C), y (M, C) (the ReLU's mask; any array when not relu); mu, inv_std, gamma (C,).
    Returns dx (M, C), dgamma (C,), dbeta (C,): the closed form of :func:`batchnorm_backward` (train),
    as kernels/batchnorm.bn_train_backward computes it in fused passes."""
    xp = get_array_module(x)
    M = x.shape[0]
    if relu:
        du, dbeta = bias_relu_backward(dy, y)  # dy [y > 0] and its column sums, one pass
    else:
        du, dbeta = dy, dy.sum(axis=0)
    xc = x - mu  # (M, C)
    dgamma = xp.einsum("mc,mc->c", du, xc) * inv_std  # (C,) = sum_m du_m xhat_m
    # the batch statistics depend on x: remove from du its mean and its projection on xhat
    dx = xc * (-inv_std * dgamma / M)  # (M, C) = -xhat dgamma / M
    dx += du
    dx -= dbeta / M
    dx *= gamma * inv_std
    return dx, dgamma, dbeta


def train_forward(x_rows, gamma, beta, eps: float, relu: bool):
    """The training-mode forward of rows x (M, C): the fused CPU kernels where they apply
    (kernels/batchnorm.py), else the plain-xp passes above (CuPy)."""
    if bn_kernels.applies(x_rows, gamma, beta):
        return bn_kernels.bn_train_forward(x_rows, gamma, beta, eps, relu)
    return bn_train_forward_xp(x_rows, gamma, beta, eps, relu)


def train_backward(dy, x, y, mu, inv_std, gamma, relu: bool):
    """The training-mode backward of rows (y: the ReLU's output, or None without relu), as :func:`train_forward`."""
    yy = y if y is not None else x  # (not read without relu)
    if relu and y is None:
        raise ValueError("batch norm backward: relu needs the forward's output y")
    if bn_kernels.applies(dy, x, yy, mu, inv_std, gamma):
        return bn_kernels.bn_train_backward(dy, x, y, mu, inv_std, gamma, relu)
    return bn_train_backward_xp(dy, x, yy, mu, inv_std, gamma, relu)
