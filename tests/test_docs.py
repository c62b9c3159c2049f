"""Every Python block of the README and of docs/, and every notebook, is executed, so the docs cannot rot."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [
    (f"{path.stem}-{i}", block)
    for path in DOCS
    for i, block in enumerate(re.findall(r"```python\n(.*?)```", path.read_text(), re.S))
]
README_BLOCKS = [block for name, block in BLOCKS if name.startswith("README-")]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# What a person would rather look at than read: the picture each notebook shows (committed with its outputs,
# so the repository pages show them).
PICTURES = {
    "structured_and_saga": "image/svg+xml",  # the journey graph, current node highlighted
    "processes": "image/svg+xml",
    "session_and_mvp": "image/png",  # the MVP progress chart
    "client_lifecycle": "image/png",  # the stage timeline over 30 days
    "operations": "image/png",  # the dashboard's counts
}
NOTEBOOK_SECONDS = 60


def test_the_docs_have_examples() -> None:
    assert len(README_BLOCKS) >= 4
    assert {p.stem for p in NOTEBOOKS} == {"quickstart", "server_with_langgraph_sdk", *PICTURES}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebooks_are_committed_with_their_outputs_and_pictures(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert outputs, f"{path.name} is committed without its outputs"
    assert not [o for o in outputs if o.output_type == "error"]
    if path.stem in PICTURES:
        assert any(PICTURES[path.stem] in o.get("data", {}) for o in outputs), f"{path.name} shows no picture"


@pytest.mark.slow
@pytest.mark.parametrize("block", [b for _name, b in BLOCKS], ids=[name for name, _b in BLOCKS])
def test_docs_block_runs(block: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the kernel is a child process; works without an install too
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    started = time.monotonic()
    client.execute()
    took = time.monotonic() - started
    errors = [
        o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"
    ]
    assert not errors
    assert took < NOTEBOOK_SECONDS, f"{path.name} took {took:.0f} s"
