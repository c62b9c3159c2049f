"""What nodes need from the runtime, handed to the builders instead of reached through globals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from langchain_core.runnables import RunnableConfig

from checkpoints.clock import Clock
from checkpoints.events import EventLog
from nodes.agent_call import AgentCaller

# Set in a run's config when it resumes work that a crashed process left in flight: nodes then look
# an agent call up in the event log before repeating it.
REPLAY_FLAG = "journeys_replay"


@dataclass(frozen=True, slots=True)
class NodeServices:
    """What every node needs: the agent caller, the event log and the clock."""

    caller: AgentCaller
    events: EventLog
    clock: Clock


def is_replay(config: RunnableConfig) -> bool:
    configurable: dict[str, Any] = config.get("configurable") or {}
    return bool(configurable.get(REPLAY_FLAG, False))


def thread_id(config: RunnableConfig) -> str:
    configurable: dict[str, Any] = config.get("configurable") or {}
    return str(configurable["thread_id"])


def superstep(config: RunnableConfig) -> int:
    """The superstep a node runs in: the same again when a crash makes LangGraph run it a second time."""
    metadata: dict[str, Any] = config.get("metadata") or {}
    return int(metadata["langgraph_step"])
