"""JSON Schema for every schema users give: one validator factory.

Step input and output schemas, user task response schemas, process variables, session area state and
unit-of-work task schemas are all checked here when designed or deployed (:func:`check_schema`) and
applied here (:func:`validate`).

- Regular expressions (``pattern``, ``patternProperties`` and the ``additionalProperties`` beside
  them) run on RE2, which matches in time linear in the input: no pattern (``^(a+)+$`` on
  ``aaaa…!``, say) can backtrack catastrophically and hold the event loop. A pattern RE2 cannot run
  (backreferences, lookaround) is refused by :func:`check_schema`, naming it and where it is.
- jsonschema evaluates some keywords with Python's backtracking ``re`` that no keyword of ours can
  replace: ``unevaluatedProperties`` beside ``patternProperties``, and subschemas that switch to a
  validator of their own with ``$schema``. Both are refused too; a ``$schema`` at the root picks the
  dialect.
- A ``$ref`` (or ``$dynamicRef``) is followed only within the schema (its ``$defs``, an anchor, a subschema
  with an ``$id``): jsonschema would otherwise fetch any other address with urllib when it validates (a
  host the server can reach, a local file). :func:`check_schema` refuses one that resolves to nothing
  there, naming it, and validators never retrieve anything.
- ``uniqueItems`` compares elements as jsonschema does (1 and 1.0 are one number, true and 1 are not), in time
  linear in the array: jsonschema compares every pair of elements it cannot sort (objects, numbers beside
  strings), in Python, so 10,000 objects (130 KB) held the event loop 300 s. Schemas are checked against their
  meta-schema by the same validators (draft 4's says an ``enum``'s values are unique).
- A validation is bounded: it may evaluate each keyword of the schema a few times per value of the
  instance (past a floor), no more. A ``$ref`` used twice at every level of a chain of ``$defs`` makes a
  few hundred bytes of schema take 2**30 evaluations (the "billion laughs" of JSON Schema), and one that
  refers back to itself without moving into the instance never ends; either held the event loop. Past the
  bound the instance is judged not to fit, saying why (:data:`TOO_COSTLY`), and :func:`check_schema`
  refuses a schema past it on any instance at all (a loop, a chain at its root).
- Validators are built once per schema: ``jsonschema.validate`` checks the schema against its
  meta-schema on every call, which costs more than validating a small document. :func:`validate`
  raises exactly what ``jsonschema.validate`` raises.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import Any, cast
from urllib.parse import urljoin

import jsonschema
import re2
import referencing
import referencing.exceptions
import referencing.jsonschema
from jsonschema.exceptions import ValidationError, best_match
from jsonschema.protocols import Validator

_VALIDATORS: dict[str, tuple[Validator, int]] = {}  # by the schema's JSON: its validator, its keyword count
_LIMIT = 4096  # distinct schemas kept; designs rarely have more, and beyond it the cache is just dropped
_RE2 = re2.Options()
_RE2.log_errors = False  # a refused pattern is reported by check_schema, not printed to stderr by RE2

# Keywords whose value maps names (not keywords) to subschemas or data, and keywords whose value is data.
_NAMED = frozenset(
    {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas", "dependentRequired", "dependencies"}
)
_DATA = frozenset({"enum", "const", "default", "examples"})
_REFERENCES = ("$ref", "$dynamicRef")
# Keyword evaluations one validation may make: a floor, then this many per keyword of the schema and value
# (or key) of the instance. A schema that reuses nothing evaluates each keyword at most once per value.
_FLOOR = 10_000
_PER_KEYWORD_AND_VALUE = 4
_BUDGET: ContextVar[list[int] | None] = ContextVar("journeys_schema_budget", default=None)
TOO_COSTLY = (
    "the schema takes too many evaluations to judge this value (a $ref that refers back to itself without "
    "moving into the value, or one subschema referred to several times at every level); simplify the schema"
)


class _TooCostly(Exception):
    """A validation spent its budget of keyword evaluations (caught where it started)."""


def _retrieve_nothing(uri: str) -> referencing.jsonschema.SchemaResource:
    raise LookupError(f"{uri} is outside the schema")  # referencing reports it as Unretrievable


# The documents a schema's references may reach: none besides the schema itself (and the meta-schemas).
_LOCAL_ONLY: referencing.jsonschema.SchemaRegistry = cast(Any, referencing.Registry)(retrieve=_retrieve_nothing)


def check_schema(schema: Mapping[str, Any]) -> None:
    """Raise ``jsonschema.SchemaError`` if ``schema`` is not a valid JSON Schema, or is one this
    runtime cannot apply in linear time (see the module's doc); the message says what and where."""
    base = _dialect(schema)
    try:
        _check_against_meta_schema(schema, base)
    except jsonschema.SchemaError as exc:
        if (exc.validator, exc.validator_value) != ("format", "regex"):
            raise
        cause = exc.cause.args[0] if exc.cause is not None and exc.cause.args else exc.cause
        reason = cause.decode(errors="replace") if isinstance(cause, bytes) else str(cause)
        raise jsonschema.SchemaError(
            f"pattern {exc.instance!r} at {exc.json_path} is not supported ({reason}): patterns run on RE2, "
            "which matches in linear time but has no backreferences and lookaround; rewrite it without them"
        ) from exc
    _check_references(schema, base)
    used = set(_keywords(_body(schema)))
    if "$schema" in used:
        raise jsonschema.SchemaError(
            "a subschema declares its own $schema; declare the dialect once, at the root of the schema"
        )
    if {"unevaluatedProperties", "patternProperties"} <= used:
        raise jsonschema.SchemaError(
            "unevaluatedProperties cannot be combined with patternProperties in one schema (its evaluation "
            "would run the patterns on a backtracking engine); use additionalProperties beside them instead"
        )
    if _judge(None, _build(schema), len(list(_keywords(schema)))) is _COSTLY:
        raise jsonschema.SchemaError(f"{TOO_COSTLY} (it does so whatever the value)")


def _check_against_meta_schema(schema: Mapping[str, Any], base: type[Validator]) -> None:
    """``base.check_schema(schema)``, its meta-schema applied with the linear keywords (:func:`_linear`)."""
    meta: Any = _linear(jsonschema.validators.validator_for(base.META_SCHEMA, default=base))
    for error in meta(base.META_SCHEMA, format_checker=_schema_formats(base)).iter_errors(dict(schema)):
        raise jsonschema.SchemaError.create_from(error)


def first_error(instance: Any, schema: Mapping[str, Any]) -> ValidationError | None:
    """The error ``jsonschema.validate`` would raise for ``instance`` (None if it fits ``schema``), with
    patterns on RE2 and the evaluation bounded: past the bound, an error saying so (:data:`TOO_COSTLY`)."""
    validator, keywords = _checked(schema)
    error = _judge(instance, validator, keywords)
    return ValidationError(TOO_COSTLY) if error is _COSTLY else error


def validate(instance: Any, schema: Mapping[str, Any]) -> None:
    """``jsonschema.validate(instance, schema)``, with patterns on RE2, the evaluation bounded (see the
    module) and without re-checking a schema seen before."""
    error = first_error(instance, schema)
    if error is not None:
        raise error


_COSTLY = ValidationError(TOO_COSTLY)  # what _judge answers past the bound


def _checked(schema: Mapping[str, Any]) -> tuple[Validator, int]:
    key = json.dumps(schema, sort_keys=True, default=str)
    found = _VALIDATORS.get(key)
    if found is None:
        check_schema(schema)
        if len(_VALIDATORS) >= _LIMIT:
            _VALIDATORS.clear()
        found = _VALIDATORS[key] = (_build(schema), len(list(_keywords(schema))))
    return found


def _build(schema: Mapping[str, Any]) -> Validator:
    # The root's $schema chose the class; left in, a $ref to the root would switch back to jsonschema's own.
    build: Any = _linear(_dialect(schema))  # the Validator protocol leaves out the registry argument
    found: Validator = build(_body(schema), registry=_LOCAL_ONLY)
    return found


def _judge(instance: Any, validator: Validator, keywords: int) -> ValidationError | None:
    """The best error of ``instance`` against ``validator`` within the budget; :data:`_COSTLY` past it."""
    token = _BUDGET.set([_FLOOR + _PER_KEYWORD_AND_VALUE * keywords * _values(instance)])
    try:
        found: ValidationError | None = best_match(validator.iter_errors(instance))
        return found
    except (_TooCostly, RecursionError):  # a loop through $ref recurses until Python stops it
        return _COSTLY
    finally:
        _BUDGET.reset(token)


def _values(instance: Any) -> int:
    """How many values (and object keys, which patterns and propertyNames judge) ``instance`` holds."""
    count, pending = 0, [instance]
    while pending:
        value = pending.pop()
        count += 1
        if isinstance(value, Mapping):
            count += len(value)
            pending.extend(value.values())
        elif isinstance(value, list | tuple):
            pending.extend(value)
    return count


def _check_references(schema: Mapping[str, Any], base: type[Validator]) -> None:
    """``jsonschema.SchemaError`` naming the first reference that resolves to nothing within ``schema``."""
    specification = referencing.jsonschema.specification_with(
        str(getattr(base, "META_SCHEMA", {}).get("$id", "")), default=referencing.jsonschema.DRAFT202012
    )
    body = _body(schema)
    registry = _LOCAL_ONLY.with_resource("", specification.create_resource(body)).crawl()
    for uri, ref in _references(body, ""):
        try:
            registry.resolver(base_uri=uri).lookup(ref)
        except referencing.exceptions.Unresolvable:
            what = "nothing in the schema" if ref.startswith("#") else "an address outside the schema"
            raise jsonschema.SchemaError(
                f"$ref {ref!r} refers to {what}; a reference may only point within the schema (to its $defs, "
                "say): copy what it refers to there"
            ) from None


def _references(schema: object, uri: str) -> Iterator[tuple[str, str]]:
    """(base URI, reference) for every ``$ref`` and ``$dynamicRef`` in ``schema``, at any depth."""
    if isinstance(schema, Mapping):
        if isinstance(schema.get("$id"), str):
            uri = urljoin(uri, schema["$id"])
        for key, value in schema.items():
            if key in _REFERENCES and isinstance(value, str):
                yield uri, value
            elif key in _NAMED and isinstance(value, Mapping):
                for subschema in value.values():
                    yield from _references(subschema, uri)
            elif key not in _DATA:
                yield from _references(value, uri)
    elif isinstance(schema, list):
        for item in schema:
            yield from _references(item, uri)


def _dialect(schema: Mapping[str, Any]) -> type[Validator]:
    cls: type[Validator] = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls


def _body(schema: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in schema.items() if k != "$schema"}


def _keywords(schema: object) -> Iterator[str]:
    """Every keyword used in ``schema``'s subschemas, at any depth (names and data are not keywords)."""
    if isinstance(schema, Mapping):
        for key, value in schema.items():
            yield key
            if key in _DATA:
                continue
            if key in _NAMED and isinstance(value, Mapping):
                for subschema in value.values():
                    yield from _keywords(subschema)
            else:
                yield from _keywords(value)
    elif isinstance(schema, list):
        for item in schema:
            yield from _keywords(item)


@functools.lru_cache(maxsize=_LIMIT)
def _regex(pattern: str) -> Any:
    return re2.compile(pattern, _RE2)


def _runs_on_re2(pattern: object) -> bool:
    if isinstance(pattern, str):
        _regex(pattern)  # raises re2.error
    return True


@functools.cache
def _schema_formats(base: type[Validator]) -> jsonschema.FormatChecker:
    """The dialect's format checks for schemas, with ``regex`` (every pattern in a schema) checked by RE2."""
    formats = jsonschema.FormatChecker(formats=())
    formats.checkers.update(base.FORMAT_CHECKER.checkers)
    formats.checks("regex", raises=re2.error)(_runs_on_re2)
    return formats


@functools.cache
def _linear(base: type[Validator]) -> type[Validator]:
    """``base`` with every keyword that matches regexes matching them on RE2, ``uniqueItems`` in linear time,
    and every keyword counted against the budget of the validation under way."""
    keywords = {
        "pattern": _pattern,
        "patternProperties": _pattern_properties,
        "additionalProperties": _additional_properties,
        "uniqueItems": _unique_items,
    }
    chosen = {**base.VALIDATORS, **{k: v for k, v in keywords.items() if k in base.VALIDATORS}}
    extend: Any = jsonschema.validators.extend  # untyped in jsonschema's stubs
    cls: type[Validator] = extend(base, {k: _counted(v) for k, v in chosen.items()})
    return cls


def _counted(keyword: Callable[..., Any]) -> Callable[..., Any]:
    """``keyword``'s function, spending one evaluation of the budget :func:`_judge` set (if any) per call."""

    def counted(validator: Any, value: Any, instance: Any, schema: Mapping[str, Any]) -> Any:
        budget = _BUDGET.get()
        if budget is not None:
            budget[0] -= 1
            if budget[0] < 0:
                raise _TooCostly
        return keyword(validator, value, instance, schema)

    return counted


# The keywords, as jsonschema's own (same errors, same messages), with RE2 in place of re and without its
# pairwise comparisons.


def _pattern(validator: Any, pattern: str, instance: Any, _schema: Mapping[str, Any]) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _regex(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(
    validator: Any, patterns: Mapping[str, Any], instance: Any, _schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        regex = _regex(pattern)
        for name, value in instance.items():
            if regex.search(name):
                yield from validator.descend(value, subschema, path=name, schema_path=pattern)


def _additional_properties(
    validator: Any, additional: Any, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    known = schema.get("properties", {})
    regexes = [_regex(pattern) for pattern in schema.get("patternProperties", {})]
    extras = [name for name in instance if name not in known and not any(r.search(name) for r in regexes)]
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        if "patternProperties" in schema:
            verb = "does" if len(extras) == 1 else "do"
            joined = ", ".join(repr(each) for each in sorted(extras))
            patterns = ", ".join(repr(each) for each in sorted(schema["patternProperties"]))
            yield ValidationError(f"{joined} {verb} not match any of the regexes: {patterns}")
        else:
            listed = ", ".join(repr(each) for each in sorted(extras, key=str))
            verb = "was" if len(extras) == 1 else "were"
            yield ValidationError(f"Additional properties are not allowed ({listed} {verb} unexpected)")


def _unique_items(validator: Any, unique: Any, instance: Any, _schema: Mapping[str, Any]) -> Iterator[ValidationError]:
    if unique and validator.is_type(instance, "array") and not _distinct(instance):
        yield ValidationError(f"{instance!r} has non-unique elements")


def _distinct(elements: Any) -> bool:
    """Whether no two of ``elements`` are equal as jsonschema's ``equal`` judges them: each element is reduced
    once to a hashable form that is equal exactly when the elements are (:func:`_comparable`)."""
    seen: set[object] = set()
    for element in elements:
        try:
            comparable = _comparable(element)
        except TypeError:  # not JSON (a set, say): jsonschema's own comparison
            return bool(jsonschema._utils.uniq(elements))
        if comparable in seen:
            return False
        seen.add(comparable)
    return True


def _comparable(value: Any) -> object:
    """``value`` as a hashable form, tagged by its JSON type: booleans apart from numbers (``true`` is not
    ``1``), an int and a float of the same value one number (as Python compares and hashes them), objects
    whatever their key order. Strings first: a string is a Sequence too."""
    if isinstance(value, str):
        return ("string", value)
    if isinstance(value, bool):
        return ("boolean", value)
    if isinstance(value, Mapping):
        return ("object", frozenset((name, _comparable(item)) for name, item in value.items()))
    if isinstance(value, Sequence):
        return ("array", tuple(_comparable(item) for item in value))
    if isinstance(value, int | float):
        return ("number", value)
    hash(value)  # anything else as itself, if it can be hashed (TypeError otherwise)
    return ("other", value)
