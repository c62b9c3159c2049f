"""The widths of the ``VARCHAR(n)`` columns that keep identifiers, read from the table definitions, so
the limits a request is checked against (``graphs.kernel.identifiers``) follow the schema."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Column, String

from checkpoints.schema.lifecycle_tables import lifecycle_journey_states, lifecycle_metrics
from checkpoints.schema.tables import (
    journey_designs,
    journey_instances,
    process_deployments,
    process_subscriptions,
    server_threads,
    user_task_groups,
    user_tasks,
)


def width(column: Column[Any]) -> int:
    """The length of a ``VARCHAR(n)`` column."""
    assert isinstance(column.type, String) and column.type.length is not None, column
    return column.type.length


THREAD_ID = width(server_threads.c.thread_id)
JOURNEY_TYPE = width(journey_designs.c.journey_type)
CLIENT_ID = width(lifecycle_journey_states.c.client_id)
METRIC_NAME = width(lifecycle_metrics.c.metric)
PROCESS_NAME = width(process_deployments.c.name)
INSTANCE_USER = width(journey_instances.c.user_id)  # a journey's user (a process's business key)
# What a process definition names that its tables keep: an element's id (its waits, timers, tasks and events),
# a user task's title (its label: the title, else the element's name), assignee and candidate groups, and the
# names of the messages it waits for.
ELEMENT_ID = width(user_tasks.c.element)
TASK_TITLE = width(user_tasks.c.title)
ASSIGNEE = width(user_tasks.c.assignee)
GROUP = width(user_task_groups.c.group_name)
MESSAGE_NAME = width(process_subscriptions.c.message_name)
# A message's correlation key, as a waiting instance's subscription and a buffered message keep it.
CORRELATION_KEY = width(process_subscriptions.c.correlation_key)
