"""Training on paired data of your own (``train data --data FILE [--config CFG]``) end to end, on
small synthetic files: every likelihood a config can choose, on x and on w, trains, resumes bit for
bit, and evaluates; a file alone (every key inferred) trains, generates and draws its figures;
the run records its model, so evaluate and generate need nothing but the run directory."""

import json

import numpy as np
import pytest

from jmvae_cupy import checkpoint, evaluate, figures, generate
from jmvae_cupy.data.paired import write_paired
from jmvae_cupy.train import main

FAST = ["--device", "cpu", "--no-progress", "--sample-every", "1"]
LIKELIHOODS = ("bernoulli", "categorical", "gaussian_fixed", "gaussian_learned")


def values(lik: str, shape, r) -> np.ndarray:
    """Synthetic data a likelihood fits: {0, 1}, one-hot rows, or real numbers."""
    if lik == "bernoulli":
        return (r.random(shape) < 0.4).astype(np.uint8)
    if lik == "categorical":
        return np.eye(shape[1], dtype=np.float32)[r.integers(0, shape[1], shape[0])]
    return r.standard_normal(shape).astype(np.float32) * 2 + 1


def tiny_config(x_lik, w_lik, variant, fmt):
    """A model config of tiny networks, written as TOML or JSON text."""
    cfg = {"variant": variant, "latent": 2,
           "x": {"likelihood": x_lik, "encoder": "D8R", "decoder": "D8R"},
           "w": {"likelihood": w_lik, "encoder": "D8R", "decoder": "D8R"},
           "jmvae_h": {"prior_z1": "D8R", "chain": "D4-D8R"},
           "train": {"batch_size": 8, "warmup": 1, "lr": 3e-3}}
    for m, lik in (("x", x_lik), ("w", w_lik)):
        if lik == "gaussian_fixed":
            cfg[m]["variance"] = 0.5
    if fmt == "json":
        return json.dumps(cfg)
    lines = [f'variant = "{variant}"', "latent = 2"]
    for sec in ("x", "w", "jmvae_h", "train"):
        lines.append(f"[{sec}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in cfg[sec].items()]
    return "\n".join(lines) + "\n"


# every likelihood on x and on w (each pair once), the three variants and both formats in turn
CASES = [(x, w, ("jmvae", "kl", "h")[(i + j) % 3], ("toml", "json")[i % 2], (".h5", ".npz")[j % 2])
         for i, x in enumerate(LIKELIHOODS) for j, w in enumerate(LIKELIHOODS)]


def _params(run):
    ck = checkpoint.load(checkpoint.list_checkpoints(str(run))[0])
    return ck["params"], ck["adam_m"], ck["meta"]


@pytest.mark.parametrize("x_lik, w_lik, variant, fmt, ext", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_each_likelihood_pair_trains_resumes_bit_for_bit_and_evaluates(tmp_path, capsys, x_lik, w_lik, variant, fmt,
                                                                        ext):
    r = np.random.default_rng(len(x_lik) * 7 + len(w_lik))
    data = tmp_path / f"pairs{ext}"
    split = np.array(["train"] * 20 + ["test"] * 6) if ext == ".h5" else None
    write_paired(data, values(x_lik, (26, 5), r), values(w_lik, (26, 3), r), split=split)
    cfg = tmp_path / f"model.{fmt}"
    cfg.write_text(tiny_config(x_lik, w_lik, variant, fmt))
    a, b = tmp_path / "a", tmp_path / "b"
    args = ["data", "--data", str(data), "--config", str(cfg)] + FAST
    assert main(args + ["--epochs", "2", "--out", str(a)]) == 0
    assert main(args + ["--epochs", "1", "--out", str(b)]) == 0
    assert main(args + ["--epochs", "2", "--out", str(b), "--resume"]) == 0
    pa, ma, meta = _params(a)
    pb, mb, _ = _params(b)
    assert meta["epoch"] == 2 and set(pa) == set(pb)
    assert all(np.array_equal(pa[k], pb[k]) and np.array_equal(ma[k], mb[k]) for k in pa)
    ra, rb = ([json.loads(ln) for ln in open(d / "metrics.jsonl")] for d in (a, b))
    assert ra == [{**x, "seconds": y["seconds"]} for x, y in zip(rb, ra)] and len(ra) == 2
    run_cfg = json.load(open(a / "config.json"))
    assert (run_cfg["model"]["x"]["likelihood"], run_cfg["model"]["w"]["likelihood"]) == (x_lik, w_lik)
    assert run_cfg["variant"] == variant and run_cfg["batch_size"] == 8 and meta["config"] == run_cfg
    capsys.readouterr()
    assert evaluate.main([str(a), "--json", "--samples", "2", "--iterations", "1", "--no-progress"]) == 0
    res = json.loads(capsys.readouterr().out)[0]
    assert res["test_size"] == (6 if ext == ".h5" else 3)
    cells = [v["mean"] for est in res["estimates"].values() for v in est.values()]
    assert set(res["estimates"]) == {"label2image", "image2label"} and cells and np.all(np.isfinite(cells))


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """A file alone, nothing configured: 8x8 grey images in [0, 16] (not 0/1: a fixed-variance Gaussian)
    with one-hot classes (categorical) and their names; narrow nets (--width-scale), a 2-D latent."""
    root = tmp_path_factory.mktemp("img")
    r = np.random.default_rng(3)
    labels = r.integers(0, 3, 40)
    x = np.stack([np.full((1, 8, 8), 5.0 * k) + r.integers(0, 2, (1, 8, 8)) for k in labels])
    write_paired(root / "img.h5", x, np.eye(3)[labels], w_names=["zero", "five", "ten"])
    out = root / "run"
    assert main(["data", "--data", str(root / "img.h5"), "--width-scale", "0.0625", "--latent", "2", "--epochs", "1",
                 "--variant", "jmvae", "--out", str(out)] + FAST) == 0
    return out


def test_a_file_alone_trains_with_the_model_inferred_from_it(image_run):
    cfg = json.load(open(image_run / "config.json"))
    m = cfg["model"]
    assert (m["x"]["likelihood"], m["w"]["likelihood"], m["x_shape"]) == ("gaussian_fixed", "categorical", [1, 8, 8])
    assert m["x"]["encoder"] == "C4R-F" and m["joint"] == "D64R"  # the CelebA stack at 8x8, width 1/16
    assert (cfg["lr"], cfg["batch_size"]) == (1e-4, 36)  # the CelebA setup's, the batch at most the 36 rows
    assert (image_run / "samples-e0001.png").exists()


def test_generate_and_figures_on_a_paired_run(image_run, tmp_path, capsys):
    assert generate.main([str(image_run), "faces", "--attrs", "five,ten", "--out", str(tmp_path / "f.png"),
                          "--no-progress"]) == 0
    assert generate.main([str(image_run), "faces", "--from-test", "2", "--out", str(tmp_path / "f.npz"),
                          "--no-progress"]) == 0
    z = np.load(tmp_path / "f.npz")
    assert z["average"].shape == (2, 8, 8) and z["random"].shape == (4, 2, 8, 8) and z["test_x"].shape == (2, 8, 8)
    capsys.readouterr()
    assert generate.main([str(image_run), "attributes", "--image-index", "0", "--json"]) == 0
    p = json.loads(capsys.readouterr().out)["predicted"]
    assert set(p) == {"zero", "five", "ten"} and abs(sum(p.values()) - 1) < 1e-4
    assert generate.main([str(image_run), "faces", "--attrs", "seven", "--out", str(tmp_path / "g.png")]) == 1
    assert "unknown label 'seven': this run's classes are zero, five, ten" in capsys.readouterr().err
    assert figures.main([str(image_run), "--out", str(tmp_path / "figs"), "--no-progress"]) == 0
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["gen-run.png", "latent.png"]


def test_vectors_generate_arrays_and_a_changed_config_does_not_resume(tmp_path, capsys):
    r = np.random.default_rng(5)
    write_paired(tmp_path / "v.npz", values("gaussian_fixed", (24, 4), r), values("categorical", (24, 2), r))
    cfg = tmp_path / "m.json"
    cfg.write_text(tiny_config("gaussian_learned", "categorical", "kl", "json"))
    run = tmp_path / "run"
    args = ["data", "--data", str(tmp_path / "v.npz"), "--config", str(cfg), "--out", str(run)] + FAST
    assert main(args + ["--epochs", "1"]) == 0
    assert not list(run.glob("samples-*.png"))  # x are not images: no sample PNG
    assert generate.main([str(run), "faces", "--attrs", "w1", "--out", str(tmp_path / "x.npz")]) == 0
    assert np.load(tmp_path / "x.npz")["average"].shape == (1, 4)
    assert generate.main([str(run), "faces", "--attrs", "w1", "--out", str(tmp_path / "x.png")]) == 1
    assert "are not images: name a .npz file" in capsys.readouterr().err
    cfg.write_text(cfg.read_text().replace('"D8R"', '"D16R"', 1))
    assert main(args + ["--epochs", "2", "--resume"]) == 1
    assert "other settings (model: checkpoint" in capsys.readouterr().err


def test_data_needs_its_file_and_its_file_must_be_valid(tmp_path, capsys):
    assert main(["data", "--out", str(tmp_path / "r")] + FAST) == 1
    assert "data needs --data FILE" in capsys.readouterr().err
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 no zip")
    assert main(["data", "--data", str(tmp_path / "bad.npz"), "--out", str(tmp_path / "r")] + FAST) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a readable .npz file" in err and not (tmp_path / "r").exists()
