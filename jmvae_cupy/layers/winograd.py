"""The paper's 4x4, stride-2, pad-1 convolution by Winograd's minimal filtering F(2x2, 2x2).

Two steps turn the strided convolution into one Winograd can do (docs/derivations/winograd.md):

1. **Sub-pixel view.**  With xpad = x zero-padded by 1 and the space-to-depth image
   S[n, i, j, (r, q, b)] = xpad[n, 2i + r, 2j + q, b] (4B channels), the kernel taps
   (kh, kw) = (2a' + r, 2b' + q) split the same way, and

       y[n, oh, ow, a] = sum_{a', b' in {0, 1}} sum_{(r,q,b)} S[n, oh + a', ow + b', (r,q,b)] W'[a', b'][(r,q,b), a]

   with W'[a', b'][(r, q, b), a] = W[a, b, 2a' + r, 2b' + q]: a 2x2, stride-1 correlation of S.
2. **F(2, 2) along each axis.**  Two outputs of a 2-tap correlation from 3 inputs d0, d1, d2 and
   taps g0, g1 take 3 products instead of 4:

       m0 = (d0 - d1) g0,   m1 = d1 (g0 + g1),   m2 = (d2 - d1) g1;   y0 = m0 + m1,  y1 = m1 + m2

   i.e. y = A^T [(G g) * (B^T d)] with B^T d = (d0 - d1, d1, d2 - d1), G g = (g0, g0 + g1, g1),
   A^T m = (m0 + m1, m1 + m2).  In 2-D, per tile of 2x2 outputs: 9 products instead of 16, and
   the products summed over the channels are 9 GEMMs:

       V = B^T d B  (9, T, 4B)     U = G g G^T  (9, 4B, A)     M = V @ U  (9, T, A)     y = A^T M A

   (T = N * OH/2 * OW/2 tiles).  The GEMMs do 9/16 of the work of the im2col GEMM (K = 16B).

The three products of a convolution layer (the transforms are linear, so each adjoint is the
transposed transform; kernels/winograd.py has the data transforms, this module the weights):

    forward        y  = A^T (V @ U) A                      correlate
    input grad     dx = B (dM @ U^T) B^T,  dM = A dy A^T   correlate_transpose
    weight grad    dW = G^T (V^T @ dM) G                    weight_grad

A transposed convolution (deconv.py) is the same three with the roles of x and y exchanged.
Exact in exact arithmetic; in floating point the sums run in another order than im2col's, so the
two agree to rounding (the tests: 1e-12 relative in float64).  Shapes channels-last, as conv.py.
Checked by tests/layers/test_winograd.py.
"""

from __future__ import annotations

from ..backend import get_array_module
from ..kernels.winograd import wino_input, wino_input_adj, wino_output, wino_output_adj

# The method "auto" picks Winograd for a correlation whose input and output both have at least
# MIN_CHANNELS channels and whose input is at least MIN_SIDE on both sides.  Measured on a CPU
# (python bench/micro.py winograd: N = 64, 1 thread, forward + both gradients): the RGB layers
# (3 channels: 9 GEMMs with K or N = 12) and the 8x8 layer (T = 256 tiles: 9 small GEMMs) are
# faster with im2col; the 32x32 and 16x16 layers are faster with Winograd.
MIN_CHANNELS = 16
MIN_SIDE = 16


def applies(h: int, w: int, kh: int, kw: int, stride, pad) -> bool:
    """Whether a correlation of an h x w input with this geometry can run as F(2x2, 2x2): a 4x4
    kernel, stride 2, padding 1, both sides multiples of 4 (an even number of 2x2 output tiles)."""
    return (kh, kw) == (4, 4) and tuple(stride) == (2, 2) and tuple(pad) == (1, 1) and h % 4 == 0 and w % 4 == 0 \
        and h >= 4 and w >= 4


def pays(h: int, w: int, b_channels: int, a_channels: int) -> bool:
    """The "auto" rule (see MIN_CHANNELS): an h x w correlation input, B input and A output channels."""
    return min(b_channels, a_channels) >= MIN_CHANNELS and min(h, w) >= MIN_SIDE


def weight_transform(W):
    """U = G g G^T (9, 4B, A) from a kernel W (A, B, 4, 4) (a conv's (C_out, C_in, ...), a deconv's
    (C_in, C_out, ...)): row (r, q, b) of U[3 alpha + beta] transforms the taps (2a' + r, 2b' + q)."""
    xp = get_array_module(W)
    A, B = W.shape[:2]
    Wp = W.reshape(A, B, 2, 2, 2, 2).transpose(2, 4, 3, 5, 1, 0)  # [a', b', r, q, b, a]
    U = xp.empty((3, 3, 2, 2, B, A), dtype=W.dtype)
    rows = (Wp[0], Wp[0] + Wp[1], Wp[1])  # G along a': (g0, g0 + g1, g1), each [b', r, q, b, a]
    for al in range(3):
        U[al, 0] = rows[al][0]
        U[al, 1] = rows[al][0] + rows[al][1]
        U[al, 2] = rows[al][1]
    return U.reshape(9, 4 * B, A)


def weight_transform_adj(dU, W_shape):
    """dW (A, B, 4, 4) from dU (9, 4B, A): the adjoint G^T dU G (g0 <- u0 + u1, g1 <- u1 + u2)."""
    A, B = W_shape[:2]
    t = dU.reshape(3, 3, 2, 2, B, A)
    cols = (t[:, 0] + t[:, 1], t[:, 1] + t[:, 2])  # along beta -> b' = 0, 1: each [alpha, r, q, b, a]
    xp = get_array_module(dU)
    dWp = xp.empty((2, 2, 2, 2, B, A), dtype=dU.dtype)  # [a', b', r, q, b, a]
    for bp in range(2):
        dWp[0, bp] = cols[bp][0] + cols[bp][1]
        dWp[1, bp] = cols[bp][1] + cols[bp][2]
    return xp.ascontiguousarray(dWp.transpose(5, 4, 0, 2, 1, 3).reshape(A, B, 4, 4))


def correlate(x, U):
    """The forward product: x (N, H, W, B) (a view is fine), U (9, 4B, A) -> y (N, H/2, W/2, A)
    (C-contiguous) and V (9, T, 4B), which the weight gradient needs."""
    N, H, W = x.shape[:3]
    V = wino_input(x)
    return wino_output(V @ U, N, H // 2, W // 2), V


def correlate_transpose(dM, U, n: int, h: int, w: int):
    """The adjoint with respect to x: dM (9, T, A) = wino_output_adj(dy) -> dx (n, h, w, B)."""
    return wino_input_adj(dM @ U.transpose(0, 2, 1), n, h, w)


def weight_grad(V, dM, W_shape):
    """The adjoint with respect to W: V (9, T, 4B), dM (9, T, A) -> dW (A, B, 4, 4)."""
    return weight_transform_adj(V.transpose(0, 2, 1) @ dM, W_shape)


__all__ = ["applies", "pays", "weight_transform", "weight_transform_adj", "correlate", "correlate_transpose",
           "weight_grad", "wino_output_adj"]
