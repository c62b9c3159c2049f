"""Every notebook is committed with its outputs and pictures, and executed, so the notebooks cannot rot.

Apart from tests/test_docs.py (the README's and docs/' Python blocks), so that `dev.py ci` can share the
notebooks out among the newer Pythons like the server tests, while each of them runs every README example."""

from __future__ import annotations

import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
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


def test_the_notebooks_are_there() -> None:
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
