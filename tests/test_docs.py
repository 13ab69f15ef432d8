"""The README's and the doc pages' code runs as written, and the main example reaches its
accuracy."""

import pathlib
import re
import sys
from unittest.mock import patch

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _blocks(path: str = "README.md") -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / path).read_text(), re.S)


@pytest.mark.parametrize("code", _blocks())
def test_readme_python_blocks_run(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks may write files
    exec(compile(code, "README.md", "exec"), {"__name__": "__main__"})  # as a script runs them


@pytest.mark.parametrize("page", sorted(p.name for p in (ROOT / "docs").glob("*.md")))
def test_doc_page_python_blocks_run_in_order(page, tmp_path, monkeypatch):
    """A page's blocks share one namespace, as a reader runs them one after another."""
    from nodegrad.primitive import REGISTRY

    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    with patch.dict(REGISTRY):  # a page may define its own primitive; other tests enumerate them
        for code in _blocks(f"docs/{page}"):
            exec(compile(code, f"docs/{page}", "exec"), ns)


def test_readme_quick_start_commands_exist():
    text = (ROOT / "README.md").read_text()
    for doc in [text, *(p.read_text() for p in (ROOT / "docs").glob("*.md"))]:
        for path in re.findall(r"python ((?:examples|benchmarks)/\S+\.py)", doc):
            assert (ROOT / path).exists(), path


def test_quick_start_trains_with_the_nodegrad_command():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start\n\n```bash\n(.*?)```", text, re.S).group(1)
    assert block.splitlines()[0].startswith("pip install . && nodegrad train")
    assert 'nodegrad = "nodegrad.cli:main"' in (ROOT / "pyproject.toml").read_text()


def test_fit_1d_regression_example_learns():
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import fit_1d_regression
    finally:
        sys.path.pop(0)
    mse = fit_1d_regression.main(["--steps", "1500"])
    assert mse < 0.03  # the noise floor is 0.01; an untrained network gives about 1
