"""The docs' own-data example (docs/data.md, "Example: scikit-learn's digits"): the script writes a
valid paired file and the example's model config fits it.  scikit-learn is the ``examples`` extra:
without it the test skips."""

import importlib.util
import os

import numpy as np
import pytest

from jmvae_cupy.data.__main__ import main as data_main
from jmvae_cupy.data.paired import open_paired

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "docs", "examples")


def test_the_digits_example_writes_a_file_its_config_fits(tmp_path, capsys):
    pytest.importorskip("sklearn", reason="scikit-learn (the examples extra) is not installed")
    spec = importlib.util.spec_from_file_location("digits_example", os.path.join(EXAMPLES, "digits.py"))
    digits = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(digits)
    assert digits.main(["--out", str(tmp_path / "digits.h5")]) == 0
    d = open_paired(tmp_path / "digits.h5")
    assert d.x.shape == (1797, 1, 8, 8) and d.w_dim == 10 and d.w_names == [str(k) for k in range(10)]
    assert d.x_stats["min"] == 0 and d.x_stats["max"] == 1 and d.w_stats["one_hot"]
    assert (len(d.train_idx), len(d.test_idx)) == (1617, 180)
    assert np.array_equal(d.w.argmax(1)[:10], np.arange(10))  # sklearn's first ten digits are 0..9
    capsys.readouterr()
    assert data_main(["check", str(tmp_path / "digits.h5"), "--config", os.path.join(EXAMPLES, "digits.toml")]) == 0
    out = capsys.readouterr().out
    assert "x  bernoulli; encoder F-D256R-D256R; decoder D256R-D256R-D64" in out and "kl, latent 2" in out
