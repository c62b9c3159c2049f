"""Every Python block of the README and of docs/ is executed, so the docs cannot rot (the notebooks are
executed by tests/test_notebooks.py).

A block passes when it exits 0 and nothing went wrong out of its sight: an agent the runtime calls in the
background (a timer's escalation, a retried attempt, a step that fails for good) is logged, not raised, so a
block with a broken agent exited 0 and passed. A block that fails an agent on purpose says which log lines it
expects, each an event and the intent it names, in an HTML comment just above it
(``<!-- docs-test expects: agent attempt failed: quote; agent call failed: quote -->``): each must appear, and
nothing else may."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.docs_harness import BROKEN_NOTICES, broken_in_the_background, check_noticed

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(?:<!-- docs-test expects: (.*?) -->\n)?```python\n(.*?)```", re.S)
BLOCKS = [
    (f"{path.stem}-{i}", block, sorted({e.strip() for e in (expects or "").split(";") if e.strip()}))
    for path in DOCS
    for i, (expects, block) in enumerate(BLOCK.findall(path.read_text()))
]
README_BLOCKS = [block for name, block, _expects in BLOCKS if name.startswith("README-")]


def run_block(block: str, where: Path) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    """Run ``block`` as a user would (``python block.py``, in ``where``), with what it logged, its unraisable
    errors and its warnings (tests/docs_harness.py)."""
    (where / "block.py").write_text(block)
    command = [sys.executable, "-m", "tests.docs_harness", "block.py", "noticed.json"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=where, env=env, capture_output=True, text=True, timeout=120)
    noticed = json.loads((where / "noticed.json").read_text()) if (where / "noticed.json").exists() else []
    return done, noticed


def test_the_docs_have_examples() -> None:
    assert len(README_BLOCKS) >= 4


@pytest.mark.slow
@pytest.mark.parametrize(("block", "expects"), [b[1:] for b in BLOCKS], ids=[b[0] for b in BLOCKS])
def test_docs_block_runs(block: str, expects: list[str], tmp_path: Path) -> None:
    done, noticed = run_block(block, tmp_path)
    assert done.returncode == 0, done.stderr
    check_noticed(noticed, expects, "the block")


@pytest.mark.slow
def test_a_block_whose_agents_fail_in_the_background_is_caught(tmp_path: Path) -> None:
    """How docs/seed-examples.md's broken escalation passed: the block exited 0. Its failures are noticed now."""
    done, noticed = run_block(broken_in_the_background(cell=False), tmp_path)
    assert done.returncode == 0, done.stderr
    with pytest.raises(AssertionError, match="timer failed to fire"):
        check_noticed(noticed, [], "the block")
    check_noticed(noticed, BROKEN_NOTICES, "the block")
    failed = next(line for line in noticed if line["event"] == "timer failed to fire")
    assert "task_id" in failed["error"]
