"""python -m jmvae_cupy.reproduce mnist --quick: the whole plan end to end (11 runs of 2 epochs on 500
digits, evaluated on 200), resumable after a kill with the same tables; and reproduce celeba --quick
on a CelebA-layout file (8 runs of narrow networks on 32x32 synthetic faces)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from jmvae_cupy import plots, reproduce
from jmvae_cupy.plan import CELEBA_PLAN, MNIST_PLAN

FIGURES = ("fig3-latent.png", "fig4-chains.png", "fig5-vs-iterations.png", "learning-curves.png",
           "learning-curves-baselines.png", "trend.png")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("repro") / "a"
    assert reproduce.main(["mnist", "--quick", "--out", str(out), "--jobs", "2", "--no-progress"]) == 0
    return out


def test_quick_plan_leaves_report_figures_and_tables(quick):
    report = (quick / "report.md").read_text()
    for section in ("## Table 1", "## Cross-modal coherence", "## What the joint encoder reads",
                    "## The paper's claims, checked", "## Figures"):
        assert section in report
    for f in FIGURES:
        assert (quick / "figures" / f).read_bytes()[:4] == b"\x89PNG"
        assert f"(figures/{f})" in report
    t = json.loads((quick / "tables.json").read_text())
    models = {r["model"] for r in t["table1"]}
    assert {"JMVAE", "JMVAE-kl", "JMVAE-h [chain]", "JMVAE-h [q(z2|z1)]", "CVAE", "CMMA"} <= models
    cvae = [r for r in t["table1"] if r["model"] == "CVAE"]
    assert len(cvae) == 1 and {"label2image", "image2label"} <= set(cvae[0])  # both directions, one row
    assert "JMVAE-h [q(z2\\|z1)]" in report                                     # pipes escaped in cells
    for name, _ in MNIST_PLAN:
        e = json.loads((quick / "eval" / f"{name}.json").read_text())
        assert e["checkpoint"].startswith("ckpt-000002-") and e["epoch"] == 2
    h = json.loads((quick / "eval" / "h.json").read_text())
    assert set(h["coherence"]) == {"zeros", "noise", "prior"}
    assert set(h["coherence"]["zeros"]["label2image"]) == {"z1", "top"}
    assert sorted(h["trend"], key=int) == ["1", "2"]                             # every snapshot evaluated


def test_a_second_call_skips_finished_work(quick, capsys):
    stamps = {p: p.stat().st_mtime_ns for p in (quick / "eval").iterdir()}
    ckpts = sorted(os.listdir(quick / "mnist-kl"))
    assert reproduce.main(["mnist", "--quick", "--out", str(quick), "--no-progress"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (quick / "eval").iterdir()} == stamps
    assert sorted(os.listdir(quick / "mnist-kl")) == ckpts
    assert "complete" in (quick / "logs" / "train-kl.log").read_text()


def test_killed_mid_training_and_rerun_gives_the_same_tables(quick, tmp_path):
    out = tmp_path / "b"
    cmd = [sys.executable, "-m", "jmvae_cupy.reproduce", "mnist", "--quick", "--out", str(out), "--jobs", "2",
           "--no-progress"]
    p = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = out / "mnist-h" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None and not (metrics.exists() and metrics.read_text().strip()):
        time.sleep(0.2)
    assert p.poll() is None, "the plan finished before it could be killed"
    os.killpg(p.pid, signal.SIGKILL)                  # the plan and its trainings, mid-way
    p.wait()
    assert not (out / "report.md").exists()
    assert reproduce.main(["mnist", "--quick", "--out", str(out), "--jobs", "2", "--no-progress"]) == 0
    assert json.loads((out / "tables.json").read_text()) == json.loads((quick / "tables.json").read_text())


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    assert reproduce.main(["mnist", "--out", str(tmp_path / "x"), "--epochs", "0"]) == 1
    assert capsys.readouterr().err.strip() == "error: --epochs must be >= 1, got 0"
    assert reproduce.main(["mnist", "--out", str(tmp_path / "x"), "--jobs", "0"]) == 1
    assert capsys.readouterr().err.strip() == "error: --jobs must be >= 1, got 0"
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert reproduce.main(["mnist", "--quick", "--out", str(blocker / "sub")]) == 1
    assert capsys.readouterr().err.strip().startswith(f"error: cannot create {blocker / 'sub'}")
    assert reproduce.main(["mnist", "--quick", "--out", str(tmp_path / "y"), "--data", "f.h5"]) == 1
    assert capsys.readouterr().err.strip() == "error: --data is for celeba and data (mnist reads the embedded digits)"
    assert reproduce.main(["celeba", "--quick", "--out", str(tmp_path / "y")]) == 1
    assert capsys.readouterr().err.strip().startswith("error: celeba needs --data FILE.h5")
    assert reproduce.main(["celeba", "--quick", "--out", str(tmp_path / "y"), "--data", str(blocker)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and str(blocker) in err and len(err.splitlines()) == 1


# ------------------------------------------------------------------------------------------ CelebA
CELEBA_FIGURES = ("fig6-faces-from-attributes.png", "fig7a-average-and-random-faces.png", "fig7b-latent-pca.png",
                  "learning-curves.png", "learning-curves-baselines.png")


@pytest.fixture(scope="module")
def celeba_quick(tmp_path_factory, celeba_h5):
    """reproduce celeba --quick on 40 synthetic faces at 32x32, with its progress line on (stderr):
    (the output directory, stderr)."""
    out = tmp_path_factory.mktemp("repro-celeba") / "out"
    proc = subprocess.run([sys.executable, "-m", "jmvae_cupy.reproduce", "celeba", "--quick", "--data",
                           str(celeba_h5), "--out", str(out), "--jobs", "2"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stderr


def test_celeba_quick_plan_leaves_report_figures_and_tables(celeba_quick):
    out, _ = celeba_quick
    report = (out / "report.md").read_text()
    assert report.startswith("# JMVAE on CelebA")
    for section in ("## Table 1", "## Cross-modal coherence", "## The paper's claims, checked", "## Figures"):
        assert section in report
    assert "## What the joint encoder reads" not in report  # (MNIST's diagnostics)
    for f in CELEBA_FIGURES:
        assert (out / "figures" / f).read_bytes()[:4] == b"\x89PNG"
        assert f"(figures/{f})" in report
    t = json.loads((out / "tables.json").read_text())
    rows = {r["model"]: r for r in t["table1"]}
    assert {"JMVAE", "JMVAE-kl", "JMVAE-h", "CVAE", "CMMA", "JMVAE-kl + GAN"} <= set(rows)
    assert rows["JMVAE"]["paper"] == [-48763, -43.97] and rows["JMVAE-kl + GAN"]["paper"] == [None, None]
    assert rows["JMVAE"]["estimator"] == "eq5-iter2"  # K = the plan's iterations
    for name, _ in CELEBA_PLAN:
        e = json.loads((out / "eval" / f"{name}.json").read_text())
        assert e["dataset"] == "celeba" and e["epoch"] == 2 and e["checkpoint"].startswith("ckpt-000002-")
    gan = json.loads((out / "eval" / "kl-gan.json").read_text())
    assert gan["gan"] and gan["fig7"]["bases"] == ["Base", "Base, Not Male"]
    assert gan["fig7"]["columns"] == ["Base", "Male", "Bald", "Smiling", "Eyeglasses", "Blond_Hair", "all"]


def test_celeba_figure_arrays_have_the_shapes_the_figures_need(celeba_quick, celeba_h5):
    """Fig. 6: the test faces and, per model and path, one row per K (JMVAE-kl: one, from q(z|w));
    Fig. 7: average + random faces per column, PCA points and centres of both bases."""
    import numpy as np

    out, _ = celeba_quick
    s = reproduce.settings(reproduce.build_parser().parse_args(["celeba", "--quick", "--out", "x", "--data",
                                                                str(celeba_h5)]))
    from jmvae_cupy.data.celeba import open_celeba

    with open_celeba(celeba_h5) as d:
        F, ks = min(s["faces"], s["test_size"], len(d.test_idx)), s["fig6_ks"]
    h = np.load(out / "eval" / "h.npz")
    assert h["fig6_real"].shape[0] == F and h["fig6_real"].shape[1:] == (3, 32, 32)
    for p in ("z1", "top"):
        assert h[f"fig6_{p}"].shape == (len(ks), F, 3, 32, 32)
    assert np.load(out / "eval" / "kl.npz")["fig6_z1"].shape == (1, F, 3, 32, 32)
    g = np.load(out / "eval" / "kl-gan.npz")
    C, R, M = 7, s["fig7_random"], s["pca_samples"]
    for b in (0, 1):
        assert g[f"fig7_avg_{b}"].shape == (C, 3, 32, 32) and g[f"fig7_rand_{b}"].shape == (R, C, 3, 32, 32)
        assert g[f"pca_points_{b}"].shape == (C, M, 2) and g[f"pca_centres_{b}"].shape == (C, 2)
    assert not (out / "eval" / "cvae-label2image.npz").exists()  # (a baseline draws no CelebA figure)


def test_pca_panels_share_their_axes_and_name_every_column(tmp_path):
    """Fig. 7(b): both bases on the same limits (so "the same arrangement in both" can be seen), and
    one legend entry per column plus the centres' marker."""
    import numpy as np

    rng = np.random.default_rng(0)
    cols = ["Base", "Male", "Smiling"]
    panels = [{"title": t, "points": rng.normal(size=(3, 20, 2)) * (1 + 5 * i), "centres": rng.normal(size=(3, 2)),
               "columns": cols} for i, t in enumerate(("Base", "Base, Not Male"))]
    fig = plots.pca_panels(panels, tmp_path / "p.png", title="t")
    a, b = fig.axes[0], fig.axes[1]
    assert a.get_xlim() == b.get_xlim() and a.get_ylim() == b.get_ylim()
    pts = np.concatenate([p["points"].reshape(-1, 2) for p in panels])
    assert a.get_xlim()[0] < pts[:, 0].min() and a.get_xlim()[1] > pts[:, 0].max()  # nothing clipped
    labels = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert labels == cols + ["z_mean (average face)"]


