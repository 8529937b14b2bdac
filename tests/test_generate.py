"""python -m jmvae_cupy.generate on tiny trained runs: faces (Fig. 7), edit (Fig. 8), attributes; one-line
errors with exit code 1 for bad inputs.  The runs are one epoch of the 32x32 synthetic CelebA file of
tests/test_train_celeba.py (narrow nets) and one tiny MNIST run."""

import json

import numpy as np
import pytest
from PIL import Image

from jmvae_cupy.generate import main
from jmvae_cupy.train import main as train_main
from jmvae_cupy.viz import HEADER_PX
from tests.test_train_celeba import FAST


@pytest.fixture(scope="module")
def runs(tmp_path_factory, celeba_h5):
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for variant in ("kl", "jmvae"):
        out[variant] = root / variant
        extra = ["--gan"] if variant == "kl" else []  # a GAN checkpoint loads too (the discriminator is ignored)
        assert train_main(["celeba", "--variant", variant, "--epochs", "1", "--warmup", "1", "--data",
                           str(celeba_h5), "--out", str(out[variant])] + extra + FAST) == 0
    out["mnist"] = root / "mnist"
    assert train_main(["mnist", "--epochs", "1", "--train-subset", "200", "--batch-size", "100", "--latent", "4",
                       "--no-progress", "--device", "cpu", "--out", str(out["mnist"])]) == 0
    return out


def _png(path):
    return np.asarray(Image.open(path))


HEADER = 2 * HEADER_PX  # the strip of column labels above every grid (scale 2)


@pytest.mark.parametrize("variant", ["kl", "jmvae"])
def test_faces_from_attributes(runs, tmp_path, capsys, variant):
    out = tmp_path / "f.png"
    assert main([str(runs[variant]), "faces", "--attrs", "Smiling,Male,-Eyeglasses", "--samples", "2",
                 "--out", str(out), "--iterations", "2"]) == 0
    msg = capsys.readouterr().out
    assert "Base, Smiling, Male, Not Eyeglasses, all" in msg
    img = _png(out)  # column labels, 3 rows (average + 2 random) x 5 columns of 32x32, pad 2, scale 2
    assert img.shape == (HEADER + 2 * (3 * 34 + 2), 2 * (5 * 34 + 2), 3)
    assert (img[:HEADER] < 128).any() and (img[:HEADER] == 255).any()  # labels written on the white strip
    assert main([str(runs[variant]), "faces", "--from-test", "3", "--out", str(out)]) == 0
    assert _png(out).shape == (HEADER + 2 * (6 * 34 + 2), 2 * (3 * 34 + 2), 3)  # test faces, average, 4 random


def test_edit_writes_the_fig8_grid(runs, tmp_path, capsys):
    out = tmp_path / "e.png"
    assert main([str(runs["kl"]), "edit", "--image-index", "1", "--set", "Smiling=1,Eyeglasses=-1",
                 "--out", str(out)]) == 0
    msg = capsys.readouterr().out
    assert "Smiling=1" in msg and "Eyeglasses=-1" in msg and "q(z|w)" in msg
    assert _png(out).shape == (HEADER + 2 * (2 * 34 + 2), 2 * (4 * 34 + 2), 3)  # x / averages x (orig, 2 edits, all)
    assert main([str(runs["jmvae"]), "edit", "--image-index", "0", "--set", "smiling=2", "--given-attrs",
                 "--out", str(out), "--iterations", "1"]) == 0
    assert "q(z|x,w)" in capsys.readouterr().out


def test_edit_is_x_plus_the_difference_of_average_faces(runs, tmp_path):
    """Setting an attribute to the value it already has changes nothing: x' = x (up to PNG rounding)."""
    from jmvae_cupy.generate import Run

    run = Run(str(runs["kl"]), "cpu")
    w = np.asarray(run.test_w([0]))[0]
    out = tmp_path / "same.png"
    assert main([str(runs["kl"]), "edit", "--image-index", "0", "--given-attrs", "--set",
                 f"Smiling={w[run.attr_index('Smiling')]:g}", "--out", str(out)]) == 0
    img = _png(out).astype(int)
    a, b = img[HEADER + 4:HEADER + 68, 4:68], img[HEADER + 4:HEADER + 68, 72:136]  # the original, the "edited" tile
    assert np.abs(a - b).max() <= 1


