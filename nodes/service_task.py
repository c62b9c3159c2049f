"""A service task: one unit of work that calls an agent (or just records a human's result) and
writes exactly one completion event, keyed so a replay after a crash never does it twice."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from langchain_core.runnables import RunnableConfig

from agents.resilience import CallOptions, RetrySettings
from checkpoints.events import NewEvent
from nodes.agent_call import CallOutcome, Recorder, Recording, logged
from nodes.services import NodeServices, is_replay, thread_id


async def perform_task(
    services: NodeServices,
    config: RunnableConfig,
    *,
    intent: str | None,
    payload: Mapping[str, Any],
    step: str,
    key: str,
    event_type: str,
    recorder: Recorder,
    granted_permissions: frozenset[str] | None = None,
    granted_intents: frozenset[str] | None = None,
    output_schema: Mapping[str, Any] | None = None,
    retry: RetrySettings | None = None,
    always_replay: bool = False,
    options: CallOptions | None = None,
) -> CallOutcome:
    instance_id = thread_id(config)
    replay = always_replay or is_replay(config)
    if intent is not None:
        return await services.caller.call(
            intent=intent,
            payload=payload,
            instance_id=instance_id,
            step=step,
            key=key,
            event_type=event_type,
            recorder=recorder,
            granted_permissions=granted_permissions,
            granted_intents=granted_intents,
            output_schema=output_schema,
            retry=retry,
            replay=replay,
            options=options,
        )
    if (done := await logged(services.events, instance_id, key, replay=replay)) is not None:
        return CallOutcome(dict(done.payload.get("output", {})), 0, True)
    recording: Recording = recorder({})
    event = NewEvent(event_type, {"output": {}, **recording.payload}, step, key)
    await services.events.append(instance_id, [event], status=recording.status)
    return CallOutcome({}, 0, False)
