"""What process nodes need beyond :class:`NodeServices`: the stores of waits, timers, inbox and messages."""

from __future__ import annotations

from dataclasses import dataclass

from checkpoints.process.inbox import InboxStore
from checkpoints.process.messages import MessageStore
from checkpoints.process.timers import TimerStore
from checkpoints.process.waits import WaitStore
from nodes.services import NodeServices


@dataclass(frozen=True, slots=True)
class ProcessServices:
    """The stores process nodes need beside the node services: waits, timers, messages and the inbox."""

    node: NodeServices
    waits: WaitStore
    timers: TimerStore
    inbox: InboxStore
    messages: MessageStore

    @classmethod
    def of(cls, services: NodeServices) -> ProcessServices:
        engine, clock, sealer = services.events.engine, services.clock, services.events.sealer
        return cls(
            services,
            WaitStore(services.events.backend, clock, sealer),
            TimerStore(services.events.backend, clock, services.events),
            InboxStore(engine, clock, sealer),
            MessageStore(services.events.backend, clock, sealer),
        )
