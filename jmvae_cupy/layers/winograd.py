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

   (U is stored transposed, Ut (9, A, 4B), output channel first as in W; BLAS reads it transposed.)

   (T = N * OH/2 * OW/2 tiles).  The GEMMs do 9/16 of the work of the im2col GEMM (K = 16B).

The three products of a convolution layer (the transforms are linear, so each adjoint is the
transposed transform; kernels/winograd.py has the data transforms, this module the weights):

    forward        y  = A^T (V @ U) A                      correlate
    input grad     dx = B (dM @ U^T) B^T,  dM = A dy A^T   correlate_transpose
    weight grad    dW = G^T (dM^T @ V)^T G                  weight_grad

A transposed convolution (deconv.py) is the same three with the roles of x and y exchanged.
Exact in exact arithmetic; in floating point the sums run in another order than im2col's, so the
two agree to rounding (the tests: 1e-12 relative in float64).  Shapes channels-last, as conv.py.
Checked by tests/layers/test_winograd.py.
"""

from __future__ import annotations

from ..kernels.winograd import (
    wino_input,
    wino_input_adj,
    wino_output,
    wino_output_adj,
    wino_weight,
    wino_weight_adj,
)

# The method "auto" picks Winograd for a correlation whose input and output both have at least
# MIN_CHANNELS channels and whose input is at least MIN_SIDE on both sides.  Measured on a CPU
# (python bench/micro.py winograd: N = 64, forward + both gradients): the RGB layers (3 channels:
# 9 GEMMs with K or N = 12) are faster with im2col; the 32x32, 16x16 and 8x8 layers with
# Winograd (0.67 / 0.69 / 0.70x the time with 1 thread, 0.72 / 0.77 / 0.74x with 2: the table in
# docs/performance.md).  A 4x4 input (one tile per image) was not measured, so it keeps im2col.
MIN_CHANNELS = 16
MIN_SIDE = 8


def applies(h: int, w: int, kh: int, kw: int, stride, pad) -> bool:
    """Whether a correlation of an h x w input with this geometry can run as F(2x2, 2x2): a 4x4
    kernel, stride 2, padding 1, both sides multiples of 4 (an even number of 2x2 output tiles)."""
    return (kh, kw) == (4, 4) and tuple(stride) == (2, 2) and tuple(pad) == (1, 1) and h % 4 == 0 and w % 4 == 0 \
        and h >= 4 and w >= 4


def pays(h: int, w: int, b_channels: int, a_channels: int) -> bool:
    """The "auto" rule (see MIN_CHANNELS): an h x w correlation input, B input and A output channels."""
    return min(b_channels, a_channels) >= MIN_CHANNELS and min(h, w) >= MIN_SIDE


# The kernel: Ut = (G g G^T)^T (9, A, 4B) from W (A, B, 4, 4) -- a conv's (C_out, C_in, ...), a
# deconv's (C_in, C_out, ...) --, stored transposed (output channel first, as in W, so no pass
# moves it innermost; the GEMMs read it transposed).  Its adjoint dW = G^T dU G is weight_grad's
# last step.  One parallel pass each (kernels/winograd.py, where their adjointness is tested).
weight_transform = wino_weight


def correlate(x, Ut):
    """The forward product: x (N, H, W, B) (a view is fine), Ut (9, A, 4B) -> y (N, H/2, W/2, A)
    (C-contiguous) and V (9, T, 4B), which the weight gradient needs.  M = V U."""
    N, H, W = x.shape[:3]
    V = wino_input(x)
    return wino_output(V @ Ut.transpose(0, 2, 1), N, H // 2, W // 2), V


def correlate_transpose(dM, Ut, n: int, h: int, w: int):
    """The adjoint with respect to x: dM (9, T, A) = wino_output_adj(dy) -> dx (n, h, w, B).  dV = dM U^T."""
    return wino_input_adj(dM @ Ut, n, h, w)


def weight_grad(V, dM, W_shape):
    """The adjoint with respect to W: V (9, T, 4B), dM (9, T, A) -> dW (A, B, 4, 4).  dU^T = dM^T V."""
    return wino_weight_adj(dM.transpose(0, 2, 1) @ V, W_shape)


__all__ = ["applies", "pays", "weight_transform", "correlate", "correlate_transpose",
           "weight_grad", "wino_output_adj"]
