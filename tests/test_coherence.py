"""Cross-modal coherence (jmvae_cupy/coherence.py) and evaluate --coherence.

The MNIST classifier is trained once per session (about half a minute on one core) into a
temporary cache shared by the tests below."""

import json

import numpy as np
import pytest

from jmvae_cupy import coherence as coh
from jmvae_cupy import evaluate
from jmvae_cupy.data import binarized_test_set, load_mnist, one_hot
from jmvae_cupy.data.__main__ import main as data_main
from jmvae_cupy.data.celeba import open_celeba
from tests.conftest import train_tiny
from tests.data.test_celeba import make_celeba


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("classifiers"))


@pytest.fixture(scope="module")
def mnist(cache):
    data = load_mnist()
    return data, coh.mnist_classifier(data, cache_dir=cache, log=lambda m: None)


def test_mnist_classifier_reaches_95_percent_and_comes_back_from_its_cache(mnist, cache, monkeypatch):
    data, clf = mnist
    x = binarized_test_set(data)
    assert clf.meta["test_accuracy"] >= 0.95 and clf.meta["n_test"] == 2000
    assert coh.accuracy(clf, x, data.test_y) == clf.meta["test_accuracy"]
    monkeypatch.setattr(coh, "train_classifier", lambda *a, **k: pytest.fail("retrained despite the cache"))
    again = coh.mnist_classifier(data, cache_dir=cache, log=lambda m: None)
    np.testing.assert_array_equal(again.predict(x[:300]), clf.predict(x[:300]))
    assert again.meta == clf.meta


def test_coherence_of_the_true_pairs_is_the_classifiers_accuracy(mnist):
    """A stub generator that returns the true image: coherence = the classifier's accuracy; one that
    returns the true label: 1; a constant image: exactly the share of its predicted class."""
    data, clf = mnist
    x, w = binarized_test_set(data), one_hot(data.test_y, 10, np.float32)
    c = coh.coherence(lambda xb, wb: {0: xb, 7: xb}, x, w, "label2image", clf, batch_size=300)
    assert c == {0: clf.meta["test_accuracy"], 7: clf.meta["test_accuracy"]}
    assert coh.coherence(lambda xb, wb: {0: wb}, x, w, "image2label", None) == {0: 1.0}
    shifted = coh.coherence(lambda xb, wb: {0: np.roll(wb, 1, axis=1)}, x, w, "image2label", None)
    assert shifted == {0: 0.0}
    cls = int(clf.predict(x[:1])[0])
    const = coh.coherence(lambda xb, wb: {0: np.repeat(x[:1], len(xb), 0)}, x, w, "label2image", clf)
    assert const[0] == pytest.approx(np.mean(data.test_y == cls), abs=1e-12)


def test_attribute_coherence_is_the_mean_sign_agreement():
    w = np.array([[1, -1, 1, 1], [-1, -1, 1, -1]], dtype=np.float32)
    gen = np.array([[0.3, 0.2, 2.0, 1.0], [-0.5, 0.1, -1.0, -3.0]], dtype=np.float32)  # 3/4 and 2/4 agree
    assert coh.coherence(lambda xb, wb: {0: gen}, w, w, "image2label", None) == {0: 0.625}


def test_a_cache_that_cannot_be_written_or_read_costs_only_the_cache(tmp_path):
    r = np.random.default_rng(0)
    x = r.random((60, 6)).astype(np.float32)
    y = (x[:, 0] > 0.5).astype(np.int64)
    logs = []
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    clf = coh.cached_classifier("toy", x, y, x, y, "D8R-D2", "categorical", cache_dir=str(blocker / "sub"),
                                log=logs.append, epochs=2, batch_size=20)
    assert clf.meta["test_accuracy"] >= 0 and any("kept in memory only" in m for m in logs)
    good = tmp_path / "cache"
    coh.cached_classifier("toy", x, y, x, y, "D8R-D2", "categorical", cache_dir=str(good), log=logs.append,
                          epochs=2, batch_size=20)
    (path,) = good.iterdir()
    path.write_bytes(b"damaged")
    logs.clear()
    coh.cached_classifier("toy", x, y, x, y, "D8R-D2", "categorical", cache_dir=str(good), log=logs.append,
                          epochs=2, batch_size=20)
    assert any("training it again" in m for m in logs)
    assert coh.load_classifier(str(path)).meta["name"] == "toy"  # rewritten whole


def test_celeba_attribute_classifier_on_the_fixture_layout(tmp_path):
    """The conv encoder plus 40 logits, trained on a prepared CelebA-layout file (32x32 faces,
    narrow widths), with its per-attribute accuracy on the test faces recorded."""
    names, attrs = make_celeba(tmp_path / "src", n=40)
    assert data_main(["prepare", "celeba", str(tmp_path / "src"), "--out", str(tmp_path / "c.h5"), "--size", "32",
                      "--no-progress"]) == 0
    data = open_celeba(str(tmp_path / "c.h5"))
    clf = coh.celeba_classifier(data, width=0.0625, epochs=3, cache_dir=str(tmp_path / "cache"), log=lambda m: None)
    acc = clf.meta["test_accuracy"]
    assert len(acc) == 40 and all(0.0 <= a <= 1.0 for a in acc)
    assert clf.spec.endswith("-D40") and clf.spec.startswith("C4R-C8BR-C16BR-F")
    pred = clf.predict(data.images(np.asarray(data.test_idx)))
    assert pred.shape == (len(data.test_idx), 40) and set(np.unique(pred)) <= {-1.0, 1.0}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return train_tiny(tmp_path_factory, "h")


def test_evaluate_coherence_table_and_json(tiny_run, mnist, cache, capsys):
    args = [tiny_run, "--test-size", "100", "--samples", "2", "--coherence", "--coherence-k", "0,2",
            "--classifier-cache", cache, "--no-progress"]
    assert evaluate.main(args) == 0
    out = capsys.readouterr().out
    assert "eq6-iter10-top" in out and "| K=0 | K=2 |" in out
    assert "| JMVAE-h (z2 ~ q(z2\\|x,w), z1 ~ p(z1\\|z2)) | label -> image |" in out
    assert "the ceiling, is 0.9" in out
    assert evaluate.main(args + ["--json"]) == 0
    res = json.loads(capsys.readouterr().out)[0]
    assert set(res["coherence"]) == {"label2image", "image2label"}
    assert set(res["coherence"]["label2image"]) == {"z1", "top"}
    assert set(res["coherence"]["label2image"]["top"]) == {"0", "2"}
    assert res["checkpoint"].startswith("ckpt-000001-") and res["epoch"] == 1
    assert res["classifier_accuracy"] == mnist[1].meta["test_accuracy"]
    assert evaluate.main([tiny_run, "--coherence", "--coherence-k", "1,x"]) == 1
    assert capsys.readouterr().err.strip() == "error: --coherence-k must be comma-separated integers, got '1,x'"
