"""PNG grids: grey and colour layouts, clipping, atomic writes."""

import numpy as np
import pytest
from PIL import Image

from jmvae_cupy.viz import image_grid, save_grid


def test_grey_grid_layout():
    imgs = np.zeros((2, 3, 4, 5))
    imgs[1, 2] = 1.0
    g = image_grid(imgs, pad=1)
    assert g.shape == (2 * 5 + 1, 3 * 6 + 1) and g.dtype == np.uint8
    assert np.all(g[6:10, 13:18] == 255) and np.all(g[1:5, 1:6] == 0)


def test_colour_grid_layout_and_clipping():
    imgs = np.zeros((1, 2, 3, 4, 4))
    imgs[0, 1, 0] = 2.0  # red channel of the second image, clipped to 1
    g = image_grid(imgs, pad=1)
    assert g.shape == (6, 11, 3)
    assert np.all(g[1:5, 6:10, 0] == 255) and np.all(g[1:5, 6:10, 1:] == 0)
    with pytest.raises(ValueError, match="colour"):
        image_grid(np.zeros((1, 2, 4, 4, 4)))


def test_save_grid_writes_a_png(tmp_path):
    path = tmp_path / "g.png"
    save_grid(np.random.default_rng(0).random((2, 2, 3, 8, 8)), str(path))
    im = Image.open(path)
    assert im.mode == "RGB" and im.size == ((2 * 10 + 2) * 2, (2 * 10 + 2) * 2)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_atomic_files_get_the_default_mode_not_0600(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        path = tmp_path / "m.png"
        save_grid(np.zeros((1, 1, 4, 4)), str(path))
        assert os.stat(path).st_mode & 0o777 == 0o644
    finally:
        os.umask(old)


def test_column_labels_sit_in_a_strip_above_their_columns(tmp_path):
    """The 0-9 labels of a sample grid: a white strip on top, ink over every column (each label
    centred in its own column), the grid itself unchanged below it."""
    from jmvae_cupy.viz import HEADER_PX

    imgs = np.random.default_rng(1).random((2, 10, 6, 6))
    plain, labelled = tmp_path / "a.png", tmp_path / "b.png"
    save_grid(imgs, str(plain))
    save_grid(imgs, str(labelled), col_labels=[str(d) for d in range(10)])
    a, b = np.asarray(Image.open(plain)), np.asarray(Image.open(labelled))
    h = HEADER_PX * 2
    assert b.shape == (a.shape[0] + h, a.shape[1])
    np.testing.assert_array_equal(b[h:], a)
    strip = b[:h]
    cell = (6 + 2) * 2
    for c in range(10):
        column = strip[:, 4 + c * cell: 4 + c * cell + 12]
        assert (column < 128).any(), f"no label over column {c}"
    assert (strip[:, :3] == 255).all()  # the padding left of column 0 stays blank
    with pytest.raises(ValueError, match="3 column labels for 10 columns"):
        save_grid(imgs, str(tmp_path / "c.png"), col_labels=["0"] * 3)
