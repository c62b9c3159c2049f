"""Field helpers shared by the response models."""

from __future__ import annotations

from typing import Any

from pydantic import Field
from pydantic.config import JsonDict


def _no_default(schema: JsonDict) -> None:
    schema.pop("default", None)


def optional_key(description: str) -> Any:
    """A key only some answers carry: left out of the JSON when absent, never sent as null.

    The default is only the marker of an absent key (``exclude_unset`` drops it), so the schema says
    "not required" without claiming a null default.
    """
    return Field(default=None, description=description, json_schema_extra=_no_default)
