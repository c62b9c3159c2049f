"""How long the identifiers and names a request carries may be: as long as the column that keeps them.

SQLite does not enforce a ``VARCHAR(n)`` and PostgreSQL does, so a longer value was stored on one backend
and failed the write (a 500, or a failed run) on the other. The request models and the assistants' input
schemas take their limits from here, and both backends refuse the same values with a 422.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from checkpoints.errors import InvalidInputError
from checkpoints.schema.widths import CLIENT_ID, JOURNEY_TYPE, METRIC_NAME, PROCESS_NAME, THREAD_ID
from checkpoints.values import check_value

__all__ = [
    "BUSINESS_KEY",
    "CLIENT_ID",
    "JOURNEY_TYPE",
    "MAX_REASON",
    "METRIC_NAME",
    "PROCESS_NAME",
    "THREAD_ID",
    "USER_ID",
    "ClientId",
    "JourneyType",
    "MetricName",
    "UserId",
    "checked_user_id",
    "string_schema",
]

MAX_REASON = 1_000  # characters in a termination's or cancellation's reason, which its event keeps

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


def checked_user_id(user_id: object) -> str:
    """``user_id`` when it is one every store keeps as a structured journey's user, whose instance id is made
    from it: a non-empty string of at most :data:`USER_ID` characters with no NUL or lone surrogate. Else
    :class:`InvalidInputError`, before any id is made from it."""
    if not isinstance(user_id, str) or not user_id:
        raise InvalidInputError(f"the user id must be a non-empty string, got {user_id!r:.60}")
    if len(user_id) > USER_ID:
        raise InvalidInputError(f"the user id is {len(user_id)} characters long, over the limit of {USER_ID}")
    check_value(user_id, "user_id")
    return user_id
