"""python -m jmvae_cupy.reproduce mnist --quick: the whole plan end to end (11 runs of 2 epochs on 500
digits, evaluated on 200), resumable after a kill with the same tables."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from jmvae_cupy import reproduce

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
    for name, _ in reproduce.PLAN:
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