def test_the_whole_plan_has_one_progress_line(celeba_quick):
    """One bar for the plan (not one per phase): every update of the progress output belongs to the
    one "reproduce celeba" bar, which reaches 100 % and names the runs done and what runs now."""
    _, err = celeba_quick
    updates = [u for u in err.replace("\n", "\r").split("\r") if "%|" in u]
    assert updates and all(u.startswith("reproduce celeba:") for u in updates)
    assert any("train: " in u and "runs done; now" in u and "epoch" in u for u in updates)
    assert any("evaluate: 8/8 runs done" in u for u in updates)
    assert "100%" in updates[-1]


# ------------------------------------------------------------------------------------ your own pairs
def test_data_quick_plan_on_pairs_of_your_own(tmp_path):
    """reproduce data --data FILE --config CFG --quick: 8x8 one-channel images and 3 classes, the seven
    runs of Table 1 trained (tiny nets), evaluated and reported; no coherence (no classifier of w),
    said so; Fig. 4's chains drawn from each class."""
    import numpy as np

    from jmvae_cupy.data.paired import write_paired
    from tests.test_train_paired import tiny_config

    r = np.random.default_rng(5)
    n = 120
    labels = r.integers(0, 3, n)
    x = np.clip(r.random((n, 1, 8, 8)) * 0.3 + labels[:, None, None, None] * 0.3, 0, 1).astype(np.float32)
    w = np.eye(3, dtype=np.float32)[labels]
    data = tmp_path / "pairs.h5"
    write_paired(str(data), x=x, w=w, w_names=["a", "b", "c"])
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(tiny_config("gaussian_fixed", "categorical", "kl", "toml").replace(
        '[x]\nlikelihood = "gaussian_fixed"\nencoder = "D8R"', '[x]\nlikelihood = "gaussian_fixed"\nencoder = "F-D8R"'))
    assert 'encoder = "F-D8R"' in cfg.read_text()  # (the images are flattened before the dense layer)
    out = tmp_path / "out"
    assert reproduce.main(["data", "--quick", "--data", str(data), "--config", str(cfg), "--out", str(out),
                           "--no-progress"]) == 0
    report = (out / "report.md").read_text()
    assert report.startswith("# JMVAE on pairs of your own")
    assert "Not measured: coherence needs a classifier" in report
    t = json.loads((out / "tables.json").read_text())
    assert {"JMVAE", "JMVAE-kl", "JMVAE-h", "CVAE", "CMMA"} <= {row["model"] for row in t["table1"]}
    assert all(row["paper"] == [None, None] for row in t["table1"])
    assert (out / "figures" / "fig4-chains.png").read_bytes()[:4] == b"\x89PNG"
    kl = np.load(out / "eval" / "kl.npz")["chain_z1"]
    assert kl.shape == (1, 3, 8, 8) and 0.0 <= kl.min() and kl.max() <= 1.0  # one row (q(z|w)), a class each
    assert json.loads((out / "eval" / "kl.json").read_text())["chain_columns"] == ["a", "b", "c"]
    assert "--config is for data" in _err_of(["mnist", "--quick", "--out", str(tmp_path / "m"), "--config",
                                              str(cfg)])
    assert "data needs --data FILE" in _err_of(["data", "--quick", "--out", str(tmp_path / "m")])


def _err_of(argv):
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert reproduce.main(argv) == 1
    return err.getvalue()
