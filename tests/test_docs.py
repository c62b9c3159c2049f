"""Every Python block of the README and of docs/ is executed, so the docs cannot rot (the notebooks are
executed by tests/test_notebooks.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [
    (f"{path.stem}-{i}", block)
    for path in DOCS
    for i, block in enumerate(re.findall(r"```python\n(.*?)```", path.read_text(), re.S))
]
README_BLOCKS = [block for name, block in BLOCKS if name.startswith("README-")]


def test_the_docs_have_examples() -> None:
    assert len(README_BLOCKS) >= 4


@pytest.mark.slow
@pytest.mark.parametrize("block", [b for _name, b in BLOCKS], ids=[name for name, _b in BLOCKS])
def test_docs_block_runs(block: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
