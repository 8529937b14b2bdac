"""Networks built from the paper's notation, e.g. "D512R-D512R" or "C64R-C128BR-F-D1024R".

Tokens (joined by '-'), after the appendix of the paper:

===========  ==================================================================================
``DkR``      dense, k units, then ReLU          (``Dk``: no activation)
``DkBR``     dense, batch norm, ReLU            (``DkB``: no activation)
``CkBR``     conv 4x4 stride 2 pad 1, k channels, batch norm, ReLU   (``CkR``, ``Ck``, ``CkB``)
``DCkBR``    transposed conv 4x4 stride 2 crop 1, k channels, batch norm, ReLU   (``DCk``, ...)
``F``        flatten (N, C, H, W) -> (N, C*H*W)
``CxHxW``    reshape (N, C*H*W) -> (N, C, H, W), e.g. ``256x4x4``
===========  ==================================================================================

Rules that make the appendix's strings build exactly as printed:

* **Implicit reshape.** A ``DC`` token that follows a flat layer of n units (a ``D`` or ``F``
  token, or a flat network input) reshapes to (n/16, 4, 4) first, the paper's
  "D4096R, reshape 256x4x4, DC256BR...": 4096 -> (256, 4, 4).  n not divisible by 16 is a
  :class:`NetSpecError`; write the shape token (e.g. ``"D4608R-512x3x3-DC256BR"``) for any other
  start.  A ``DC`` first in the string with an image-shaped input (C, H, W) needs no reshape.
* **No bias before batch norm.** In ``CkBR``, ``DCkBR`` and ``DkBR`` the conv / dense layer has
  no bias: batch norm subtracts the batch mean, so a bias there has zero gradient and no effect
  (Lasagne's ``batch_norm`` helper, which the paper's code used, removes it the same way).
  Layers not followed by ``B`` keep their bias.

A :class:`Net` is a list of layers; every layer is a forward/backward pair:

* ``layer.init(rng, in_shape, dtype, xp) -> (params, state, out_shape)`` (shapes exclude N)
* ``layer.forward(params, state, x, train) -> (y, cache)``
* ``layer.backward(dy, cache) -> (dx, grads)``  (grads has the keys of params)
* optional: ``layer.param_grads(dy, cache) -> grads`` (no dx: used for a first layer whose
  input is data, ``Net.backward(..., need_dx=False)``), and ``layer.fuses_relu``: the layer
  runs a following ReLU itself when called as ``forward(..., relu=True)`` (one pass over the
  output instead of three; see :class:`Net`); its backward reads that from the cache.

``params`` are learned (Adam updates them); ``state`` is not (batch-norm running statistics,
updated in place during ``forward(..., train=True)``).  A Net stores neither: it names them
``"{index}.{key}"`` in flat dicts owned by the model.

Examples (the CelebA networks of the appendix)::

    Net("C64R-C128BR-C256BR-C256BR-F-D1024R", (3, 64, 64))     # q(z|x) trunk -> (1024,)
    Net("D4096R-DC256BR-DC128BR-DC64BR-DC3", 128)              # p(x|z): z -> (3, 64, 64)
    Net("C64R-C128BR-C256BR-C256BR-F-D1024R-D1", (3, 64, 64))  # GAN discriminator -> (1,)
"""

from __future__ import annotations

import re
from math import prod

from .backend import get_array_module
from .layers.activations import relu_backward, relu_forward
from .layers.batchnorm import batchnorm_backward, batchnorm_forward, batchnorm_init
from .layers.conv import conv2d_backward, conv2d_forward, conv2d_init, conv2d_param_grads
from .layers.deconv import deconv2d_backward, deconv2d_forward, deconv2d_init
from .layers.dense import (
    dense_backward,
    dense_forward,
    dense_init,
    dense_param_grads,
    dense_relu_backward,
    dense_relu_forward,
    dense_relu_param_grads,
)
from .layers.im2col import conv_outsize, deconv_outsize
from .layers.reshape import flatten_backward, flatten_forward, reshape_backward, reshape_forward

