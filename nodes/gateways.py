"""Gateway logic shared by validation and the graph: choosing an exclusive flow, proving that a set of
conditions covers every value, and merging what parallel branches write back."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any, cast

from nodes.criteria import Criteria

Cell = dict[str, Any]  # {"value": …, "version": n}


def choose(branches: Sequence[tuple[str, Criteria | None, bool]], variables: Mapping[str, Any]) -> str | None:
    """The target of the first flow whose conditions hold, else of the default flow (``None``: no flow holds).

    ``branches`` are ``(target, when, is_default)`` in the order the spec lists them.
    """
    for target, when, is_default in branches:
        if not is_default and when is not None and when.holds(variables):
            return target
    for target, _when, is_default in branches:
        if is_default or _when is None:
            return target
    return None


def exhaustive(conditions: Sequence[Criteria], variables_schema: Mapping[str, Any] | None) -> bool:
    """Whether some condition holds for every value the schema allows.

    Provable cases: every condition tests the same variable, and either they cover every value of its
    ``enum`` (or both booleans) with ``==`` / ``in``, or two of them split a number at one bound
    (``< x`` with ``>= x``, ``<= x`` with ``> x``; ``x`` a number: a number compared with anything else
    meets neither condition). Time linear in the enum and the values the conditions list: a design is
    judged on the server's event loop, and a 1 MiB one comparing each enum value with each listed value
    held it 94 s.
    """
    singles = [c.all[0] for c in conditions if len(c.all) == 1 and not c.any]
    if len(singles) != len(conditions) or not singles:
        return False
    field = singles[0].field
    if any(c.field != field for c in singles):
        return False
    properties = (variables_schema or {}).get("properties") or {}
    declared = properties.get(field) if isinstance(properties, Mapping) else None
    if not isinstance(declared, Mapping):
        return False
    domain: list[Any] | None = None
    if isinstance(declared.get("enum"), list):
        domain = list(declared["enum"])
    elif declared.get("type") == "boolean":
        domain = [True, False]
    if domain is not None:
        covered: set[Hashable] = set()
        for condition in singles:
            if condition.op == "==":
                covered.add(_equality_key(condition.value))
            elif condition.op == "in":
                covered.update(_equality_key(value) for value in condition.value)
        return all(_equality_key(value) in covered for value in domain)
    if declared.get("type") in ("number", "integer"):
        bounds = {
            (c.op, c.value) for c in singles if isinstance(c.value, int | float) and not isinstance(c.value, bool)
        }
        return any(
            (low, value) in bounds and (high, value) in bounds
            for _op, value in bounds
            for low, high in (("<", ">="), ("<=", ">"))
        )
    return False


def _equality_key(value: Any) -> Hashable:
    """A JSON value as a key equal to another's (and hashing alike) exactly when the values are equal (``==``,
    as a condition compares them): objects as sets of their items, arrays as tuples."""
    if isinstance(value, Mapping):
        return frozenset((key, _equality_key(item)) for key, item in value.items())
    if isinstance(value, list | tuple):
        return tuple(_equality_key(item) for item in value)
    return cast(Hashable, value)


def merge_variables(left: dict[str, Cell] | None, right: dict[str, Cell] | None) -> dict[str, Cell]:
    """Reducer for process variables: per variable, the higher version wins.

    A parallel branch hands back every variable it saw, changed or not; versions keep a branch's stale
    copy of a variable from overwriting a sibling's newer value.
    """
    merged = dict(left or {})
    for name, cell in (right or {}).items():
        current = merged.get(name)
        if current is None or int(cell.get("version", 0)) >= int(current.get("version", 0)):
            merged[name] = cell
    return merged


def merge_max(left: dict[str, int] | None, right: dict[str, int] | None) -> dict[str, int]:
    merged = dict(left or {})
    for key, value in (right or {}).items():
        merged[key] = max(value, merged.get(key, 0))
    return merged


def merge_latest(left: dict[str, Any] | None, right: dict[str, Any] | None) -> dict[str, Any]:
    return {**(left or {}), **(right or {})}


def merge_present(left: dict[str, Any] | None, right: dict[str, Any] | None) -> dict[str, Any]:
    """Like ``merge_latest``, but a key set to None is removed (a consumed entry leaves the state)."""
    merged = {**(left or {}), **(right or {})}
    return {key: value for key, value in merged.items() if value is not None}


def first_failure(left: dict[str, Any] | None, right: dict[str, Any] | None) -> dict[str, Any] | None:
    """Reducer for the failure that starts compensation: the first one recorded stays."""
    return left or right


def either(left: bool | None, right: bool | None) -> bool:
    """Reducer for a flag any branch may raise: once raised it stays."""
    return bool(left) or bool(right)
