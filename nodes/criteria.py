"""Declarative conditions, shared by branch choices, area completion and (later) stage gates.

A condition compares one field of a document (a step result, an area's state) with a value. Fields
may be dotted paths into nested mappings.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Operator = Literal["==", "!=", ">", ">=", "<", "<=", "in", "not_in", "exists", "truthy"]

_MISSING = object()

_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "in": lambda actual, expected: actual in expected,
    "not_in": lambda actual, expected: actual not in expected,
}


def lookup(document: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted ``path``, or a private sentinel when any part is missing."""
    current: Any = document
    for part in path.split("."):
        if not isinstance(current, Mapping) or part not in current:
            return _MISSING
        current = current[part]
    return current


class Condition(BaseModel):
    """A test of one field of a document: a dotted path, an operator and a value."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    field: str = Field(min_length=1)
    op: Operator = "=="
    value: Any = None

    @model_validator(mode="after")
    def _value_fits_operator(self) -> Condition:
        if self.op in ("in", "not_in") and not isinstance(self.value, list | tuple | set | frozenset):
            raise ValueError(f"operator {self.op!r} needs a list value, got {self.value!r}")
        return self

    def holds(self, document: Mapping[str, Any]) -> bool:
        actual = lookup(document, self.field)
        if self.op == "exists":
            return actual is not _MISSING
        if actual is _MISSING:
            return False
        if self.op == "truthy":
            return bool(actual)
        try:
            return bool(_COMPARE[self.op](actual, self.value))
        except TypeError:
            return False  # e.g. comparing a string with a number: the condition simply does not hold

    def describe(self) -> str:
        if self.op in ("exists", "truthy"):
            return f"{self.field} {self.op}"
        return f"{self.field} {self.op} {self.value!r}"


class Criteria(BaseModel):
    """``all`` must hold and, when given, at least one of ``any``. Empty criteria always hold. A single
    condition may be given as the criteria (``{"field": "priority", "value": "high"}``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    all: tuple[Condition, ...] = ()
    any: tuple[Condition, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _one_condition(cls, value: Any) -> Any:
        # One condition, written as such ({"field", "op", "value"}), is criteria of that one condition.
        if isinstance(value, Mapping) and "field" in value:
            return {"all": [value]}
        return value

    @classmethod
    def equals(cls, expected: Mapping[str, Any]) -> Criteria:
        """Shorthand: every field equals its value (``{"files_uploaded": True, ...}``)."""
        return cls(all=tuple(Condition(field=k, op="==", value=v) for k, v in expected.items()))

    @property
    def empty(self) -> bool:
        return not self.all and not self.any

    def holds(self, document: Mapping[str, Any]) -> bool:
        return all(c.holds(document) for c in self.all) and (not self.any or any(c.holds(document) for c in self.any))

    def unmet(self, document: Mapping[str, Any]) -> list[str]:
        """Human-readable descriptions of what does not hold yet."""
        missing = [c.describe() for c in self.all if not c.holds(document)]
        if self.any and not any(c.holds(document) for c in self.any):
            missing.append("any of: " + "; ".join(c.describe() for c in self.any))
        return missing

    def fields(self) -> list[str]:
        return [c.field for c in (*self.all, *self.any)]
