"""Networks built from the paper's notation, e.g. "D512R-D512R" or "C64R-C128BR-F-D1024R".

Tokens (joined by '-'), after the appendix of the paper:

=========  ================================================================
``DkR``    dense, k units, then ReLU          (``Dk``: no activation)
``DkBR``   dense, batch norm, ReLU
``CkBR``   conv 4x4 stride 2 pad 1, k channels, batch norm, ReLU
``DCkBR``  transposed conv 4x4 stride 2 crop 1, k channels, batch norm, ReLU
``F``      flatten (N, C, H, W) -> (N, C*H*W)
=========  ================================================================

A :class:`Net` is a list of layers; every layer is a forward/backward pair:

* ``layer.init(rng, in_shape, dtype, xp) -> (params, state, out_shape)`` (shapes exclude N)
* ``layer.forward(params, state, x, train) -> (y, cache)``
* ``layer.backward(dy, cache) -> (dx, grads)``  (grads has the keys of params)

``params`` are learned (Adam updates them); ``state`` is not (batch-norm running statistics).
A Net stores neither: it names them ``"{index}.{key}"`` in flat dicts owned by the model.
"""

from __future__ import annotations

import re

from .layers.activations import relu_backward, relu_forward
from .layers.dense import dense_backward, dense_forward, dense_init


class NetSpecError(ValueError):
    """A network string that does not parse."""


class Dense:
    """y = x W + b on (N, D_in) -> (N, D_out)."""

    def __init__(self, units: int):
        self.units = units

    def init(self, rng, in_shape, dtype, xp):
        if len(in_shape) != 1:
            raise NetSpecError(f"D{self.units} needs a flat input, got shape {in_shape} (insert F)")
        return dense_init(rng, in_shape[0], self.units, dtype, xp), {}, (self.units,)

    def forward(self, params, state, x, train):
        return dense_forward(x, params["W"], params["b"])

    def backward(self, dy, cache):
        return dense_backward(dy, cache)

    def __repr__(self):
        return f"Dense({self.units})"


class ReLU:
    """y = max(x, 0), any shape."""

    def init(self, rng, in_shape, dtype, xp):
        return {}, {}, tuple(in_shape)

    def forward(self, params, state, x, train):
        return relu_forward(x)

    def backward(self, dy, cache):
        return relu_backward(dy, cache), {}

    def __repr__(self):
        return "ReLU()"


_TOKEN = re.compile(r"^(DC|C|D)(\d+)(B?)(R?)$")


def parse(spec: str) -> list:
    """The layers of a network string (see the module docstring)."""
    layers = []
    for tok in spec.split("-"):
        tok = tok.strip()
        m = _TOKEN.match(tok)
        if m is None:
            raise NetSpecError(f"cannot parse token {tok!r} of network {spec!r}")
        kind, k, bn, relu = m.group(1), int(m.group(2)), m.group(3), m.group(4)
        if kind != "D" or bn:
            raise NetSpecError(f"token {tok!r}: convolution and batch norm are not available yet")
        layers.append(Dense(k))
        if relu:
            layers.append(ReLU())
    return layers


class Net:
    """A stack of layers built from ``spec`` for inputs of shape (N, *in_shape)."""

    def __init__(self, spec: str, in_shape):
        self.spec = spec
        self.layers = parse(spec)
        self.in_shape = tuple(in_shape) if not isinstance(in_shape, int) else (in_shape,)
        self.out_shape = None

    def init(self, rng, dtype, xp):
        """Fresh parameters and state: two flat dicts keyed "{layer index}.{name}"."""
        params, state = {}, {}
        shape = self.in_shape
        for i, layer in enumerate(self.layers):
            p, s, shape = layer.init(rng, shape, dtype, xp)
            params.update({f"{i}.{k}": v for k, v in p.items()})
            state.update({f"{i}.{k}": v for k, v in s.items()})
        self.out_shape = shape
        return params, state

    @staticmethod
    def _sub(d, i):
        prefix = f"{i}."
        return {k[len(prefix):]: v for k, v in d.items() if k.startswith(prefix)}

    def forward(self, params, state, x, train=True):
        """x (N, *in_shape) -> y (N, *out_shape); caches for backward."""
        caches = []
        for i, layer in enumerate(self.layers):
            x, c = layer.forward(self._sub(params, i), self._sub(state, i), x, train)
            caches.append(c)
        return x, caches

    def backward(self, dy, caches):
        """dy (N, *out_shape) -> dx (N, *in_shape), grads keyed like params."""
        grads = {}
        for i in range(len(self.layers) - 1, -1, -1):
            dy, g = self.layers[i].backward(dy, caches[i])
            grads.update({f"{i}.{k}": v for k, v in g.items()})
        return dy, grads
