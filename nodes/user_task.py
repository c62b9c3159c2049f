"""A human task: an ``interrupt()`` in a node of its own.

The node re-runs from its first line when resumed, so it does nothing before the interrupt but build
the request, and nothing after it but validate and hand the answer on. Side effects belong to the
next node.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jsonschema
from langgraph.types import interrupt

from checkpoints.values import check_value
from nodes import schemas
from nodes.errors import ResumeValueError


def validate_resume_value(value: object, schema: Mapping[str, Any] | None, *, task: str) -> dict[str, Any]:
    """Check a resume value before it is handed to a graph: a mapping every store can keep, valid against
    ``schema``."""
    if not isinstance(value, Mapping):
        raise ResumeValueError(
            f"task {task!r} expects an object (a JSON mapping) as its result, got {type(value).__name__}",
            task=task,
        )
    check_value(dict(value), "result")
    if schema is not None:
        try:
            schemas.validate(dict(value), schema)
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
            raise ResumeValueError(
                f"the result for task {task!r} does not match its schema at {where}: {exc.message}",
                task=task,
                path=where,
            ) from exc
    return dict(value)


def make_user_task_node(
    task: str,
    request: Mapping[str, Any],
    schema: Mapping[str, Any] | None,
    output_key: str,
    *,
    schema_of: Callable[[object], Mapping[str, Any] | None] | None = None,
) -> Callable[[Any], dict[str, Any]]:
    """A node that asks a human for ``task`` and writes the validated answer to ``output_key``. ``schema_of``:
    the schema an answer is checked against when that depends on the answer (a report that the task failed is
    not checked as a result); ``schema`` is the one the request shows."""
    payload = {"task": task, **request, "schema": schema}

    def ask(_state: Any) -> dict[str, Any]:
        answer = interrupt(payload)
        checked = schema if schema_of is None else schema_of(answer)
        return {output_key: validate_resume_value(answer, checked, task=task)}

    ask.__name__ = f"ask_{task}"
    return ask
