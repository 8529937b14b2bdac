"""jmvae_cupy.plots: what each figure shows (shared limits, legend entries placed off the data,
bands, image shapes), the files written (valid PNG, optional SVG) and the atomic write."""

import os

import numpy as np
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.text import Text

from jmvae_cupy import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DIGITS = [str(d) for d in range(10)]


def _legend_texts(legend):
    return [t.get_text() for t in legend.get_texts()]


def _check_files(tmp_path, path, svg):
    """A valid PNG at ``path``, the SVG beside it iff ``svg``, and nothing else (no temp file left)."""
    assert path.read_bytes().startswith(PNG_MAGIC)
    expected = {path.name} | ({path.with_suffix(".svg").name} if svg else set())
    assert set(os.listdir(tmp_path)) == expected
    if svg:
        assert path.with_suffix(".svg").read_text().lstrip().startswith("<?xml")


def _check_readable(fig):
    """Every visible text at least 9 pt."""
    fig.canvas.draw()
    sizes = [t.get_fontsize() for t in fig.findobj(Text) if t.get_visible() and t.get_text()]
    assert sizes and min(sizes) >= 9


def _assert_outside(fig, ax, legend):
    """The legend's box, as drawn, does not overlap the axes' data area."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert not legend.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))


# ------------------------------------------------------------------------------------ latent_panels
def _latent_models(rng, n=50):
    labels = rng.integers(0, 10, n)
    wide = rng.normal(0.0, 3.0, (n, 2))
    collapsed = 0.5 + rng.normal(0.0, 0.05, (n, 2))  # a conditional collapsed into a small area
    return [
        {"title": "JMVAE", "joint": wide, "cond": collapsed, "labels": labels,
         "joint_title": "joint: q(z|x,w)", "cond_title": "conditional: q(z|w)"},
        {"title": "CVAE", "joint": collapsed + 10.0, "cond": wide, "labels": labels,
         "joint_title": "joint: q(z|x,w)", "cond_title": "conditional: q(z|x^,w)"},
    ]


@pytest.mark.parametrize("svg", [False, True])
def test_latent_panels_rows_share_limits_that_enclose_both(tmp_path, rng, svg):
    models = _latent_models(rng)
    path = tmp_path / "latent.png"
    fig = plots.latent_panels(models, path, svg=svg)
    _check_files(tmp_path, path, svg)
    _check_readable(fig)
    assert len(fig.axes) == 2 * len(models)
    for row, m in enumerate(models):
        left, right = fig.axes[2 * row], fig.axes[2 * row + 1]
        assert left.get_xlim() == right.get_xlim()
        assert left.get_ylim() == right.get_ylim()
        pts = np.concatenate([m["joint"], m["cond"]])
        (x0, x1), (y0, y1) = left.get_xlim(), left.get_ylim()
        assert x0 < pts[:, 0].min() and pts[:, 0].max() < x1
        assert y0 < pts[:, 1].min() and pts[:, 1].max() < y1
        assert m["title"] in left.get_title()
        for ax in (left, right):
            assert (ax.get_xlabel(), ax.get_ylabel()) == ("z[0]", "z[1]")
            assert len(ax.collections) == 1 and len(ax.collections[0].get_offsets()) == len(m["labels"])
        legend = right.get_legend()
        assert legend is not None and _legend_texts(legend) == DIGITS
        _assert_outside(fig, right, legend)


def test_latent_panels_colours_follow_labels(tmp_path, rng):
    models = _latent_models(rng)[:1]
    fig = plots.latent_panels(models, tmp_path / "latent.png")
    colours = fig.axes[0].collections[0].get_facecolors()[:, :3]
    labels = models[0]["labels"]
    for d in np.unique(labels):  # one colour per digit, different digits different colours
        assert len(np.unique(colours[labels == d], axis=0)) == 1
    assert len(np.unique(colours, axis=0)) == len(np.unique(labels))


# ---------------------------------------------------------------------------------- generation_chains
def test_generation_chains_one_image_per_panel(tmp_path, rng):
    H, W = 6, 5
    chains = {"JMVAE-kl": rng.random((1, 10, H, W)), "JMVAE": rng.random((3, 10, H, W))}
    row_labels = {"JMVAE": ["K=0", "K=1", "K=5"]}
    path = tmp_path / "gen.png"
    fig = plots.generation_chains(chains, path, row_labels=row_labels)
    _check_files(tmp_path, path, False)
    _check_readable(fig)
    assert len(fig.axes) == len(chains)
    for ax, (title, c) in zip(fig.axes, chains.items()):
        assert ax.get_title() == title
        assert len(ax.images) == 1
        img = ax.images[0]
        assert img.get_array().shape == (c.shape[0] * H, 10 * W)
        assert img.get_clim() == (0.0, 1.0)
        r = c.shape[0] - 1  # the cell (row r, label 2) holds image c[r, 2]
        np.testing.assert_allclose(img.get_array()[r * H:(r + 1) * H, 2 * W:3 * W], c[r, 2])
        assert [t.get_text() for t in ax.get_xticklabels()] == DIGITS
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("label", "iterations")
    assert [t.get_text() for t in fig.axes[1].get_yticklabels()] == row_labels["JMVAE"]
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["0"]


def test_generation_chains_rejects_wrong_row_labels(tmp_path, rng):
    with pytest.raises(ValueError, match="row labels"):
        plots.generation_chains({"a": rng.random((2, 10, 4, 4))}, tmp_path / "g.png", row_labels={"a": ["K=0"]})
    assert os.listdir(tmp_path) == []


def test_generation_chains_colour_faces_with_column_labels(tmp_path, rng):
    """Figs. 6 / 7(a): (R, C, 3, H, W) colour images, each cell in place, columns named."""
    H, W = 4, 6
    faces = rng.random((2, 3, 3, H, W))
    cols = ["Base", "Smiling", "Not Male"]
    fig = plots.generation_chains({"kl": faces}, tmp_path / "f.png", col_labels={"kl": cols}, row_labels={
        "kl": ["average", "random 1"]}, xlabel="conditioned on", ylabel="")
    img = fig.axes[0].images[0].get_array()
    assert img.shape == (2 * H, 3 * W, 3)
    np.testing.assert_allclose(img[H:2 * H, 2 * W:3 * W], faces[1, 2].transpose(1, 2, 0))  # row 1, column 2
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == cols
    with pytest.raises(ValueError, match="column labels"):
        plots.generation_chains({"kl": faces}, tmp_path / "g.png", col_labels={"kl": cols[:2]})
    with pytest.raises(ValueError, match="not \\(R, C, H, W\\)"):
        plots.generation_chains({"kl": faces[:, :, :2]}, tmp_path / "g.png")


# ------------------------------------------------------------------------------- curves_vs_iterations
def _iteration_panels():
    k = list(range(6))
    return [
        {"title": "log p(x|w)", "ylabel": "nats",
         "series": {"banded": {"k": k, "mean": [-100.0 + i for i in k], "lo": [-102.0 + i for i in k],
                               "hi": [-98.0 + i for i in k]},
                    "plain": {"k": k, "mean": [-99.0] * 6, "lo": None, "hi": None}},
         "references": {"paper JMVAE-kl": -86.0, "CVAE": -90.0}},
        {"title": "coherence", "ylabel": "accuracy",
         "series": {"plain": {"k": k[:3], "mean": [0.5, 0.6, 0.7], "lo": None, "hi": None}},
         "references": {}},
    ]


def test_curves_vs_iterations_legend_bands_references(tmp_path):
    panels = _iteration_panels()
    path = tmp_path / "curves.png"
    fig = plots.curves_vs_iterations(panels, path, svg=True)
    _check_files(tmp_path, path, True)
    _check_readable(fig)
    assert len(fig.axes) == len(panels)
    assert fig.axes[0].get_xlim() == fig.axes[1].get_xlim()  # shared x range
    for ax, p in zip(fig.axes, panels):
        names = list(p["series"]) + list(p["references"])
        legend = ax.get_legend()
        assert sorted(_legend_texts(legend)) == sorted(names)
        _assert_outside(fig, ax, legend)
        assert ax.get_xlabel() == "iterations K" and ax.get_ylabel() == p["ylabel"]
        bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
        with_band = [s for s in p["series"].values() if s["lo"] is not None]
        assert len(bands) == len(with_band)
        lines = {line.get_label(): line for line in ax.get_lines()}
        for name, value in p["references"].items():  # dashed, horizontal, at the value
            assert lines[name].get_linestyle() == "--"
            assert list(lines[name].get_ydata()) == [value, value]
    band = fig.axes[0].collections[0].get_paths()[0].vertices
    assert band[:, 1].min() == pytest.approx(-102.0) and band[:, 1].max() == pytest.approx(-93.0)


# ----------------------------------------------------------------------------------- learning_curves
def _records(n, terms, off=0.0):
    return [{"epoch": e, "test": {t: off - 100.0 / e for t in terms}, "train": {"loss": 100.0}}
            for e in range(1, n + 1)]


def test_learning_curves_one_axes_per_term(tmp_path):
    runs = {"jmvae": _records(5, ["kl_x", "elbo", "rec_w", "rec_x", "kl_w"]),
            "cvae": _records(3, ["elbo", "rec_x", "kl"], off=1.0) + [{"epoch": 4, "train": {"loss": 1.0}}],
            "hvae": _records(4, ["elbo", "kl_z2", "kl_z1"])}
    path = tmp_path / "learning.png"
    fig = plots.learning_curves(runs, path)
    _check_files(tmp_path, path, False)
    _check_readable(fig)
    terms = ["elbo", "rec_x", "rec_w", "kl", "kl_w", "kl_x", "kl_z1", "kl_z2"]
    assert [ax.get_title() for ax in fig.axes] == [f"test {t}" for t in terms]
    first = fig.axes[0]
    for ax, term in zip(fig.axes, terms):
        assert ax.get_shared_x_axes().joined(first, ax)
        assert ax.get_xlabel() == "epoch" and ax.get_ylabel()
        having = [name for name, recs in runs.items() if any(term in r.get("test", {}) for r in recs)]
        assert [line.get_label() for line in ax.get_lines()] == having
        for line in ax.get_lines():
            epochs = [r["epoch"] for r in runs[line.get_label()] if term in r.get("test", {})]
            assert list(line.get_xdata()) == epochs
    # one legend of every run; a run keeps its colour in every panel
    assert _legend_texts(fig.legends[0]) == list(runs)
    colour = {line.get_label(): line.get_color() for ax in fig.axes for line in ax.get_lines()}
    assert all(line.get_color() == colour[line.get_label()] for ax in fig.axes for line in ax.get_lines())
    assert len(set(colour.values())) == len(runs)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.legends[0].get_window_extent(renderer)
    assert not any(box.overlaps(ax.get_window_extent(renderer)) for ax in fig.axes)


# ----------------------------------------------------------------------------------- metric_vs_epoch
def test_metric_vs_epoch_legend_is_series_names(tmp_path):
    panels = [{"title": "log p(x|w)", "ylabel": "nats",
               "series": {"a": {"epoch": [1, 5, 10], "value": [-120.0, -100.0, -95.0]},
                          "b": {"epoch": [1, 5], "value": [-125.0, -105.0]}}},
              {"title": "coherence", "ylabel": "accuracy", "series": {"a": {"epoch": [1, 5], "value": [0.3, 0.6]}}}]
    path = tmp_path / "metric.png"
    fig = plots.metric_vs_epoch(panels, path)
    _check_files(tmp_path, path, False)
    _check_readable(fig)
    assert len(fig.axes) == len(panels)
    for ax, p in zip(fig.axes, panels):
        assert _legend_texts(ax.get_legend()) == list(p["series"])
        _assert_outside(fig, ax, ax.get_legend())
        assert ax.get_xlabel() == "epoch" and ax.get_ylabel() == p["ylabel"] and ax.get_title() == p["title"]
        assert all(line.get_marker() not in (None, "", "None") for line in ax.get_lines())


# ------------------------------------------------------------------------------------- atomic write
def test_failed_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "m.png"
    path.write_bytes(b"old")
    panels = [{"title": "t", "ylabel": "y", "series": {"a": {"epoch": [1, 2], "value": [1.0, 2.0]}}}]

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("matplotlib.figure.Figure.savefig", boom)
    with pytest.raises(OSError, match="disk full"):
        plots.metric_vs_epoch(panels, path)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["m.png"]


def test_path_may_be_str_and_overwrites(tmp_path):
    path = tmp_path / "m.png"
    path.write_bytes(b"old")
    panels = [{"title": "t", "ylabel": "y", "series": {"a": {"epoch": [1, 2], "value": [1.0, 2.0]}}}]
    plots.metric_vs_epoch(panels, str(path), svg=True)
    _check_files(tmp_path, path, True)


def test_a_panel_can_fix_its_y_range(tmp_path):
    """A fraction is drawn on its whole scale (0..1), whatever the data span."""
    from jmvae_cupy.plots import metric_vs_epoch

    fig = metric_vs_epoch([{"title": "c", "ylabel": "fraction", "ylim": (0.0, 1.0),
                            "series": {"a": {"epoch": [1, 2], "value": [0.1, 0.12]}}},
                           {"title": "d", "ylabel": "nats", "series": {"a": {"epoch": [1, 2], "value": [-3, -2]}}}],
                          str(tmp_path / "m.png"))
    a, b = fig.axes[:2]
    assert a.get_ylim() == (0.0, 1.0) and b.get_ylim() != (0.0, 1.0)
