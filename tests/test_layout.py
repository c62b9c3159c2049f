"""The README's layout section is the tree: every package of ours is listed, with exactly its modules."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("graphs", "nodes", "agents", "checkpoints", "server")


def readme_tree() -> dict[str, set[str]]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Layout") :]
    block = re.search(r"```\n(.*?)```", section, flags=re.S)
    assert block is not None, "the layout section has no tree"
    tree: dict[str, set[str]] = {}
    for line in block.group(1).splitlines():
        folder, *modules = line.split()
        tree[folder.rstrip("/")] = set(modules)
    return tree


def code_tree() -> dict[str, set[str]]:
    tree: dict[str, set[str]] = {}
    for package in PACKAGES:
        for init in (ROOT / package).rglob("__init__.py"):
            folder = init.parent
            tree[folder.relative_to(ROOT).as_posix()] = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
    return tree


def test_the_readme_layout_is_the_code_tree() -> None:
    listed, actual = readme_tree(), code_tree()
    assert listed.keys() == actual.keys(), f"packages: README {sorted(listed)}, code {sorted(actual)}"
    wrong = {
        folder: (sorted(listed[folder]), sorted(actual[folder]))
        for folder in actual
        if listed[folder] != actual[folder]
    }
    assert not wrong, f"modules that differ (README, code): {wrong}"
