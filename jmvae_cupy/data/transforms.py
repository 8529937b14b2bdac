"""Turn grey levels and labels into the two JMVAE modalities: binary images x, one-hot labels w.

All host NumPy: the training loop moves a batch to the device after these functions.
"""

from __future__ import annotations

import numpy as np

from .errors import DataError

_CHUNK = 1 << 20  # pixels per draw in binarize (8 MiB of float64 uniforms)


def binarize(grey, rng, dtype=np.float32) -> np.ndarray:
    """Sample binary images: x_ij ~ Bernoulli(grey_ij / 255), independently per pixel.

    The paper resamples the binary training images every epoch (against over-fitting); call this
    on each training batch with the training ``Rng``.  The draw is ``u ~ U[0, 1)`` from
    ``rng.uniform`` in float64 and ``x = 1`` where ``255 u < grey``, so P(x = 1) = grey / 255
    exactly up to float64 rounding: grey 0 always gives 0 and grey 255 always gives 1.

    Args:
        grey: uint8 array of any shape, e.g. (N, 784) grey levels 0..255.
        rng: a :class:`jmvae_cupy.rng.Rng`; consumes ``grey.size`` uniform draws (C order), so
            binarising a whole array or its consecutive row blocks gives the same result.
        dtype: dtype of the result (float32 for training, float64 for checks).

    Returns:
        array of ``grey.shape`` and ``dtype`` with values in {0, 1}.

    Raises:
        DataError: ``grey`` is not uint8 (grey levels must be the raw 0..255 values).
    """
    grey = np.asarray(grey)
    if grey.dtype != np.uint8:
        raise DataError(f"binarize expects uint8 grey levels 0..255, got dtype {grey.dtype}")
    # Draw in pieces of at most _CHUNK pixels: the float64 uniforms of a whole training set
    # (50,000 x 784 x 8 bytes = 314 MB) are never alive at once.  Consecutive draws from one
    # stream give the same numbers as a single draw, so the result does not depend on _CHUNK.
    flat = grey.reshape(-1)
    out = np.empty(flat.shape, dtype=dtype)
    for start in range(0, flat.size, _CHUNK):
        g = flat[start : start + _CHUNK]
        out[start : start + g.size] = rng.uniform(g.shape, dtype=np.float64) * 255.0 < g
    return out.reshape(grey.shape)


def one_hot(labels, num_classes: int = 10, dtype=np.float32) -> np.ndarray:
    """One-hot encode integer labels: (N,) ints in [0, K) -> (N, K) with a single 1 per row.

    Raises:
        DataError: labels not integers, or outside ``0 .. num_classes - 1``.
    """
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise DataError(f"one_hot expects integer labels, got dtype {labels.dtype}")
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise DataError(
            f"one_hot: labels span {int(labels.min())}..{int(labels.max())}, outside 0..{num_classes - 1}"
        )
    out = np.zeros(labels.shape + (num_classes,), dtype=dtype)
    np.put_along_axis(out, labels[..., None].astype(np.intp), 1, axis=-1)
    return out
