"""The paper's figures drawn with matplotlib (Agg, Figure API: no pyplot global state).

Every function takes plain NumPy data (no models), writes a PNG at ``path`` (and an SVG beside it,
same stem, when ``svg=True``), each atomically (temporary file in the same directory, then
``os.replace``), and returns the :class:`matplotlib.figure.Figure` so callers and tests can inspect it.

* :func:`latent_panels`         Fig. 3: joint vs. conditional latent samples, one row per model;
* :func:`generation_chains`     Figs. 4, 6, 7(a): images generated from labels / attributes (after K
                                 iterations), gray or colour;
* :func:`pca_panels`            Fig. 7(b): latent samples on two principal axes, one panel per Base;
* :func:`curves_vs_iterations`  Fig. 5: an estimate against K, with optional bands and reference lines;
* :func:`learning_curves`       test terms (elbo, rec_x, rec_w, KL terms) against epoch, one axes per term;
* :func:`metric_vs_epoch`       any metric against epoch, one axes per panel.

Legends sit outside the axes (never on the data); layout is matplotlib's constrained layout.
"""

from __future__ import annotations

import math
import os

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from .fsutil import replacing

DPI = 150
OUTSIDE_RIGHT = {"loc": "upper left", "bbox_to_anchor": (1.02, 1.0), "borderaxespad": 0.0}
TERM_ORDER = ("elbo", "rec_x", "rec_w")


def _figure(nrows: int, ncols: int, size, **subplots_kw):
    """A constrained-layout Figure with an Agg canvas and a 2-D array of axes."""
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False, **subplots_kw)


def _save(fig: Figure, path, svg: bool = False) -> Figure:
    """Write ``fig`` to ``path`` as PNG (and to the same stem + ``.svg`` when ``svg``), atomically."""
    path = os.fspath(path)
    targets = [(path, "png")] + ([(os.path.splitext(path)[0] + ".svg", "svg")] if svg else [])
    for target, fmt in targets:
        with replacing(target, suffix="." + fmt) as f:
            fig.savefig(f, format=fmt, dpi=DPI)
    return fig


