"""How long the identifiers and names a request carries may be: as long as the column that keeps them.

SQLite does not enforce a ``VARCHAR(n)`` and PostgreSQL does, so a longer value was stored on one backend
and failed the write (a 500, or a failed run) on the other. The request models and the assistants' input
schemas take their limits from here, and both backends refuse the same values with a 422.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field
from sqlalchemy import Column, String

from checkpoints.lifecycle_tables import lifecycle_journey_states, lifecycle_metrics
from checkpoints.tables import journey_designs, process_deployments, server_threads


def width(column: Column[Any]) -> int:
    """The length of a ``VARCHAR(n)`` column."""
    assert isinstance(column.type, String) and column.type.length is not None, column
    return column.type.length


THREAD_ID = width(server_threads.c.thread_id)
JOURNEY_TYPE = width(journey_designs.c.journey_type)
CLIENT_ID = width(lifecycle_journey_states.c.client_id)
METRIC_NAME = width(lifecycle_metrics.c.metric)
PROCESS_NAME = width(process_deployments.c.name)
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
