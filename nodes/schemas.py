"""JSON Schema validation with validators built once per schema.

``jsonschema.validate`` checks the schema against its meta-schema on every call, which costs more
than validating a small document; hot paths (every agent output, every task input) use
:func:`validate` instead, which raises exactly what ``jsonschema.validate`` raises.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import jsonschema
from jsonschema.exceptions import best_match
from jsonschema.protocols import Validator

_VALIDATORS: dict[str, Validator] = {}
_LIMIT = 4096  # distinct schemas kept; designs rarely have more, and beyond it the cache is just dropped


def checker(schema: Mapping[str, Any]) -> Validator:
    """The validator for ``schema``, checked when first built (``SchemaError`` if the schema is invalid)."""
    key = json.dumps(schema, sort_keys=True, default=str)
    found = _VALIDATORS.get(key)
    if found is None:
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(dict(schema))
        if len(_VALIDATORS) >= _LIMIT:
            _VALIDATORS.clear()
        found = _VALIDATORS[key] = cls(schema)
    return found


def validate(instance: Any, schema: Mapping[str, Any]) -> None:
    """``jsonschema.validate(instance, schema)``, without re-checking a schema seen before."""
    error = best_match(checker(schema).iter_errors(instance))
    if error is not None:
        raise error