# The paper's conv / transposed-conv geometry: 4x4 kernels, stride 2, padding (crop) 1.
KSIZE, STRIDE, PAD = 4, 2, 1


class NetSpecError(ValueError):
    """A network string that does not parse, or does not fit its input shape."""


class Dense:
    """y = x W + b on (N, D_in) -> (N, D_out); ``bias=False``: y = x W (before batch norm)."""

    def __init__(self, units: int, bias: bool = True):
        self.units = units
        self.bias = bias

    @property
    def fuses_relu(self) -> bool:
        return self.bias  # the fused kernel adds the bias and applies the ReLU in one pass

    def init(self, rng, in_shape, dtype, xp):
        if len(in_shape) != 1:
            raise NetSpecError(f"D{self.units} needs a flat input, got shape {in_shape} (insert F)")
        params = dense_init(rng, in_shape[0], self.units, dtype, xp)
        if not self.bias:
            del params["b"]
        return params, {}, (self.units,)

    def forward(self, params, state, x, train, relu: bool = False):
        if relu:
            return dense_relu_forward(x, params["W"], params["b"])  # cache (x, W, y)
        if self.bias:
            return dense_forward(x, params["W"], params["b"])  # cache (x, W)
        return x @ params["W"], (x, params["W"])  # dense_forward without "+ b"

    def backward(self, dy, cache):
        if len(cache) == 3:  # (x, W, y): the fused Dense + ReLU
            return dense_relu_backward(dy, cache)
        dx, grads = dense_backward(dy, cache)
        if not self.bias:
            del grads["b"]
        return dx, grads

    def param_grads(self, dy, cache):
        """The parameter gradients only (no dx: the layer's input is data)."""
        if len(cache) == 3:  # the fused Dense + ReLU
            grads = dense_relu_param_grads(dy, cache)
            del grads["du"]
            return grads
        grads = dense_param_grads(dy, cache)
        if not self.bias:
            del grads["b"]
        return grads

    def __repr__(self):
        return f"Dense({self.units})" if self.bias else f"Dense({self.units}, bias=False)"


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


class _Strided:
    """What a conv and a transposed conv share: a 4x4 / stride 2 / pad 1 (by default) layer on
    (N, C_in, H, W) images, built from a token ``<token><channels>``.  Subclasses name the token,
    the output-size rule and the weight initialiser."""

    token = ""
    too_small = ""  # the message when the output would be empty

    def __init__(self, channels: int, ksize: int = KSIZE, stride: int = STRIDE, pad: int = PAD, bias=True):
        self.channels, self.ksize, self.stride, self.pad, self.bias = channels, ksize, stride, pad, bias

    def init(self, rng, in_shape, dtype, xp):
        if len(in_shape) != 3:
            raise NetSpecError(f"{self.token}{self.channels} needs an image input (C, H, W), got shape {in_shape}")
        c, h, w = in_shape
        k, s, p = self.ksize, self.stride, self.pad
        oh, ow = self.outsize(h, k, s, p), self.outsize(w, k, s, p)
        if oh < 1 or ow < 1:
            raise NetSpecError(f"{self.token}{self.channels}: " + self.too_small.format(k=k, p=p, h=h, w=w))
        params = self.init_params(rng, c, self.channels, k, k, dtype, xp, bias=self.bias)
        return params, {}, (self.channels, oh, ow)

    def __repr__(self):
        return (f"{type(self).__name__}({self.channels}, ksize={self.ksize}, stride={self.stride}, "
                f"pad={self.pad}, bias={self.bias})")


class Conv2D(_Strided):
    """(N, C_in, H, W) -> (N, channels, OH, OW); W (channels, C_in, KH, KW), b (channels,)."""

    token = "C"
    too_small = "a {k}x{k} kernel does not fit a {h}x{w} input"
    outsize = staticmethod(conv_outsize)
    init_params = staticmethod(conv2d_init)

    @property
    def fuses_relu(self) -> bool:
        return self.bias

    def forward(self, params, state, x, train, relu: bool = False):
        return conv2d_forward(x, params["W"], params.get("b"), self.stride, self.pad, relu=relu)

    def backward(self, dy, cache):
        return conv2d_backward(dy, cache)

    def param_grads(self, dy, cache):
        """dW, db only (no dx: the input is data, e.g. the image of an encoder)."""
        return conv2d_param_grads(dy, cache)


