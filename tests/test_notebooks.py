"""Every notebook is committed with its outputs and pictures, and executed, so the notebooks cannot rot.

A notebook passes when no cell fails and nothing went wrong out of its sight, as a docs block does in
tests/test_docs.py: an agent the runtime calls in the background (a timer's escalation, a retried attempt) is
logged, not raised, so a notebook whose agent failed so ran without an error. Its kernel notes every warning
or error logged, every unraisable exception and every Python warning (tests/docs_harness.py), and the test
fails on any but those the notebook expects (``EXPECTED``).

Apart from tests/test_docs.py (the README's and docs/' Python blocks), so that `dev.py ci` can share the
notebooks out among the newer Pythons like the server tests, while each of them runs every README example."""

from __future__ import annotations

import json
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.docs_harness import BROKEN_NOTICES, broken_in_the_background, check_noticed

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
# The log lines a notebook that fails an agent on purpose expects (each an event and the intent it names, as
# test_docs.py's "docs-test expects"); any other warning or error fails it. These three show a saga whose
# transform_data fails for good (a FailingAgent) and is compensated.
SAGA_FAILS = ["agent attempt failed: transform_data", "agent call failed: transform_data"]
EXPECTED: dict[str, list[str]] = {"quickstart": SAGA_FAILS, "structured_and_saga": SAGA_FAILS, "operations": SAGA_FAILS}


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


def executed(notebook: nbformat.NotebookNode, where: Path, expects: list[str]) -> None:
    """Run ``notebook`` top to bottom in a kernel working in ``where``, as a person would; fails if a cell
    failed or if the kernel noticed a warning or error other than those ``expects`` names (and each of them
    must appear). Its cells keep their outputs."""
    report = where / "noticed.json"
    watch = nbformat.v4.new_code_cell("from tests.docs_harness import noticing\n_noticed = noticing()")
    dump = nbformat.v4.new_code_cell(f"import json\nwith open({str(report)!r}, 'w') as f: json.dump(_noticed, f)")
    cells = notebook.cells
    notebook.cells = [watch, *cells, dump]
    try:
        NotebookClient(
            notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(where)}}
        ).execute()
    finally:
        notebook.cells = cells
    errors = [o for c in cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    check_noticed(json.loads(report.read_text()), expects, "the notebook")


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the kernel is a child process; works without an install too
    notebook = nbformat.read(path, as_version=4)
    started = time.monotonic()
    executed(notebook, tmp_path, EXPECTED.get(path.stem, []))
    took = time.monotonic() - started
    assert took < NOTEBOOK_SECONDS, f"{path.name} took {took:.0f} s"


@pytest.mark.slow
def test_a_notebook_whose_agent_fails_in_the_background_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    cell = nbformat.v4.new_code_cell(broken_in_the_background(cell=True))
    notebook = nbformat.v4.new_notebook(cells=[cell])
    with pytest.raises(AssertionError, match="timer failed to fire"):
        executed(notebook, tmp_path, [])
    executed(notebook, tmp_path, BROKEN_NOTICES)  # a notebook that expects them passes
