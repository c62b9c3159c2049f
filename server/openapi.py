"""The OpenAPI document says what the server accepts, including the rules no model field carries.

Every string a request carries (names, ids, keys and values inside free-form objects, path and query
parameters) is refused with a NUL character (U+0000) in it: no store can keep one (see
:mod:`server.input_guard`). The models cannot say so for JSON they leave free-form, so the document is
completed once, when it is first built: string schemas (and object keys) get :data:`NO_NUL`, and free-form
values become :data:`JSON_VALUE`, a JSON value whose strings hold no NUL.

An operation that takes a ``select`` answers only the fields it names (see :func:`server.models.kept`): its
answer's schema says so, a view with every field or one with the selected fields only (see
:func:`with_selected_answers`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

# A string that does not contain NUL: the strings the pattern ^[^\u0000]*$ allows, said so that a schema-driven
# fuzzer draws such a string whole. For that pattern schemathesis (through Hypothesis) drew each string one
# character at a time: our fuzz tests' CPU fell by a fifth with this (tests/test_openapi_fuzz.py).
NO_NUL: dict[str, Any] = {"not": {"pattern": r"\u0000"}}
# Holds a character ``str.strip()`` keeps (spelled out: regex dialects disagree on what ``\s`` is).
NOT_BLANK = r"[^\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
JSON_VALUE = "JsonValue"
_JSON_REF = {"$ref": f"#/components/schemas/{JSON_VALUE}"}
_JSON_VALUE_SCHEMA: dict[str, Any] = {
    "title": JSON_VALUE,
    "description": "any JSON value whose strings (object keys included) hold no NUL character (U+0000)",
    "anyOf": [
        {"type": "string", **NO_NUL},
        {"type": "number"},
        {"type": "boolean"},
        {"type": "null"},
        {"type": "array", "items": _JSON_REF},
        {"type": "object", "propertyNames": NO_NUL, "additionalProperties": _JSON_REF},
    ],
}
# Keywords that make a schema more than "any value" (an annotation alone, such as a title, does not).
_CONSTRAINTS = {"type", "$ref", "anyOf", "oneOf", "allOf", "not", "enum", "const", "properties", "items"}
Schema = dict[str, Any]


def install_openapi(app: FastAPI) -> None:
    """Build ``app``'s OpenAPI document on first use, as FastAPI does, with the request rules above."""
    build = app.openapi  # FastAPI's own: it keeps what it builds in app.openapi_schema

    def document() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = with_selected_answers(with_request_rules(build()))
        return app.openapi_schema

    app.openapi = document  # type: ignore[method-assign]  # FastAPI's documented way to extend the document


def with_request_rules(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with the NUL rule on every string of every request (parameters and bodies)."""
    components = document.setdefault("components", {}).setdefault("schemas", {})
    completed: set[str] = set()

    def component(ref: str) -> None:
        name = ref.rsplit("/", 1)[-1]
        if name not in completed and name in components:
            completed.add(name)  # before walking it: components may refer to themselves
            _complete(components[name], component)

    for path in document.get("paths", {}).values():
        for operation in path.values():
            for parameter in operation.get("parameters", []):
                if parameter.get("in") in ("path", "query"):
                    _complete(parameter.get("schema", {}), component)
            for media in operation.get("requestBody", {}).get("content", {}).values():
                _complete(media.setdefault("schema", {}), component)
    components.setdefault(JSON_VALUE, copy.deepcopy(_JSON_VALUE_SCHEMA))  # each document owns its own
    return document


SELECTED = "Selected"  # the suffix of a view's component with the fields a select named only


def with_selected_answers(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` where each operation taking a ``select`` (a query parameter or a body field) answers a view
    (or a list of views) as a whole or as its ``<View>Selected``: the same fields, none of them required."""
    components = document.setdefault("components", {}).setdefault("schemas", {})
    for path in document.get("paths", {}).values():
        for operation in path.values():
            if not _takes_select(operation, components):
                continue
            media = operation.get("responses", {}).get("200", {}).get("content", {}).get("application/json", {})
            answer = media.get("schema", {})
            if answer.get("type") == "array" and "$ref" in answer.get("items", {}):
                answer["items"] = _whole_or_selected(answer["items"]["$ref"], components)
            elif "$ref" in answer:
                media["schema"] = _whole_or_selected(answer["$ref"], components)
    return document


def _takes_select(operation: dict[str, Any], components: dict[str, Schema]) -> bool:
    if any(parameter.get("name") == "select" for parameter in operation.get("parameters", [])):
        return True
    body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
    if "$ref" in body:
        body = components.get(body["$ref"].rsplit("/", 1)[-1], {})
    return "select" in body.get("properties", {})


def _whole_or_selected(ref: str, components: dict[str, Schema]) -> Schema:
    name = ref.rsplit("/", 1)[-1]
    view = components[name]
    selected = f"{name}{SELECTED}"
    if selected not in components:
        components[selected] = {
            "title": selected,
            "type": "object",
            "description": f"{name} with only the fields the request's select named",
            "properties": copy.deepcopy(view.get("properties", {})),
        }
    return {"anyOf": [{"$ref": ref}, {"$ref": f"#/components/schemas/{selected}"}]}


def _refuse_nul(schema: Schema) -> None:
    """Add :data:`NO_NUL` to the string schema ``schema`` in place (beside a ``not`` of its own: both hold)."""
    if "not" not in schema:
        schema.update(copy.deepcopy(NO_NUL))
    elif schema["not"] != NO_NUL["not"]:
        schema.setdefault("allOf", []).append(copy.deepcopy(NO_NUL))


def _complete(schema: Schema, component: Callable[[str], None]) -> None:
    """Add the NUL rule to ``schema`` in place (the components it refers to through ``component``)."""
    if "$ref" in schema:
        component(schema["$ref"])
        return
    if not _CONSTRAINTS & set(schema):  # any value
        schema.update(_JSON_REF)
        return
    for key in ("anyOf", "oneOf", "allOf"):
        for option in schema.get(key, []):
            _complete(option, component)
    types = schema.get("type")
    kinds = set(types) if isinstance(types, list) else {types}
    if "string" in kinds and not {"enum", "const"} & set(schema):
        _refuse_nul(schema)
    if "object" in kinds:
        _refuse_nul(schema.setdefault("propertyNames", {}))  # rules of its own for its keys (not empty, say) hold too
        for value in schema.get("properties", {}).values():
            _complete(value, component)
        extra = schema.get("additionalProperties", True)
        if extra is True or extra == {}:
            schema["additionalProperties"] = dict(_JSON_REF)
        elif isinstance(extra, dict):
            _complete(extra, component)
    if "array" in kinds:
        items = schema.setdefault("items", {})
        if isinstance(items, dict):
            _complete(items, component)
