"""How long the identifiers and names a request carries may be: as long as the column that keeps them.

SQLite does not enforce a ``VARCHAR(n)`` and PostgreSQL does, so a longer value was stored on one backend
and failed the write (a 500, or a failed run) on the other. The request models and the assistants' input
schemas take their limits from here, and both backends refuse the same values with a 422.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from checkpoints.schema.widths import CLIENT_ID, JOURNEY_TYPE, METRIC_NAME, PROCESS_NAME, THREAD_ID

__all__ = [
    "BUSINESS_KEY",
    "CLIENT_ID",
    "JOURNEY_TYPE",
    "METRIC_NAME",
    "PROCESS_NAME",
    "THREAD_ID",
    "USER_ID",
    "ClientId",
    "JourneyType",
    "MetricName",
    "UserId",
    "string_schema",
]

BUSINESS_KEY = 300
# journey_instances.user_id is wider, but a structured journey's instance id is "<journey id>:<user id>"
# in a column of 200: a user id leaves room for any journey id.
USER_ID = 100

JourneyType = Annotated[str, Field(min_length=1, max_length=JOURNEY_TYPE)]
ClientId = Annotated[str, Field(min_length=1, max_length=CLIENT_ID)]
MetricName = Annotated[str, Field(min_length=1, max_length=METRIC_NAME)]
UserId = Annotated[str, Field(min_length=1, max_length=USER_ID)]


def string_schema(max_length: int, **schema: Any) -> dict[str, Any]:
    """A JSON schema of a non-empty string of at most ``max_length`` characters (run input schemas)."""
    return {"type": "string", "minLength": 1, "maxLength": max_length, **schema}
