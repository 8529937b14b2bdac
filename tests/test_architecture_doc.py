"""docs/architecture.md quotes the training step and loop as they are in the code: each ```python
block of the page is, line for line, a function of jmvae_cupy/train/ (a change to the loop that
leaves the page behind fails here)."""

import inspect
import pathlib
import re
import textwrap

from jmvae_cupy.train import step, trainer

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def quoted_blocks() -> list:
    return re.findall(r"```python\n(.*?)\n```", DOC.read_text(encoding="utf-8"), flags=re.S)


def test_the_page_quotes_the_step_and_the_loop():
    blocks = [textwrap.dedent(b) for b in quoted_blocks()]
    code = [textwrap.dedent(inspect.getsource(f)).rstrip("\n")
            for f in (step.train_step, trainer.Trainer.fit, trainer.Trainer.train_epoch)]
    assert blocks == code


def test_the_page_names_every_file_it_lists():
    root = DOC.parents[1]
    text = DOC.read_text(encoding="utf-8")
    for path in re.findall(r"`((?:[a-z_]+/)*[a-z_]+\.py)`", text):
        found = list((root / "jmvae_cupy").rglob(path)) + list((root / "kernels").rglob(path)) + \
            ([root / path] if (root / path).exists() else [])
        assert found, path
