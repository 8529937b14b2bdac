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


def test_the_page_names_every_file_of_the_library():
    """Each module (package __init__ files aside) has its line in "Every file, and what it owns"."""
    root = DOC.parents[1]
    text = DOC.read_text(encoding="utf-8").split("## Every file, and what it owns", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"^\| `([^`]+\.py)` \|", text, flags=re.M))
    files = {str(p.relative_to(root / "jmvae_cupy")) for p in (root / "jmvae_cupy").rglob("*.py")} | \
        {str(p.relative_to(root)) for p in (root / "kernels").rglob("*.py")}
    files = {f for f in files if not f.endswith("__init__.py") and f.split("/")[-1] != "__main__.py"
             or f == "data/__main__.py"}
    assert not files - named, f"not in docs/architecture.md: {sorted(files - named)}"
    assert not named - files, f"named but not in the library: {sorted(named - files)}"