def _integer_x(ax) -> None:
    """Label the x axis (K or epoch) at integers only, still letting matplotlib choose which."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))


def _limits(*arrays, margin: float = 0.05):
    """Common (xlim, ylim) enclosing every (N, 2) array, widened by ``margin`` of the span per side."""
    pts = np.concatenate([np.asarray(a, dtype=np.float64).reshape(-1, 2) for a in arrays])
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    pad = margin * np.where(hi > lo, hi - lo, 1.0)
    return (lo[0] - pad[0], hi[0] + pad[0]), (lo[1] - pad[1], hi[1] + pad[1])


def latent_panels(models, path, svg: bool = False) -> Figure:
    """Fig. 3: latent samples coloured by digit, one row per model.

    ``models``: list of dicts with ``"title"`` (str), ``"joint"`` (N, 2) samples of the joint encoder
    q(z|x,w), ``"cond"`` (M, 2) samples of the conditional one (from the label alone), ``"labels"``
    (N,) ints 0..9 (also labelling ``cond``, so M == N), ``"joint_title"`` and ``"cond_title"`` (str).
    Left column: joint, right column: conditional; both panels of a row share the same x and y
    limits, so a conditional distribution collapsed into a small area shows as such.
    """
    if not models:
        raise ValueError("latent_panels: no models")
    cmap = matplotlib.colormaps["tab10"]
    fig, axes = _figure(len(models), 2, (9.5, 3.8 * len(models)))
    handles = [Line2D([], [], ls="", marker="o", ms=6, color=cmap(d), label=str(d)) for d in range(10)]
    for (ax_joint, ax_cond), m in zip(axes, models):
        labels = np.asarray(m["labels"]).astype(int)
        xlim, ylim = _limits(m["joint"], m["cond"])
        for ax, key, sub in ((ax_joint, "joint", f"{m['title']} — {m['joint_title']}"),
                             (ax_cond, "cond", m["cond_title"])):
            pts = np.asarray(m[key], dtype=np.float64).reshape(-1, 2)
            ax.scatter(pts[:, 0], pts[:, 1], c=cmap(labels % 10), s=8, alpha=0.6, linewidths=0)
            ax.set(xlim=xlim, ylim=ylim, xlabel="z[0]", ylabel="z[1]", title=sub)
        ax_cond.legend(handles=handles, title="label", **OUTSIDE_RIGHT)
    return _save(fig, path, svg)


def generation_chains(chains, path, svg: bool = False, row_labels=None, col_labels=None, xlabel: str = "label",
                      ylabel: str = "iterations") -> Figure:
    """Figs. 4, 6 and 7(a): grids of generated images, one titled panel per entry (stacked).

    ``chains``: dict title -> array (R, C, H, W) of gray images or (R, C, 3, H, W) of colour images,
    in [0, 1]; row r = the r-th iteration count shown (or the r-th kind of image), column c = what
    was generated from (label c by default).  ``row_labels`` / ``col_labels``: optional dicts title ->
    list of R / C strings (e.g. "K=0" / "Smiling"); rows and columns are numbered where none is given.
    Each panel is one (R*H, C*W) image.
    """
    if not chains:
        raise ValueError("generation_chains: no chains")
    grids = {t: np.asarray(c, dtype=np.float64) for t, c in chains.items()}
    rows = [g.shape[0] for g in grids.values()]
    cols = max(g.shape[1] for g in grids.values())
    aspect = max(g.shape[-2] / g.shape[-1] for g in grids.values())
    width = max(6.5, 0.65 * cols + 1.5)
    fig, axes = _figure(len(grids), 1, (width, (width - 1.5) / cols * aspect * sum(rows) + 1.1 * len(rows)),
                        height_ratios=rows)
    for ax, (title, g) in zip(axes[:, 0], grids.items()):
        if g.ndim == 4:
            R, C, H, W = g.shape
            ax.imshow(g.transpose(0, 2, 1, 3).reshape(R * H, C * W), cmap="gray", vmin=0.0, vmax=1.0)
        elif g.ndim == 5 and g.shape[2] == 3:
            R, C, _, H, W = g.shape
            ax.imshow(np.clip(g.transpose(0, 3, 1, 4, 2).reshape(R * H, C * W, 3), 0.0, 1.0))
        else:
            raise ValueError(f"generation_chains: {title!r} has shape {g.shape}, not (R, C, H, W) or (R, C, 3, H, W)")
        for what, labels, n in (("row", row_labels, R), ("column", col_labels, C)):
            got = (labels or {}).get(title)
            if got is not None and len(got) != n:
                raise ValueError(f"generation_chains: {title!r} has {n} {what}s but {len(got)} {what} labels")
        ax.set_xticks(W * np.arange(C) + (W - 1) / 2, labels=list((col_labels or {}).get(title, map(str, range(C)))))
        ax.set_yticks(H * np.arange(R) + (H - 1) / 2, labels=list((row_labels or {}).get(title, map(str, range(R)))))
        if col_labels and any(len(c) > 3 for c in col_labels.get(title, [])):
            ax.tick_params(axis="x", labelrotation=30)
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return _save(fig, path, svg)


def pca_panels(panels, path, svg: bool = False, title: str | None = None) -> Figure:
    """Fig. 7(b): latent samples projected on two principal axes, coloured by the attribute column
    they were generated from, one panel per Base, side by side on the same axis limits.

    ``panels``: list of dicts ``{"title": str, "points": (C, M, 2) array, "centres": (C, 2) array,
    "columns": list of C strings}`` (the same columns in every panel).  Each column's M samples are
    dots; its centre (z_mean, the average face's z) a large star.  ``title``: over all the panels.
    """
    if not panels:
        raise ValueError("pca_panels: no panels")
    fig, axes = _figure(1, len(panels), (4.6 * len(panels) + 2.2, 4.6))
    xlim, ylim = _limits(*[p["points"] for p in panels], *[p["centres"] for p in panels])
    cmap = matplotlib.colormaps["tab10"]
    for ax, p in zip(axes[0], panels):
        pts, centres = np.asarray(p["points"], np.float64), np.asarray(p["centres"], np.float64)
        for c in range(len(p["columns"])):
            ax.scatter(pts[c, :, 0], pts[c, :, 1], s=8, alpha=0.5, color=cmap(c % 10), linewidths=0)
            ax.scatter(*centres[c], s=160, marker="*", color=cmap(c % 10), edgecolors="black", linewidths=0.8)
        ax.set(xlim=xlim, ylim=ylim, title=p["title"], xlabel="principal axis 1", ylabel="principal axis 2")
    names = panels[0]["columns"]
    handles = [Line2D([], [], ls="", marker="o", ms=6, color=cmap(c % 10), label=n) for c, n in enumerate(names)]
    handles.append(Line2D([], [], ls="", marker="*", ms=11, color="gray", markeredgecolor="black",
                          label="z_mean (average face)"))
    axes[0, -1].legend(handles=handles, title="conditioned on", **OUTSIDE_RIGHT)
    if title:
        fig.suptitle(title)
    return _save(fig, path, svg)


def _line_panels(panels, path, svg, xkey: str, ykey: str, xlabel: str) -> Figure:
    """Axes stacked one above the other, sharing x (wide plots with room for long legends beside them):
    per series a line with markers (x = ``xkey``, y = ``ykey``), a shaded band where the series has
    ``lo``/``hi``, a dashed line per panel ``references`` entry."""
    if not panels:
        raise ValueError("no panels")
    fig, axes = _figure(len(panels), 1, (11.0, 3.4 * len(panels)), sharex=True)
    for ax, p in zip(axes[:, 0], panels):
        for name, s in p["series"].items():
            (line,) = ax.plot(s[xkey], s[ykey], marker="o", ms=4, label=name)
            if s.get("lo") is not None and s.get("hi") is not None:
                ax.fill_between(s[xkey], s["lo"], s["hi"], color=line.get_color(), alpha=0.2, linewidth=0)
        for i, (name, value) in enumerate(p.get("references", {}).items()):
            ax.axhline(value, ls="--", lw=1.2, color=f"C{(len(p['series']) + i) % 10}", label=name)
        ax.set(title=p["title"], xlabel=xlabel, ylabel=p["ylabel"])
        if p.get("ylim") is not None:  # e.g. (0, 1) for a fraction: the whole scale, not the data's
            ax.set_ylim(*p["ylim"])
        ax.tick_params(labelbottom=True)
        _integer_x(ax)
        ax.legend(**OUTSIDE_RIGHT)
    return _save(fig, path, svg)


def curves_vs_iterations(panels, path, svg: bool = False) -> Figure:
    """Fig. 5 companion: estimates against the number of iterations K, one axes per panel.

    ``panels``: list of dicts ``{"title": str, "ylabel": str, "series": {name: {"k": list[int] (L,),
    "mean": list[float] (L,), "lo": list[float] (L,) or None, "hi": list[float] (L,) or None}},
    "references": {name: float}, "ylim": (lo, hi) (optional)}``.  A band is shaded between ``lo`` and
    ``hi`` where both are given; each reference is a horizontal dashed line.  Every line is in the
    legend (outside the axes).
    """
    return _line_panels(panels, path, svg, "k", "mean", "iterations K")


def metric_vs_epoch(panels, path, svg: bool = False) -> Figure:
    """A metric's trend over training, one axes per panel.

    ``panels``: list of dicts ``{"title": str, "ylabel": str, "series": {name: {"epoch": list[int] (L,),
    "value": list[float] (L,)}}}``; an optional ``"references": {name: float}`` adds dashed lines.
    """
    return _line_panels(panels, path, svg, "epoch", "value", "epoch")


def _style(i: int) -> dict:
    """The i-th run's colour and line style: ten colours, then the same ten dashed."""
    return {"color": f"C{i % 10}", "linestyle": ("-", "--", ":")[(i // 10) % 3]}


def _test_terms(runs) -> list[str]:
    """Test terms present in any run: elbo, rec_x, rec_w first (where present), then the others sorted."""
    found = {k for recs in runs.values() for r in recs for k in r.get("test", {})}
    return [t for t in TERM_ORDER if t in found] + sorted(found - set(TERM_ORDER))


def learning_curves(runs, path, svg: bool = False) -> Figure:
    """Test terms against epoch, one axes per term present in any run (grid of up to 3 columns).

    ``runs``: dict name -> list of metrics records, each a dict ``{"epoch": int, "test": {term: float},
    ...}`` (terms such as "elbo", "rec_x", "rec_w", "kl", "kl_x", "kl_w", "kl_z1", "kl_z2"; records
    without "test" and runs lacking a term are skipped for that term).  A run keeps its colour in
    every panel; one legend of the runs sits below the grid.
    """
    terms = _test_terms(runs)
    if not terms:
        raise ValueError("learning_curves: no test terms in any run")
    ncols = min(3, len(terms))
    nrows = math.ceil(len(terms) / ncols)
    fig, axes = _figure(nrows, ncols, (4.2 * ncols, 3.2 * nrows + 0.6), sharex=True)
    for ax in axes.flat[len(terms):]:
        ax.remove()
    for ax, term in zip(axes.flat, terms):
        for i, (name, recs) in enumerate(runs.items()):
            pts = [(r["epoch"], r["test"][term]) for r in recs if term in r.get("test", {})]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, label=name, **_style(i))
        ax.set(title=f"test {term}", xlabel="epoch", ylabel=term)
        ax.tick_params(labelbottom=True)
        _integer_x(ax)
    handles = [Line2D([], [], marker="o", ms=3, label=name, **_style(i)) for i, name in enumerate(runs)]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(4, len(handles)))
    return _save(fig, path, svg)
