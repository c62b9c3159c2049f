"""Process variables: values with a version each, so every change can be audited and parallel branches
merge without losing a sibling's update (see ``nodes.gateways.merge_variables``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from checkpoints.errors import InvalidInputError
from nodes.criteria import lookup

Cell = dict[str, Any]  # {"value": …, "version": n}
_MISSING = lookup({}, "missing")
# The longest name a variable may have (Camunda 7 keeps a name in 255 characters too).
MAX_NAME = 255
# A variable no start or set may name: the instance's own, given as a start's business key.
BUSINESS_KEY = "business_key"


def check_names(variables: Mapping[Any, Any], *, set_later: bool = False) -> None:
    """Refuse (:class:`InvalidInputError`) variables a start or a set (``set_later``) gives a process instance under a
    name it cannot take: not a non-empty string of at most :data:`MAX_NAME` characters, or ``business_key``, which is
    the instance's own (a start gives it as its business key)."""
    for name in variables:
        if not isinstance(name, str) or not name or len(name) > MAX_NAME:
            shown = name[:40] + "…" if isinstance(name, str) and len(name) > 40 else name
            raise InvalidInputError(
                f"variable name {shown!r} is not a non-empty string of at most {MAX_NAME} characters", name=str(shown)
            )
        if name == BUSINESS_KEY:
            where = "start a new instance" if set_later else "give it as the start's business_key"
            raise InvalidInputError(f"business_key is the instance's own and is not a variable to give; {where}")


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
