"""BPMN-style processes: specs, validation, the builder, versions, timers, inbox and messages.

Processes are built from dicts or, as the design review writes them, from the element objects:
``ServiceTask(id=..., agent=MyAgent, input_variables=[...], output_variables=[...], compensation=undo)``.
"""

from graphs.process.catalog import ProcessCatalog
from graphs.process.inbox import TaskInbox
from graphs.process.orchestrator import ProcessOrchestrator
from graphs.process.spec import (
    BoundaryTimer,
    EndEvent,
    Escalation,
    EventGateway,
    ExclusiveGateway,
    Flow,
    MessageEvent,
    ParallelGateway,
    ProcessSpec,
    ServiceTask,
    StartEvent,
    TimerEvent,
    Transaction,
    UserTask,
)
from graphs.process.transactions import Transactions

__all__ = [
    "BoundaryTimer",
    "EndEvent",
    "Escalation",
    "EventGateway",
    "ExclusiveGateway",
    "Flow",
    "MessageEvent",
    "ParallelGateway",
    "ProcessCatalog",
    "ProcessOrchestrator",
    "ProcessSpec",
    "ServiceTask",
    "StartEvent",
    "TaskInbox",
    "TimerEvent",
    "Transaction",
    "Transactions",
    "UserTask",
]
