"""Errors of journey design and journey moves. All derive from :class:`JourneyError`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from checkpoints.errors import ErrorCategory, JourneyError


class SpecError(JourneyError):
    """The journey design is invalid."""

    category: ClassVar[ErrorCategory] = "invalid"

    def __init__(self, problems: Sequence[str], *, spec_name: str = "journey") -> None:
        self.problems = list(problems)
        bullet = "\n  - ".join(self.problems)
        super().__init__(f"invalid {spec_name} design:\n  - {bullet}", problems=self.problems)


class UnknownTemplateError(JourneyError):
    """No journey template has this type."""

    category: ClassVar[ErrorCategory] = "not_found"


class JourneyNotFoundError(JourneyError):
    """No such journey, session or saga."""

    category: ClassVar[ErrorCategory] = "not_found"


class WrongPatternError(JourneyError):
    """This journey belongs to another orchestrator pattern."""

    category: ClassVar[ErrorCategory] = "invalid"


class InvalidMoveError(JourneyError):
    """This move is not allowed now. ``allowed`` lists the moves that are."""

    category: ClassVar[ErrorCategory] = "conflict"

    def __init__(self, message: str, *, allowed: Sequence[str], **details: object) -> None:
        self.allowed = list(allowed)
        super().__init__(message, allowed=self.allowed, **details)


class StepOrderError(InvalidMoveError):
    """Steps must be completed in order; this is not the current step."""


class JourneyFinishedError(InvalidMoveError):
    """The journey has finished; nothing more can be advanced."""


class JourneyNotStartedError(InvalidMoveError):
    """The journey has not been started for this user."""


class StepFailedError(InvalidMoveError):
    """The current step failed; retry it before advancing."""


class NothingToRetryError(InvalidMoveError):
    """No step of this journey has failed, so there is nothing to retry."""


class UnknownAreaError(JourneyError):
    """The session has no such area."""

    category: ClassVar[ErrorCategory] = "not_found"

    def __init__(self, message: str, *, allowed: Sequence[str], **details: object) -> None:
        self.allowed = list(allowed)
        super().__init__(message, allowed=self.allowed, **details)


class InvalidInputError(JourneyError):
    """The value does not match the schema the journey expects here."""

    category: ClassVar[ErrorCategory] = "invalid"
