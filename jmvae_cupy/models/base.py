"""Building blocks shared by every model: parameter bookkeeping, Gaussian heads, encoders.

A model owns two flat dicts, ``params`` (learned; Adam updates them) and ``state`` (batch-norm
running statistics), keyed ``"<component>.<layer index>.<name>"``, e.g. ``"qxw.x.0.W"``.
Components are :class:`jmvae_cupy.nets.Net` objects; a component's forward reads its slice of
``params`` on every call, so a user who sets ``model.params[name] = array`` is heard at once.
"""

from __future__ import annotations

from ..backend import get_array_module
from ..distributions import gaussian_var_backward, gaussian_var_forward
from ..layers.dense import dense_backward, dense_forward, dense_init
from ..nets import Net


class ModelError(ValueError):
    """A model built or called with inconsistent arguments."""


def _slice(d: dict, prefix: str) -> dict:
    """The entries of ``d`` under ``prefix + '.'``, with the prefix removed."""
    p = prefix + "."
    return {k[len(p):]: v for k, v in d.items() if k.startswith(p)}


def add_grads(grads: dict, prefix: str, g: dict) -> None:
    """grads[prefix.k] += g[k] (accumulate: a parameter may receive gradient from several terms)."""
    for k, v in g.items():
        key = f"{prefix}.{k}"
        if key in grads:
            grads[key] = grads[key] + v
        else:
            grads[key] = v


class Params:
    """Mixin: registration of components and their parameters into ``self.params``/``self.state``."""

    def _register_net(self, name: str, spec: str, in_shape) -> Net:
        net = Net(spec, in_shape)
        p, s = net.init(self.init_rng, self.dtype, self.xp)
        self.params.update({f"{name}.{k}": v for k, v in p.items()})
        self.state.update({f"{name}.{k}": v for k, v in s.items()})
        self.components[name] = net
        return net

    def _register_head(self, name: str, d_in: int, d_z: int) -> GaussianHead:
        head = GaussianHead(d_in, d_z)
        p = head.init(self.init_rng, self.dtype, self.xp)
        self.params.update({f"{name}.{k}": v for k, v in p.items()})
        self.components[name] = head
        return head

    def run(self, name: str, x, train: bool = True):
        """Forward of component ``name`` on x: (y, cache)."""
        return self.components[name].forward(_slice(self.params, name), _slice(self.state, name), x, train)

    def run_back(self, name: str, dy, cache, grads: dict, need_dx: bool = True):
        """Backward of component ``name``: accumulates its parameter gradients into ``grads``; returns dx.

        need_dx=False (a :class:`Net` whose input is data): dx is not wanted and may be None."""
        comp = self.components[name]
        dx, g = comp.backward(dy, cache) if need_dx else comp.backward(dy, cache, need_dx=False)
        add_grads(grads, name, g)
        return dx


class GaussianHead:
    """The paper's Gaussian head on features h (N, D_in):  mu = h W_mu + b_mu,  var = softplus(h W_v + b_v).

    Both heads are one fused dense layer of 2*D_z outputs: columns [:D_z] are mu, [D_z:] the
    pre-activation a of the variance (one GEMM instead of two).  Params: W (D_in, 2 D_z), b (2 D_z,).
    """

    def __init__(self, d_in: int, d_z: int):
        self.d_in, self.d_z = d_in, d_z

    def init(self, rng, dtype, xp):
        return dense_init(rng, self.d_in, 2 * self.d_z, dtype, xp)

    def forward(self, params, state, h, train=True):
        """h (N, D_in) -> (mu (N, D_z), var (N, D_z)), cache."""
        out, dcache = dense_forward(h, params["W"], params["b"])
        mu, a = out[:, : self.d_z], out[:, self.d_z:]
        var, vcache = gaussian_var_forward(a)
        return (mu, var), (dcache, vcache)

    def backward(self, dout, cache):
        """(dmu, dvar) -> dh (N, D_in), {"W", "b"};  da = dvar * sigmoid(a), then the dense backward."""
        dmu, dvar = dout
        dcache, vcache = cache
        xp = get_array_module(dmu)
        dpre = xp.concatenate([dmu, gaussian_var_backward(dvar, vcache)], axis=1)
        return dense_backward(dpre, dcache)


def zeros_like_or(a, ref):
    """``a`` if not None, else zeros shaped like ``ref`` (a gradient that received nothing)."""
    if a is not None:
        return a
    return get_array_module(ref).zeros_like(ref)
