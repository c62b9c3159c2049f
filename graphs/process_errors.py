"""Errors of process deployment, versioning, the inbox and message correlation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from checkpoints.errors import ErrorCategory, JourneyError


class UnknownProcessError(JourneyError):
    """No process is deployed under this name (or version)."""

    category: ClassVar[ErrorCategory] = "not_found"


class ProcessVersionConflictError(JourneyError):
    """This (name, version) is already deployed with a different definition; deploy it as a new version."""

    category: ClassVar[ErrorCategory] = "conflict"


class RolloutError(JourneyError):
    """The rollout is invalid: weights must be non-negative, sum to 100, and name deployed versions."""

    category: ClassVar[ErrorCategory] = "invalid"


class ProcessInstanceNotFoundError(JourneyError):
    """No process instance has this id."""

    category: ClassVar[ErrorCategory] = "not_found"


class ProcessStateError(JourneyError):
    """The instance is not in a state that allows this (finished, failed, or not waiting here)."""

    category: ClassVar[ErrorCategory] = "conflict"


class TaskNotFoundError(JourneyError):
    """No user task has this id."""

    category: ClassVar[ErrorCategory] = "not_found"


class TaskClosedError(JourneyError):
    """The user task is no longer open (completed, cancelled or escalated to completion)."""

    category: ClassVar[ErrorCategory] = "conflict"


class TaskForbiddenError(JourneyError):
    """Only the assignee, a member of a candidate group, or whoever claimed the task may do this."""

    category: ClassVar[ErrorCategory] = "forbidden"


class UnmatchedMessageError(JourneyError):
    """No instance waits for this message and no process starts on it (and it was not to be buffered)."""

    category: ClassVar[ErrorCategory] = "not_found"


class MigrationRefusedError(JourneyError):
    """The migration plan does not cover where the instance waits; nothing was changed."""

    category: ClassVar[ErrorCategory] = "invalid"

    def __init__(self, message: str, *, problems: Sequence[str], **details: object) -> None:
        self.problems = list(problems)
        super().__init__(message, problems=self.problems, **details)


class MigrationInProgressError(ProcessStateError):
    """Another process is migrating this instance right now; try again shortly."""
