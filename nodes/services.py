"""What nodes need from the runtime, handed to the builders instead of reached through globals."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from langchain_core.runnables import RunnableConfig

from checkpoints.clock import Clock
from checkpoints.events import EventLog, NewEvent
from nodes.agent_call import AgentCaller

# Set in a run's config when it resumes work that a crashed process left in flight: nodes then look
# an agent call up in the event log before repeating it.
REPLAY_FLAG = "journeys_replay"
# Set in a run's config when a node may go on to the next node's work itself, in its own superstep: the run
# checkpoints only where it stops, and nobody watches it node by node (no stream, no breakpoints). A node
# that runs on must make what it ran durable as the next node would have (a structured journey's steps are
# each in the event log before the next starts, and a crash replays the chain from it; a saga's are not
# replayed, so it does not chain). Each superstep saved is LangGraph's work (tasks, channels, callbacks)
# for nothing but the route.
CHAIN_FLAG = "journeys_chain"

# The one event an instance's failure writes, whatever its pattern (written by the kernel's fail, and
# by the nodes whose failure moves the instance on); its data names the ``pattern`` and the ``cause``:
# a ``step`` or ``task`` whose work failed, a ``compensation`` handler that failed for good, or a ``run``.
FAILED = "instance.failed"


def failure(
    pattern: str, cause: str, details: Mapping[str, Any], step: str | None = None, key: str | None = None
) -> NewEvent:
    """The failure event of an instance of ``pattern``: what failed (``cause``) and how (``details``)."""
    return NewEvent(FAILED, {"pattern": pattern, "cause": cause, **details}, step, key)


def failure_error(details: Mapping[str, Any]) -> tuple[str, str]:
    """The type and message of the error a failure event's ``details`` record (a compensation's failure nests
    its own), as a run whose step raised it reports it."""
    nested = details.get("compensation_failure")
    error = nested if isinstance(nested, Mapping) else details
    message = error.get("error") or f"the journey failed ({details.get('cause') or 'run'})"
    return str(error.get("error_type") or "JourneyFailedError"), str(message)


@dataclass(frozen=True, slots=True)
class NodeServices:
    """What a node needs from the runtime: the agent path, the event log and the clock."""

    caller: AgentCaller
    events: EventLog
    clock: Clock


def is_replay(config: RunnableConfig) -> bool:
    configurable: dict[str, Any] = config.get("configurable") or {}
    return bool(configurable.get(REPLAY_FLAG, False))


def not_replaying(config: RunnableConfig) -> RunnableConfig:
    """``config`` for work after a unit the run has just done itself (not found logged): nothing after it can
    be logged yet, so its units need no look-up (see :data:`REPLAY_FLAG`)."""
    return cast(RunnableConfig, {**config, "configurable": {**(config.get("configurable") or {}), REPLAY_FLAG: False}})


def steps_chained(config: RunnableConfig) -> bool:
    """Whether a step's node may run the steps after it itself (see :data:`CHAIN_FLAG`)."""
    configurable: dict[str, Any] = config.get("configurable") or {}
    return bool(configurable.get(CHAIN_FLAG, False))


def thread_id(config: RunnableConfig) -> str:
    configurable: dict[str, Any] = config.get("configurable") or {}
    return str(configurable["thread_id"])


def superstep(config: RunnableConfig) -> int:
    """The superstep a node runs in: the same again when a crash makes LangGraph run it a second time."""
    metadata: dict[str, Any] = config.get("metadata") or {}
    return int(metadata["langgraph_step"])