def test_attributes_table_and_json(runs, capsys):
    assert main([str(runs["kl"]), "attributes", "--image-index", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["attribute", "predicted", "given"] and len(lines) == 41
    assert lines[1].split()[0] == "5_o_Clock_Shadow" and all(len(ln.split()) == 3 for ln in lines[1:])
    assert main([str(runs["jmvae"]), "attributes", "--image-index", "2", "--json", "--iterations", "1"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert len(d["predicted"]) == 40 and set(d["given"].values()) <= {-1.0, 1.0}


def test_mnist_runs(runs, tmp_path, capsys):
    out = tmp_path / "d.png"
    assert main([str(runs["mnist"]), "faces", "--attrs", "3,7", "--out", str(out)]) == 0
    assert _png(out).shape[:2] == (HEADER + 2 * (5 * 30 + 2), 2 * (2 * 30 + 2))
    capsys.readouterr()
    assert main([str(runs["mnist"]), "attributes", "--image-index", "0", "--json"]) == 0
    p = json.loads(capsys.readouterr().out)["predicted"]
    assert abs(sum(p.values()) - 1) < 1e-4
    assert main([str(runs["mnist"]), "edit", "--image-index", "0", "--set", "3=1", "--out", str(out)]) == 1
    assert "CelebA" in capsys.readouterr().err


@pytest.mark.parametrize("argv,msg", [
    (["{nowhere}", "attributes", "--image-index", "0"], "no such run directory"),
    (["{empty}", "attributes", "--image-index", "0"], "no config.json"),
    (["{kl}", "faces", "--attrs", "Smilling", "--out", "{tmp}/x.png"], "did you mean Smiling"),
    (["{kl}", "edit", "--image-index", "0", "--set", "Smiling", "--out", "{tmp}/x.png"], "NAME=VALUE"),
    (["{kl}", "edit", "--image-index", "0", "--set", "Smiling=yes", "--out", "{tmp}/x.png"], "not a number"),
    (["{kl}", "attributes", "--image-index", "999"], "out of range"),
    (["{kl}", "faces", "--attrs", "Male", "--out", "{tmp}/no/dir/x.png"], "no such directory"),
    (["{mnist}", "faces", "--attrs", "12", "--out", "{tmp}/x.png"], "digits 0-9"),
])
def test_bad_inputs_are_one_line_and_exit_1(runs, tmp_path, capsys, argv, msg):
    (tmp_path / "empty").mkdir()
    subs = {"nowhere": str(tmp_path / "none"), "empty": str(tmp_path / "empty"), "tmp": str(tmp_path),
            **{k: str(v) for k, v in runs.items()}}
    assert main([a.format(**subs) for a in argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and msg in err and err.count("\n") == 1, err


@pytest.mark.parametrize("variant", ["kl", "jmvae"])
def test_celeba_runs_evaluate_both_directions(runs, capsys, variant):
    """Issue 6: the conditional log-likelihoods of CelebA runs, both ways, through the evaluation command
    (Gaussian decoders with fixed variance: attr->image sums over all 3*32*32 pixels)."""
    from jmvae_cupy.evaluate import main as evaluate_main

    assert evaluate_main([str(runs[variant]), "--test-size", "3", "--json", "--samples", "2", "--iterations", "1",
                          "--importance", "2"]) == 0
    res = json.loads(capsys.readouterr().out)[0]
    assert res["test_size"] == 3
    for d in ("label2image", "image2label"):
        ests = res["estimates"][d]
        assert ests and all(np.isfinite(v["mean"]) for v in ests.values())
    paper = "eq5-unimodal" if variant == "kl" else "eq5-iter1"
    # a fixed-variance Gaussian over 3*32*32 pixels costs at least 0.5*log(2 pi) nats a pixel
    assert res["estimates"]["label2image"][paper]["mean"] < -0.9 * 3 * 32 * 32
    assert res["dataset"] == "celeba"
    if variant == "kl":  # the table's footer names what was evaluated
        assert evaluate_main([str(runs[variant]), "--test-size", "2", "--samples", "1", "--iterations", "1",
                              "--importance", "1"]) == 0
        assert "(test faces: 2;" in capsys.readouterr().out


# ------------------------------------------------------------------ audit fixes: one line, never a traceback
def _one_line(capsys, msg):
    err = capsys.readouterr().err
    assert err.startswith("error: ") and msg in err and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("argv,msg", [
    (["{kl}", "faces", "--attrs", "Smiling,Male", "--out", "{tmp}"], "is a directory"),
    (["{kl}", "faces", "--attrs", "Smiling", "--out", "{tmp}/x.jpg"], "must name a .png file"),
    (["{kl}", "edit", "--image-index", "0", "--set", "Smiling=1", "--out", "{tmp}/x"], "must name a .png file"),
    (["{kl}", "faces", "--attrs", "Smiling", "--strength", "1e300", "--out", "{tmp}/x.png"],
     "--strength must be a finite number within the range of the model's float32"),
    (["{kl}", "edit", "--image-index", "0", "--set", "Smiling=1e300", "--out", "{tmp}/x.png"],
     "the value of Smiling must be a finite number within the range of the model's float32"),
    (["{kl}", "edit", "--image-index", "0", "--set", "Smiling=-inf", "--out", "{tmp}/x.png"], "finite number"),
])
def test_bad_out_and_out_of_range_values_are_one_line(runs, tmp_path, capsys, argv, msg):
    """--out a directory was an IsADirectoryError, --out x.jpg silently wrote PNG bytes; --strength 1e300 /
    --set Smiling=1e300 are finite in float64 but inf in the model's float32 (an all-NaN grid, exit 0)."""
    subs = {"tmp": str(tmp_path), **{k: str(v) for k, v in runs.items()}}
    assert main([a.format(**subs) for a in argv]) == 1
    _one_line(capsys, msg)
    assert not list(tmp_path.glob("x*")) and not list(tmp_path.glob(".tmp-*"))


@pytest.mark.parametrize("argv,msg", [
    (["faces", "--attrs", "Smiling", "--seed", "-1", "--out", "{tmp}/x.png"], "argument --seed: must be an integer"),
    (["attributes", "--image-index", "0", "--seed", "-3"], "argument --seed: must be an integer >= 0, got -3"),
    (["faces", "--attrs", "Smiling", "--strength", "inf", "--out", "{tmp}/x.png"], "--strength: must be a finite"),
    (["faces", "--attrs", "Smiling", "--strength", "nan", "--out", "{tmp}/x.png"], "--strength: must be a finite"),
])
def test_negative_seeds_and_non_finite_strengths_stop_at_the_parser(runs, tmp_path, capsys, argv, msg):
    """A negative seed was NumPy's ValueError traceback; --strength inf / nan wrote a blank PNG, exit 0."""
    with pytest.raises(SystemExit) as e:
        main([str(runs["kl"])] + [a.format(tmp=tmp_path) for a in argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and msg in err.strip().splitlines()[-1], err
    assert not (tmp_path / "x.png").exists()


def test_an_unwritable_out_directory_is_refused_before_any_work(runs, tmp_path, capsys, monkeypatch):
    """(A read-only directory: PermissionError traceback.)  Checked before the run is loaded, by making the
    temporary file the atomic write would make; a write that fails at the end is named by --out too."""
    import errno

    import jmvae_cupy.generate as G
    from jmvae_cupy import fsutil

    def refuse(directory, prefix, suffix=".tmp"):
        raise PermissionError(errno.EACCES, "Permission denied", str(directory) + "/" + prefix + "abc" + suffix)

    monkeypatch.setattr(fsutil, "temp_beside", refuse)  # (the probe: fsutil.probe_writable)
    monkeypatch.setattr(G, "Run", lambda *a, **k: pytest.fail("the run was loaded before --out was checked"))
    assert main([str(runs["kl"]), "faces", "--attrs", "Smiling", "--out", str(tmp_path / "x.png")]) == 1
    _one_line(capsys, f"--out {tmp_path / 'x.png'}: cannot write in {tmp_path} (Permission denied)")
    monkeypatch.undo()

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / ".tmp-xyz.png"))

    monkeypatch.setattr(G, "save_grid", full)
    assert main([str(runs["kl"]), "faces", "--attrs", "Smiling", "--out", str(tmp_path / "x.png")]) == 1
    _one_line(capsys, f"--out {tmp_path / 'x.png'}: cannot write (No space left on device)")


def test_output_that_is_not_finite_is_refused_not_written(runs, tmp_path, capsys, monkeypatch):
    import jmvae_cupy.generate as G

    real = G.average_and_random
    monkeypatch.setattr(G, "average_and_random", lambda *a, **k: (lambda r: (r[0] * np.nan, r[1]))(real(*a, **k)))
    out = tmp_path / "x.png"
    assert main([str(runs["kl"]), "faces", "--attrs", "Smiling", "--out", str(out)]) == 1
    _one_line(capsys, "the generated grid is not finite (NaN or inf), nothing written")
    assert not out.exists()


def test_faces_shows_progress_on_stderr_unless_no_progress(runs, tmp_path, capsys, monkeypatch):
    import jmvae_cupy.generate as G

    monkeypatch.setattr(G, "PROGRESS_DELAY", 0.0)  # (1 s by default: quick commands show no bar)
    out = tmp_path / "x.png"
    assert main([str(runs["mnist"]), "faces", "--attrs", "3", "--samples", "3", "--out", str(out)]) == 0
    cap = capsys.readouterr()
    assert "faces:" in cap.err and "/4 " in cap.err and cap.out.startswith(f"wrote {out}")  # rows: 1 + 3
    assert main([str(runs["mnist"]), "faces", "--attrs", "3", "--samples", "3", "--out", str(out),
                 "--no-progress"]) == 0
    assert capsys.readouterr().err == ""


def test_ctrl_c_is_one_line_and_exit_130(runs, tmp_path, capsys, monkeypatch):
    import jmvae_cupy.generate as G

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(G, "average_and_random", interrupted)
    assert main([str(runs["kl"]), "faces", "--attrs", "Smiling", "--out", str(tmp_path / "x.png")]) == 130
    assert capsys.readouterr().err == "error: interrupted\n"


DAMAGE = {  # what a config.json holds -> what the one line says
    "[]": "not a jmvae_cupy training config (an array, not a JSON object)",
    '"x"': "not a jmvae_cupy training config (a string, not a JSON object)",
    "DIR": "is a directory",
    '{"latent": "64"}': '"latent" must be an integer >= 1, not "64"',
    '{"seed": "a"}': '"seed" must be an integer >= 0, not "a"',
    '{"seed": -1}': '"seed" must be an integer >= 0, not -1',
    '{"dtype": "float16"}': '"dtype" must be "float32" or "float64"',
    '{"alpha": NaN}': '"alpha" must be a finite number >= 0, not NaN',
    '{"dataset": null}': '"dataset" must be "mnist", "celeba" or "data"',
    "{": "not valid JSON",
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_config_is_one_line_naming_the_file_in_generate_evaluate_and_figures(runs, tmp_path, capsys,
                                                                                       damage):
    """[] / "x" were AttributeErrors, a directory an IsADirectoryError, "latent": "64" a TypeError, "seed": "a"
    a ValueError, a negative seed NumPy's ValueError: the three commands read run directories through
    runs.read_config."""
    import shutil

    from jmvae_cupy.evaluate import main as evaluate_main

    run = tmp_path / "run"
    shutil.copytree(runs["mnist"], run)
    cpath = run / "config.json"
    if damage == "DIR":
        cpath.unlink()
        cpath.mkdir()
    elif damage.startswith("{") and damage.endswith("}"):
        cpath.write_text(json.dumps({**json.loads(cpath.read_text()), **json.loads(damage)}))
    else:
        cpath.write_text(damage)
    assert main([str(run), "attributes", "--image-index", "0"]) == 1
    _one_line(capsys, f"{cpath}: {DAMAGE[damage]}")
    assert evaluate_main([str(run), "--test-size", "5", "--no-progress"]) == 1
    _one_line(capsys, f"{cpath}: {DAMAGE[damage]}")
    assert evaluate_main(["figures", str(run), "--out", str(tmp_path / "figs")]) == 1
    _one_line(capsys, f"{cpath}: {DAMAGE[damage]}")
    assert not (tmp_path / "figs").exists()


def test_figures_of_a_celeba_run_say_they_are_for_mnist(runs, tmp_path, capsys):
    """Was a matmul ValueError (40 attributes for the MNIST figures' 10 labels), after creating --out."""
    from jmvae_cupy.evaluate import main as evaluate_main

    assert evaluate_main(["figures", str(runs["kl"]), "--out", str(tmp_path / "fc")]) == 1
    _one_line(capsys, f"{runs['kl']}: figures are for MNIST runs, and this is a CelebA run")
    assert not (tmp_path / "fc").exists()


def test_jmvae_h_generates_along_the_chosen_path(tmp_path, capsys):
    """--path top generates through the top layer (z2 ~ q(z2|x^,w), z1 ~ p(z1|z2)): other digits than
    --path z1 from the same seed; --path on a model without a top layer is one line."""
    run = tmp_path / "h"
    assert train_main(["mnist", "--variant", "h", "--epochs", "1", "--train-subset", "200", "--latent", "4",
                       "--no-progress", "--device", "cpu", "--out", str(run)]) == 0
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    assert main([str(run), "faces", "--attrs", "3,7", "--out", str(a), "--no-progress"]) == 0
    assert main([str(run), "faces", "--attrs", "3,7", "--out", str(b), "--path", "top", "--no-progress"]) == 0
    assert _png(a).shape == _png(b).shape and not np.array_equal(_png(a), _png(b))
    capsys.readouterr()
    assert main([str(tmp_path / "h"), "attributes", "--image-index", "0", "--path", "top", "--json"]) == 0
    assert abs(sum(json.loads(capsys.readouterr().out)["predicted"].values()) - 1) < 1e-4
    kl = tmp_path / "kl"
    assert train_main(["mnist", "--epochs", "1", "--train-subset", "200", "--latent", "4", "--no-progress",
                       "--device", "cpu", "--out", str(kl)]) == 0
    assert main([str(kl), "attributes", "--image-index", "0", "--path", "top"]) == 1
    assert "--path top applies to JMVAE-h runs" in capsys.readouterr().err
