"""Typed errors of the client lifecycle. Every one leaves the journey exactly as it was."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from checkpoints.errors import ErrorCategory, JourneyError
from graphs.errors import InvalidInputError, InvalidMoveError


class InvalidTransitionError(InvalidMoveError):
    """This event is not allowed in the journey's current stage. ``allowed`` lists the events that are."""

    def __init__(self, message: str, *, current_stage: str | None, event: str, allowed: Sequence[str]) -> None:
        self.current_stage = current_stage
        self.event = event
        super().__init__(message, allowed=allowed, current_stage=current_stage, event=event)


class UnknownTransitionEventError(InvalidTransitionError):
    """No lifecycle event has this name. The message lists the seven; ``allowed`` those allowed now."""

    category: ClassVar[ErrorCategory] = "invalid"


class TransitionOptionsError(InvalidInputError):
    """The options given with a lifecycle event are wrong: ``missing`` lists the required ones left out,
    ``unknown`` the ones the event does not take, ``accepted`` all it takes."""

    def __init__(
        self,
        message: str,
        *,
        event: str,
        missing: Sequence[str],
        unknown: Sequence[str],
        accepted: Sequence[str],
    ) -> None:
        self.event = event
        self.missing, self.unknown, self.accepted = list(missing), list(unknown), list(accepted)
        super().__init__(message, event=event, missing=self.missing, unknown=self.unknown, accepted=self.accepted)


class EntryCriteriaNotMetError(JourneyError):
    """The journey could not start: the sandbox entry criteria are not met. ``validation`` says which."""

    category: ClassVar[ErrorCategory] = "conflict"

    def __init__(self, message: str, *, validation: Any) -> None:
        self.validation = validation
        super().__init__(message, validation=validation.to_dict())


class UnitOfWorkFailedError(JourneyError):
    """A unit of work failed; its completed tasks were compensated and the stage did not change."""

    def __init__(self, message: str, *, unit: dict[str, Any], **details: Any) -> None:
        self.unit = unit
        super().__init__(message, unit=unit, **details)


class UnknownUnitOfWorkError(JourneyError):
    """The journey's design has no such unit of work in this stage."""

    category: ClassVar[ErrorCategory] = "not_found"

    def __init__(self, message: str, *, allowed: Sequence[str], **details: Any) -> None:
        self.allowed = list(allowed)
        super().__init__(message, allowed=self.allowed, **details)


class UnitDependencyError(InvalidMoveError):
    """A unit of work cannot run before the units it depends on have completed."""


class InvalidRollbackTargetError(JourneyError):
    """A rollback can only return to the current stage or an earlier active stage."""

    category: ClassVar[ErrorCategory] = "invalid"

    def __init__(self, message: str, *, allowed: Sequence[str], **details: Any) -> None:
        self.allowed = list(allowed)
        super().__init__(message, allowed=self.allowed, **details)


class RollbackFailedError(JourneyError):
    """The rollback did not validate; the journey stays in ROLLBACK. Complete it again or cancel."""

    def __init__(self, message: str, *, rollback: dict[str, Any]) -> None:
        self.rollback = rollback
        super().__init__(message, rollback=rollback)


class InvalidMetricError(JourneyError):
    """A metric needs a lower_snake_case name, a finite number (or bool) and a time not in the future."""

    category: ClassVar[ErrorCategory] = "invalid"
