"""PNG output: image grids (generated digits, faces) and simple line plots, written atomically."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from .fsutil import temp_beside


def atomic_save_png(img: Image.Image, path: str) -> None:
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = temp_beside(d, prefix=".tmp-", suffix=".png")
    os.close(fd)
    try:
        img.save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def _frame(size, title, xlabel, ylabel, xlim, ylim, margin=(60, 30, 20, 40)):
    """A white canvas with axes, tick labels and titles; returns (img, draw, to_pixel)."""
    from PIL import ImageDraw  # noqa: PLC0415

    W, H = size
    left, top, right, bottom = margin
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    (x0, x1), (y0, y1) = xlim, ylim
    x1 = x1 if x1 > x0 else x0 + 1.0
    y1 = y1 if y1 > y0 else y0 + 1.0

    def px(x, y):
        return (left + (x - x0) / (x1 - x0) * (W - left - right),
                H - bottom - (y - y0) / (y1 - y0) * (H - top - bottom))
    d.rectangle([left, top, W - right, H - bottom], outline="black")
    for i in range(5):
        xv, yv = x0 + (x1 - x0) * i / 4, y0 + (y1 - y0) * i / 4
        X, _ = px(xv, y0)
        _, Y = px(x0, yv)
        d.line([X, H - bottom, X, H - bottom + 4], fill="black")
        d.text((X - 12, H - bottom + 6), f"{xv:.3g}", fill="black")
        d.line([left - 4, Y, left, Y], fill="black")
        d.text((2, Y - 6), f"{yv:.4g}", fill="black")
    d.text((left, 8), title, fill="black")
    d.text(((W - len(xlabel) * 6) // 2, H - 14), xlabel, fill="black")
    d.text((left + 4, top + 2), ylabel, fill=(90, 90, 90))
    return img, d, px


def save_line_plot(series: dict, path: str, title: str = "", xlabel: str = "", ylabel: str = "",
                   size=(480, 320)) -> None:
    """Lines with markers: ``series`` maps a legend name to (xs, ys); one colour per series."""
    xs = [float(v) for s in series.values() for v in s[0]]
    ys = [float(v) for s in series.values() for v in s[1]]
    pad = 0.05 * ((max(ys) - min(ys)) or 1.0)
    img, d, px = _frame(size, title, xlabel, ylabel, (min(xs), max(xs)), (min(ys) - pad, max(ys) + pad))
    for i, (name, (sx, sy)) in enumerate(series.items()):
        col = PALETTE[i % len(PALETTE)]
        pts = [px(float(a), float(b)) for a, b in zip(sx, sy)]
        if len(pts) > 1:
            d.line(pts, fill=col, width=2)
        for X, Y in pts:
            d.ellipse([X - 2, Y - 2, X + 2, Y + 2], fill=col)
        d.text((size[0] - 150, 34 + 12 * i), f"- {name}", fill=col)
    atomic_save_png(img, path)


def save_scatter(points, labels, path: str, title: str = "", size=(400, 400)) -> None:
    """2-D points (N, 2) coloured by integer label (0-9), with a legend of the labels."""
    p = np.asarray(points, dtype=np.float64)
    lab = np.asarray(labels).astype(int)
    lo, hi = np.percentile(p, 0.5, axis=0), np.percentile(p, 99.5, axis=0)
    img, d, px = _frame(size, title, "z[0]", "z[1]", (lo[0], hi[0]), (lo[1], hi[1]))
    for (a, b), k in zip(p, lab):
        if lo[0] <= a <= hi[0] and lo[1] <= b <= hi[1]:
            X, Y = px(a, b)
            d.point([(X, Y), (X + 1, Y), (X, Y + 1), (X + 1, Y + 1)], fill=PALETTE[k % 10])
    for k in range(10):
        d.text((size[0] - 16, 34 + 12 * k), str(k), fill=PALETTE[k])
    atomic_save_png(img, path)
