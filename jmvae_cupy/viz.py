"""PNG output: image grids (generated digits, faces), written atomically (plots: jmvae_cupy/plots.py)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

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


HEADER_PX = 16  # height of the strip of column labels


def save_grid(images, path: str, scale: int = 2, col_labels=None, pad: int = 2) -> None:
    """Write ``images`` (see :func:`image_grid`) as a PNG, enlarged ``scale`` times; ``col_labels``
    (C strings, e.g. the digits 0-9 or attribute names) are written in a strip above their columns."""
    images = np.asarray(images)
    if col_labels is not None and len(col_labels) != images.shape[1]:
        raise ValueError(f"{len(col_labels)} column labels for {images.shape[1]} columns")
    pic = Image.fromarray(image_grid(images, pad=pad))
    if scale != 1:
        pic = pic.resize((pic.width * scale, pic.height * scale), Image.NEAREST)
    if col_labels is not None:
        pic = with_column_labels(pic, list(col_labels), images.shape[-1], pad, scale)
    atomic_save_png(pic, path)


def with_column_labels(pic: Image.Image, labels: list, width: int, pad: int, scale: int) -> Image.Image:
    """``pic`` under a white strip of HEADER_PX * scale pixels holding ``labels[c]`` centred over column c
    (columns ``width`` pixels wide, ``pad`` apart, before the enlargement by ``scale``); a label wider
    than its column is cut to fit."""

    font = ImageFont.load_default(size=11 * scale)
    h = HEADER_PX * scale
    out = Image.new(pic.mode, (pic.width, pic.height + h), "white")
    out.paste(pic, (0, h))
    draw = ImageDraw.Draw(out)
    cell = (width + pad) * scale
    for c, text in enumerate(labels):
        text = str(text)
        while len(text) > 1 and draw.textlength(text, font=font) > cell:
            text = text[:-1]
        draw.text((pad * scale + c * cell + width * scale / 2, h / 2), text, fill="black", font=font, anchor="mm")
    return out


# ------------------------------------------------------------------------------ plots (Pillow only)
