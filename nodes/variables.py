"""Process variables: values with a version each, so every change can be audited and parallel branches
merge without losing a sibling's update (see ``nodes.gateways.merge_variables``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nodes.criteria import lookup

Cell = dict[str, Any]  # {"value": …, "version": n}
_MISSING = lookup({}, "missing")


def values(cells: Mapping[str, Cell] | None) -> dict[str, Any]:
    return {name: cell["value"] for name, cell in (cells or {}).items()}


def assign(
    cells: Mapping[str, Cell] | None, updates: Mapping[str, Any]
) -> tuple[dict[str, Cell], list[dict[str, Any]]]:
    """The new cells for ``updates`` and the change records (name, value, version) for the audit trail.

    Assigning a variable the value it already has is no change: its version stays.
    """
    current = cells or {}
    changed: dict[str, Cell] = {}
    changes: list[dict[str, Any]] = []
    for name, value in updates.items():
        cell = current.get(name)
        if cell is not None and cell["value"] == value:
            continue
        version = int(cell["version"]) + 1 if cell is not None else 1
        changed[name] = {"value": value, "version": version}
        changes.append({"name": name, "value": value, "version": version})
    return changed, changes


def pick(mapping: Mapping[str, str] | None, document: Mapping[str, Any]) -> dict[str, Any]:
    """Variables taken from ``document``: ``variable → field`` (dotted paths allowed); None takes every field."""
    if mapping is None:
        return dict(document)
    found = {}
    for variable, field in mapping.items():
        value = lookup(document, field)
        if value is not _MISSING:
            found[variable] = value
    return found
