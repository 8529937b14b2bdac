"""python -m jmvae_cupy.evaluate on a tiny run (1 epoch on 300 training digits, in-process)."""

import json

import pytest

from jmvae_cupy import evaluate, train


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("runs") / "kl")
    assert train.main(["mnist", "--variant", "kl", "--epochs", "1", "--train-subset", "300", "--device", "cpu",
                       "--no-progress", "--out", out]) == 0
    return out


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