class Deconv2D(_Strided):
    """(N, C_in, H, W) -> (N, channels, OH, OW); W (C_in, channels, KH, KW), b (channels,)."""

    token = "DC"
    too_small = "crop {p} leaves nothing of a {h}x{w} input"
    outsize = staticmethod(deconv_outsize)
    init_params = staticmethod(deconv2d_init)

    def forward(self, params, state, x, train):
        return deconv2d_forward(x, params["W"], params.get("b"), self.stride, self.pad)

    def backward(self, dy, cache):
        return deconv2d_backward(dy, cache)


class BatchNorm:
    """Batch norm over (N, C) or (N, C, H, W); params gamma, beta (C,); state mean, var (C,)."""

    def init(self, rng, in_shape, dtype, xp):
        if len(in_shape) not in (1, 3):
            raise NetSpecError(f"batch norm needs (C,) or (C, H, W) inputs, got shape {in_shape}")
        params, state = batchnorm_init(in_shape[0], dtype, xp)
        return params, state, tuple(in_shape)

    fuses_relu = True

    def forward(self, params, state, x, train, relu: bool = False):
        return batchnorm_forward(x, params["gamma"], params["beta"], state, train, relu=relu)

    def backward(self, dy, cache):
        return batchnorm_backward(dy, cache)

    def __repr__(self):
        return "BatchNorm()"


class Flatten:
    """(N, C, H, W) -> (N, C*H*W), C order."""

    def init(self, rng, in_shape, dtype, xp):
        return {}, {}, (prod(in_shape),)

    def forward(self, params, state, x, train):
        return flatten_forward(x)

    def backward(self, dy, cache):
        return flatten_backward(dy, cache), {}

    def __repr__(self):
        return "Flatten()"


