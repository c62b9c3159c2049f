"""Policy checks that run before every agent call, every user-task completion and every change a person
(or the guide's tools, for them) makes to a session. A policy is a plain
callable that raises :class:`PolicyViolationError` to refuse, with the reason; the refusal is recorded
as a ``policy.denied`` event. Policies given to the runtime run after :data:`DEFAULT_POLICIES` (least
privilege), never instead of them.

:class:`Grants` is what every spec kind declares for least privilege and redaction: the scopes its
agents get, the intents it may call and its sensitive fields."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from agents.errors import PolicyViolationError
from agents.registry import RegisteredAgent
from checkpoints.events import EventLog, NewEvent
from checkpoints.redaction import mark_sensitive


class Grants(BaseModel):
    """The least-privilege and redaction fields every spec kind accepts (structured and saga journeys,
    sessions and the MVP, processes, client lifecycles): a spec model inherits them."""

    permissions: tuple[str, ...] | None = Field(
        default=None, description="scopes granted to this journey's agents; None restricts nothing"
    )
    intents: tuple[str, ...] | None = Field(
        default=None, description="the only intents this journey's agent calls may use; None restricts nothing"
    )
    sensitive: tuple[str, ...] = Field(
        default=(), description="fields redacted wherever values are shown: API answers (history too), logs, traces"
    )

    @model_validator(mode="after")
    def _register_sensitive(self) -> Grants:
        # Known as soon as a spec is designed or loaded, so every output of any process redacts them.
        mark_sensitive(self.sensitive)
        return self

    @property
    def granted_permissions(self) -> frozenset[str] | None:
        return frozenset(self.permissions) if self.permissions is not None else None

    @property
    def granted_intents(self) -> frozenset[str] | None:
        return frozenset(self.intents) if self.intents is not None else None


DENIED = "policy.denied"  # the audit event of a refusal, with its reason


@dataclass(frozen=True, slots=True)
class AgentCall:
    """What a policy sees before an agent call: who is about to be called, for which journey and step,
    with what."""

    agent: RegisteredAgent
    instance_id: str
    step: str | None
    payload: Mapping[str, Any]
    granted_permissions: frozenset[str] | None  # None: the journey restricts nothing
    granted_intents: frozenset[str] | None = None  # the intents the journey's spec may call; None: any
    kind: Literal["agent_call"] = "agent_call"


@dataclass(frozen=True, slots=True)
class TaskCompletion:
    """What a policy sees before a person's answer completes a user task (a structured or saga step's
    input, a process user task, a step routed to a person): who answers, for which journey and task, what."""

    instance_id: str
    step: str | None  # the step or the process element
    user: str | None  # None: the journey's own user (a step result given through the orchestrator)
    payload: Mapping[str, Any]
    groups: tuple[str, ...] = ()
    kind: Literal["user_task"] = "user_task"


SessionActionKind = Literal["navigate", "update", "close"]


@dataclass(frozen=True, slots=True)
class SessionAction:
    """What a policy sees before a session's state changes (free navigation, the MVP and the guide's tools):
    its user moves to an area (``navigate``), records progress in one (``update``, the fields in
    ``payload``) or closes the session (``close``)."""

    instance_id: str
    step: str | None  # the area (None: the session as a whole)
    action: SessionActionKind
    user: str | None  # the session's user
    payload: Mapping[str, Any]
    actor: str | None = None  # the principal the server acts for (None: called in-process)
    kind: Literal["session_action"] = "session_action"


# What a policy checks; ``kind`` says which.
Checked = AgentCall | TaskCompletion | SessionAction
# A policy sees an agent call, a task completion or a session action and raises to refuse.
Policy = Callable[[Checked], None]


async def enforce(policies: Iterable[Policy], checked: Checked, events: EventLog, audit: Mapping[str, Any]) -> None:
    """Run ``policies`` on ``checked``; a refusal is appended as a :data:`DENIED` event (``audit`` and the
    reason) before its :class:`PolicyViolationError` is raised on."""
    try:
        for policy in policies:
            policy(checked)
    except PolicyViolationError as exc:
        denial = {**audit, "kind": checked.kind, "reason": exc.message, **exc.details}
        await events.append(checked.instance_id, [NewEvent(DENIED, denial, checked.step)])
        raise


def require_granted_permissions(call: Checked) -> None:
    """Least privilege: an agent may only run where the journey grants every scope it needs."""
    if not isinstance(call, AgentCall) or call.granted_permissions is None:
        return
    missing = call.agent.permissions - call.granted_permissions
    if missing:
        raise PolicyViolationError(
            f"agent {call.agent.name!r} needs permissions {sorted(missing)} that journey step "
            f"{call.step!r} does not grant",
            intent=call.agent.intent,
            missing=sorted(missing),
        )


def require_granted_intent(call: Checked) -> None:
    """Least privilege: a journey calls only the intents its spec declares."""
    if not isinstance(call, AgentCall):
        return
    if call.granted_intents is not None and call.agent.intent not in call.granted_intents:
        raise PolicyViolationError(
            f"journey step {call.step!r} may not call intent {call.agent.intent!r}; its spec declares "
            f"{sorted(call.granted_intents)}",
            intent=call.agent.intent,
            allowed=sorted(call.granted_intents),
        )


DEFAULT_POLICIES: tuple[Policy, ...] = (require_granted_permissions, require_granted_intent)


def with_defaults(policies: Iterable[Policy], *, defaults: bool = True) -> tuple[Policy, ...]:
    """The policies a runtime runs: the defaults first (unless turned off explicitly), then ``policies``,
    each once."""
    chosen = [*(DEFAULT_POLICIES if defaults else ()), *policies]
    return tuple(dict.fromkeys(chosen))
