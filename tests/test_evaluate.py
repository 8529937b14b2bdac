"""python -m jmvae_cupy.evaluate on a tiny run (1 epoch on 300 training digits, in-process)."""

import json

import pytest

from jmvae_cupy import evaluate, train
from tests.conftest import train_tiny


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return train_tiny(tmp_path_factory, "kl")


def test_table_names_the_estimators(tiny_run, capsys):
    assert evaluate.main([tiny_run, "--test-size", "100", "--importance", "3", "--samples", "2"]) == 0
    out = capsys.readouterr().out
    assert "| model | label->image | image->label | estimator |" in out
    for name in ("eq5-unimodal", "snis3", "iw3-joint"):
        assert name in out
    assert "| JMVAE-kl |" in out
    assert "(test digits: 100;" in out


def test_json_parses(tiny_run, capsys):
    assert evaluate.main([tiny_run, "--json", "--test-size", "50", "--samples", "2", "--repeats", "2"]) == 0
    res = json.loads(capsys.readouterr().out)
    e = res[0]["estimates"]["label2image"]["eq5-unimodal"]
    assert len(e["repeats"]) == 2 and e["mean"] < 0 and res[0]["model"] == "JMVAE-kl"


def test_bad_run_dir_is_one_line_and_exit_1(tmp_path, capsys):
    assert evaluate.main([str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert evaluate.main([str(tmp_path)]) == 1  # exists, but no config.json
    assert "no config.json" in capsys.readouterr().err


def test_figures(tiny_run, tmp_path, capsys):
    assert evaluate.main(["figures", tiny_run, "--out", str(tmp_path), "--test-size", "50", "--iterations", "2"]) == 0
    assert (tmp_path / "ll-vs-iterations.png").exists() and (tmp_path / "gen-kl.png").exists()


def test_figures_bad_arguments_get_one_line_errors(tiny_run, tmp_path, capsys):
    """--iterations -1 was an IndexError, --test-size 0 a reshape error (it now means all, as in
    evaluate), an --out that cannot be made a FileNotFoundError traceback."""
    for args, message in ((["--iterations", "-1"], "--iterations must be >= 0, got -1"),
                          (["--test-size", "-5"], "--test-size must be >= 0, got -5")):
        assert evaluate.main(["figures", tiny_run, "--out", str(tmp_path / "f"), *args]) == 1
        assert capsys.readouterr().err.strip() == f"error: {message}"
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert evaluate.main(["figures", tiny_run, "--out", str(blocker / "sub")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: cannot create output directory {blocker / 'sub'}:")
    assert evaluate.main(["figures", tiny_run, "--out", str(tmp_path / "all"), "--test-size", "0",
                          "--iterations", "1"]) == 0
    assert (tmp_path / "all" / "ll-vs-iterations.png").exists()


def _one_line(capsys, msg):
    err = capsys.readouterr().err
    assert err.startswith("error: ") and msg in err and err.count("\n") == 1, err


def test_progress_on_stderr_and_json_alone_on_stdout(tiny_run, capsys):
    """The Table 1 command printed nothing for minutes: a bar over the batches of every (run, direction,
    repeat) now goes to stderr; --no-progress turns it off; stdout holds the JSON alone either way."""
    args = [tiny_run, "--json", "--test-size", "600", "--samples", "1", "--repeats", "2"]
    assert evaluate.main(args) == 0
    cap = capsys.readouterr()
    assert json.loads(cap.out)[0]["test_size"] == 600
    assert "/8 " in cap.err and "batch" in cap.err  # 2 directions x 2 repeats x 2 batches (500 + 100 digits)
    assert evaluate.main(args + ["--no-progress"]) == 0
    cap2 = capsys.readouterr()
    assert cap2.err == "" and json.loads(cap2.out) == json.loads(cap.out)


def test_batches_give_the_estimates_of_one_call(tiny_run):
    """evaluate_run feeds the estimators BATCH rows at a time (one bar tick each) with one stream per
    (direction, repeat), as estimators.evaluate_model does: the numbers do not change."""
    from jmvae_cupy.estimators import evaluate_model
    from jmvae_cupy.rng import Rng

    model, _, x, w, *_ = evaluate.load_run(tiny_run)
    x, w = x[:700], w[:700]
    ticks = []
    got = evaluate.evaluate_run(model, x, w, samples=2, importance=2, tick=lambda: ticks.append(1))
    assert len(ticks) == 4  # 2 directions x 2 batches
    for d in ("label2image", "image2label"):
        want = evaluate_model(model, x, w, d, Rng([0, 11]), 2, 10, 2)
        for k, v in want.items():
            assert got[d][k][0] == pytest.approx(v, rel=1e-12, abs=1e-12)


def test_ctrl_c_is_one_line_and_exit_130(tiny_run, capsys, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "evaluate_run", interrupted)
    assert evaluate.main([tiny_run, "--test-size", "10", "--no-progress"]) == 130
    assert capsys.readouterr().err == "error: interrupted\n"


def test_figures_leave_no_empty_out_directory(tiny_run, tmp_path, capsys, monkeypatch):
    """A bad run directory left --out created and empty; a read-only --out was a PermissionError
    traceback, and so was a figure that could not be written."""
    import errno

    from jmvae_cupy import figures, fsutil

    out = tmp_path / "new" / "figs"
    assert evaluate.main(["figures", tiny_run, str(tmp_path / "missing"), "--out", str(out)]) == 1
    _one_line(capsys, f"{tmp_path / 'missing'}: no such run directory")
    assert not (tmp_path / "new").exists()

    def refuse(directory, prefix, suffix=".tmp"):
        raise PermissionError(errno.EACCES, "Permission denied", f"{directory}/{prefix}abc{suffix}")

    monkeypatch.setattr(fsutil, "temp_beside", refuse)  # (the probe: fsutil.probe_writable)
    assert evaluate.main(["figures", tiny_run, "--out", str(out), "--no-progress"]) == 1
    _one_line(capsys, f"cannot write in output directory {out}: Permission denied")
    assert not (tmp_path / "new").exists()  # both levels it made are gone again
    monkeypatch.undo()

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", f"{out}/.tmp-xyz.png")

    monkeypatch.setattr(figures.plots, "generation_chains", full)
    tmp_path.joinpath("kept").mkdir()  # an --out that existed before stays
    assert evaluate.main(["figures", tiny_run, "--out", str(tmp_path / "kept"), "--no-progress",
                          "--test-size", "20", "--iterations", "1"]) == 1
    _one_line(capsys, f"{tmp_path / 'kept' / 'gen-kl.png'}: cannot write (No space left on device)")
    assert (tmp_path / "kept").is_dir()


def test_figures_of_a_2d_run_draw_its_latent_panels(tmp_path, capsys):
    run = str(tmp_path / "z2")
    assert train.main(["mnist", "--variant", "jmvae", "--latent", "2", "--epochs", "1", "--train-subset", "300",
                       "--device", "cpu", "--no-progress", "--out", run]) == 0
    assert evaluate.main(["figures", run, "--out", str(tmp_path / "f"), "--test-size", "60", "--iterations", "2",
                          "--no-progress"]) == 0
    assert (tmp_path / "f" / "latent.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "f" / "gen-z2.png").exists()


def test_the_table_names_the_checkpoint_it_used_even_after_a_fallback(tmp_path, capsys):
    """A damaged newest checkpoint: evaluate falls back to the one before, and its output says so
    (it only warned on stderr, and the table named no checkpoint)."""
    import os

    from jmvae_cupy import checkpoint

    run = str(tmp_path / "r")
    assert train.main(["mnist", "--variant", "kl", "--epochs", "2", "--train-subset", "300", "--device", "cpu",
                       "--no-progress", "--out", run]) == 0
    newest, older = checkpoint.list_checkpoints(run)[:2]
    with open(newest, "r+b") as f:
        f.seek(os.path.getsize(newest) // 2)
        f.write(b"\0" * 64)
    capsys.readouterr()
    assert evaluate.main([run, "--test-size", "50", "--samples", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"{run}: {os.path.basename(older)} (epoch 1)" in out
    assert evaluate.main([run, "--test-size", "50", "--samples", "2", "--no-progress", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)[0]
    assert res["checkpoint"] == os.path.basename(older) and res["epoch"] == 1


def test_figures_of_a_jmvae_h_run_show_both_paths(tmp_path, capsys):
    run = str(tmp_path / "h")
    assert train.main(["mnist", "--variant", "h", "--epochs", "1", "--train-subset", "300", "--device", "cpu",
                       "--no-progress", "--out", run]) == 0
    assert evaluate.main(["figures", run, "--out", str(tmp_path / "f"), "--test-size", "40", "--iterations", "2",
                          "--no-progress"]) == 0
    for f in ("gen-h-z1.png", "gen-h-top.png", "ll-vs-iterations.png"):
        assert (tmp_path / "f" / f).read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "f" / "gen-h.png").exists()