class Reshape:
    """(N, D) -> (N, *shape).  ``shape=None`` is the implicit reshape before a DC token:
    (n,) -> (n/16, 4, 4), and an image-shaped input (C, H, W) passes through unchanged."""

    def __init__(self, shape=None, before: str = "DC"):
        self.shape = None if shape is None else tuple(shape)
        self.before = before  # the token that asked for it, for error messages
        self.out_shape = self.shape

    def init(self, rng, in_shape, dtype, xp):
        in_shape = tuple(in_shape)
        if self.shape is not None:
            out = self.shape
            if prod(out) != prod(in_shape):
                raise NetSpecError(
                    f"reshape {'x'.join(map(str, out))} needs {prod(out)} inputs, got shape {in_shape}"
                )
        elif len(in_shape) == 3:
            out = in_shape
        elif len(in_shape) == 1 and in_shape[0] % 16 == 0:
            out = (in_shape[0] // 16, 4, 4)
        else:
            raise NetSpecError(
                f"{self.before} follows a flat layer of size {prod(in_shape)}, which is not a multiple of "
                f"16 = 4x4: write the shape explicitly, e.g. 'D4096R-256x4x4-{self.before}'"
            )
        self.out_shape = out
        return {}, {}, out

    def forward(self, params, state, x, train):
        return reshape_forward(x, self.out_shape)

    def backward(self, dy, cache):
        return reshape_backward(dy, cache), {}

    def __repr__(self):
        return f"Reshape({self.shape})"


_TOKEN = re.compile(r"^(DC|C|D)(\d+)(B?)(R?)$")
_SHAPE = re.compile(r"^(\d+)x(\d+)x(\d+)$")


def parse(spec: str) -> list:
    """The layers of a network string (see the module docstring)."""
    layers = []
    flat = None  # is the current output flat? True / False / None (the input's shape decides)
    for tok in spec.split("-"):
        tok = tok.strip()
        if tok == "F":
            layers.append(Flatten())
            flat = True
            continue
        m = _SHAPE.match(tok)
        if m is not None:
            shape = tuple(int(g) for g in m.groups())
            if min(shape) < 1:
                raise NetSpecError(f"token {tok!r} of network {spec!r}: sizes must be positive")
            layers.append(Reshape(shape))
            flat = False
            continue
        m = _TOKEN.match(tok)
        if m is None:
            raise NetSpecError(f"cannot parse token {tok!r} of network {spec!r}")
        kind, k, bn, relu = m.group(1), int(m.group(2)), bool(m.group(3)), bool(m.group(4))
        if k < 1:
            raise NetSpecError(f"token {tok!r} of network {spec!r}: sizes must be positive")
        if kind == "D":
            layers.append(Dense(k, bias=not bn))
            flat = True
        elif kind == "C":
            layers.append(Conv2D(k, bias=not bn))
            flat = False
        else:  # "DC"
            if flat is not False:
                layers.append(Reshape(None, before=tok))  # implicit (n,) -> (n/16, 4, 4)
            layers.append(Deconv2D(k, bias=not bn))
            flat = False
        if bn:
            layers.append(BatchNorm())
        if relu:
            layers.append(ReLU())
    return layers


class Net:
    """A stack of layers built from ``spec`` for inputs of shape (N, *in_shape).

    A layer with ``fuses_relu`` followed by a ReLU (D512R, C64R, and the batch norm of every
    ...BR token) runs the pair as one step, ``forward(..., relu=True)``: the bias (or beta) and
    the ReLU in one pass over the output (kernels/bias_relu.py).  The layers stay two, so layer
    indices and parameter names do not change; the pair's cache sits at the first index, None at
    the ReLU's.  ``self.fused`` holds the first indices; set it to ``frozenset()`` to run every
    layer on its own (the tests compare the two).
    """

    def __init__(self, spec: str, in_shape):
        self.spec = spec
        self.layers = parse(spec)
        self.in_shape = tuple(in_shape) if not isinstance(in_shape, int) else (in_shape,)
        self.out_shape = None
        self.fused = frozenset(
            i
            for i in range(len(self.layers) - 1)
            if getattr(self.layers[i], "fuses_relu", False) and type(self.layers[i + 1]) is ReLU
        )

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
        return {k[len(prefix) :]: v for k, v in d.items() if k.startswith(prefix)}

    def forward(self, params, state, x, train=True):
        """x (N, *in_shape) -> y (N, *out_shape), C-ordered; caches for backward.

        train=True: batch norm uses batch statistics and updates ``state`` in place;
        train=False: batch norm uses the running statistics in ``state``.
        """
        caches = []
        for i, layer in enumerate(self.layers):
            if i - 1 in self.fused:  # the ReLU of a fused pair: done by the layer before it
                caches.append(None)
                continue
            p, s = self._sub(params, i), self._sub(state, i)
            if i in self.fused:
                x, c = layer.forward(p, s, x, train, relu=True)
            else:
                x, c = layer.forward(p, s, x, train)
            caches.append(c)
        # conv layers hand on channels-last views; give the caller plain C-ordered arrays
        return get_array_module(x).ascontiguousarray(x), caches

    def backward(self, dy, caches, need_dx: bool = True):
        """dy (N, *out_shape) -> dx (N, *in_shape) (C-ordered), grads keyed like params.

        need_dx=False: the caller discards dx (the input is data), so a first layer that can
        (one with ``param_grads``: Dense, Conv2D) skips its input gradient; dx may then be None.
        """
        grads = {}
        xp = get_array_module(dy)
        for i in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[i]
            if i - 1 in self.fused:  # the ReLU of a fused pair: its first layer does both
                continue
            if i == 0 and not need_dx and hasattr(layer, "param_grads"):
                dy, g = None, layer.param_grads(dy, caches[i])
            else:
                dy, g = layer.backward(dy, caches[i])
            grads.update({f"{i}.{k}": v for k, v in g.items()})
        return (None if dy is None else xp.ascontiguousarray(dy)), grads

    def __repr__(self):
        return f"Net({self.spec!r}, in_shape={self.in_shape})"
