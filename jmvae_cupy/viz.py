"""PNG output: image grids (generated digits, faces), written atomically (plots: jmvae_cupy/plots.py)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from .fsutil import replacing


def atomic_save_png(img: Image.Image, path: str) -> None:
    with replacing(path, suffix=".png") as f:
        img.save(f, format="PNG")


def image_grid(images, pad: int = 2, pad_value: float = 0.5) -> np.ndarray:
    """images (R, C, H, W) or (R, C, 3, H, W) in [0, 1] -> one uint8 picture (R*H, C*W[, 3]) with padding."""
    images = np.clip(np.asarray(images, dtype=np.float64), 0.0, 1.0)
    color = images.ndim == 5
    if color and images.shape[2] != 3:
        raise ValueError(f"colour images must be (R, C, 3, H, W), got {images.shape}")
    if color:
        images = images.transpose(0, 1, 3, 4, 2)  # (R, C, H, W, 3)
    R, C, H, W = images.shape[:4]
    shape = (R * (H + pad) + pad, C * (W + pad) + pad) + ((3,) if color else ())
    out = np.full(shape, pad_value)
    for r in range(R):
        for c in range(C):
            y, x = pad + r * (H + pad), pad + c * (W + pad)
            out[y:y + H, x:x + W] = images[r, c]
    return (out * 255 + 0.5).astype(np.uint8)


def save_grid(images, path: str, scale: int = 2) -> None:
    """Write ``images`` (see :func:`image_grid`) as a PNG, enlarged ``scale`` times."""
    pic = Image.fromarray(image_grid(images))
    if scale != 1:
        pic = pic.resize((pic.width * scale, pic.height * scale), Image.NEAREST)
    atomic_save_png(pic, path)


# ------------------------------------------------------------------------------ plots (Pillow only)
