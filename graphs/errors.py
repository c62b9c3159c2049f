"""Errors of the pattern layer: journey designs and moves, the client lifecycle, and processes.

All derive from :class:`JourneyError`; each leaves the journey exactly as it was.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from checkpoints.errors import ErrorCategory, JourneyError
from checkpoints.errors import InvalidInputError as InvalidInputError  # raised by every layer


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


class InterruptNotPendingError(InvalidMoveError):
    """The answer names an interrupt the journey no longer waits at: it was answered already (a repeated
    answer), or the journey moved on. Nothing was applied; ``allowed`` lists the interrupts it waits at."""


class JourneyNotStartedError(InvalidMoveError):
    """The journey has not been started for this user."""


class StepFailedError(InvalidMoveError):
    """The current step failed; retry it before advancing."""


class StepHaltedError(InvalidMoveError):
    """The current step's run was cancelled on purpose while its work ran (``runs.cancel``): it stands where
    it stopped until it is run on (a retry, or a run without input); no result can be given to it meanwhile."""


class StepMovedOnError(StepOrderError):
    """An advance that named no step found the journey at another step than when it was asked (two at once:
    a double click, two tabs): the step it was meant for was completed meanwhile. Nothing was applied."""


class NothingToRetryError(InvalidMoveError):
    """No step of this journey has failed, so there is nothing to retry."""


class DeadlineExceededError(InvalidMoveError):
    """The journey's whole-run deadline has passed: nothing of it runs again (a retry is refused)."""


class UnknownAreaError(JourneyError):
    """The session has no such area."""

    category: ClassVar[ErrorCategory] = "not_found"

    def __init__(self, message: str, *, allowed: Sequence[str], **details: object) -> None:
        self.allowed = list(allowed)
        super().__init__(message, allowed=self.allowed, **details)


# The client lifecycle (stages, criteria gates, units of work, rollbacks, metrics).


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


class GateRefusedError(JourneyError):
    """The stage did not change: its gate's criteria (exit, entry, required units) are not met. ``validation``
    says which, as the journey's validation history keeps it; meet them and send the event again."""

    category: ClassVar[ErrorCategory] = "conflict"

    def __init__(self, message: str, *, validation: Mapping[str, Any], current_stage: str | None) -> None:
        self.validation = dict(validation)
        super().__init__(message, validation=self.validation, current_stage=current_stage)


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


# Processes (deployment, versions and rollouts, the inbox, message correlation, migration).


class UnknownProcessError(JourneyError):
    """No process is deployed under this name (or version)."""

    category: ClassVar[ErrorCategory] = "not_found"


class ProcessVersionConflictError(JourneyError):
    """This (name, version) is already deployed with a different definition; deploy it as a new version."""

    category: ClassVar[ErrorCategory] = "conflict"


class RolloutError(JourneyError):
    """The rollout is invalid: weights must be non-negative, sum to 100, and name deployed versions."""

    category: ClassVar[ErrorCategory] = "invalid"


class RolloutConflictError(JourneyError):
    """A weighted deploy cannot take its share of the process's current rollout (``rollout``): it runs an A/B
    test, or its default version holds less than the share. Change the rollout itself (``PUT
    /processes/{name}/rollout``, ``set_rollout``, ``ab_test``), or deploy without a weight."""

    category: ClassVar[ErrorCategory] = "conflict"


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


class MessageIdConflictError(JourneyError):
    """This message id was sent with another message (name, correlation key or payload) within its window."""

    category: ClassVar[ErrorCategory] = "invalid"


class MigrationRefusedError(JourneyError):
    """The migration plan does not cover where the instance waits; nothing was changed."""

    category: ClassVar[ErrorCategory] = "invalid"

    def __init__(self, message: str, *, problems: Sequence[str], **details: object) -> None:
        self.problems = list(problems)
        super().__init__(message, problems=self.problems, **details)


class MigrationInProgressError(ProcessStateError):
    """Another process is migrating this instance right now; try again shortly."""


class RecursionLimitError(JourneyError):
    """A run went through more steps than its recursion limit without stopping (a loop with no way out): the
    instance fails at the step that reached the limit, as LangGraph's ``GraphRecursionError`` says."""

    category = "failed"


class StepReportedFailedError(JourneyError):
    """A user step's result said the step failed (``{"status": "failed", "error": ...}``): the journey stands
    failed at that step, as when its agent fails; its retry asks the user for the step's result again (a saga
    compensates instead)."""


class StepCrashedError(JourneyError):
    """A step raised an error that is none of the runtime's (a bug in the step's code, a database refusing a
    write): the run failed at that step, as for an agent's failure, and it can be retried there once the cause
    is fixed. ``error_type`` names the error raised (its instance's ``instance.failed`` event records it)."""

    category = "failed"

    def __init__(self, message: str, *, error_type: str, **details: Any) -> None:
        super().__init__(message, error_type=error_type, **details)
        self.error_type = error_type


class NoFlowError(JourneyError):
    """No flow out of an exclusive gateway holds for the current variables."""

    category = "failed"


class ConcurrencyLimitError(JourneyError):
    """The journey's concurrency key has no free slot, for a start its spec says to refuse above the limit, for a
    fork, or for a failed journey's retry (neither of which is queued)."""

    category: ClassVar[ErrorCategory] = "conflict"


class ExistingStart(JourneyError):
    """A start whose start key names a journey started within the key's window: that journey answers."""

    category: ClassVar[ErrorCategory] = "conflict"

    def __init__(self, instance_id: str) -> None:
        super().__init__(f"a start with this start key began journey {instance_id!r}", instance_id=instance_id)
        self.instance_id = instance_id


class ProcessNameTakenError(JourneyError):
    """A process name deployed by another tenant: a name is its first deployer's tenant's, so that no tenant
    changes what another's instances run; deploy under another name."""

    category: ClassVar[ErrorCategory] = "conflict"


class StartKeyConflictError(JourneyError):
    """A start key, within its window, names a journey of another pattern than the one this start would begin
    (a saga's key given to a process start, say): a start key stands for one start, as a DBOS workflow id
    does, and a journey of another kind cannot answer this one."""

    category: ClassVar[ErrorCategory] = "conflict"


class JourneyQueuedError(InvalidMoveError):
    """The journey is queued behind its concurrency key's limit: it cannot move until it starts."""


class EvaluatorError(JourneyError):
    """A spec names an evaluator that is not registered in ``runtime.evaluators``, or one scored outside 0..1."""

    category: ClassVar[ErrorCategory] = "conflict"  # the runtime's state, not the request, is wrong


class RunInReviewError(JourneyError):
    """The run broke a threshold of its tier and waits for a person's review; nothing moves until then."""

    category: ClassVar[ErrorCategory] = "conflict"


class NotInReviewError(JourneyError):
    """The run is not waiting for a review."""

    category: ClassVar[ErrorCategory] = "conflict"


class MapFailedError(JourneyError):
    """A map element's items failed beyond its tolerance, or its items variable is not a list."""

    category = "failed"


class CompensationFailedError(JourneyError):
    """An undo failed for good (after its retries): the rollback stopped there, and the steps it had not undone
    yet stay done. The instance stands failed at the element that was rolling back, as Temporal and Camunda fail
    a saga whose compensation fails; its retry resumes the rollback at that undo (nothing undone is undone again,
    the step that failed is not run again)."""

    category = "failed"


class PatternRegistrationError(JourneyError):
    """A pattern cannot be registered: its name is taken, or its assistant has another id."""

    category: ClassVar[ErrorCategory] = "conflict"


class ImpersonationError(JourneyError):
    """A caller may act only as itself: naming another user needs the ``impersonate`` scope."""

    category: ClassVar[ErrorCategory] = "forbidden"


class ForkUnsupportedError(JourneyError):
    """This journey's pattern cannot be forked: its state is not just its checkpoints and its event log (a
    process's timers, waits and tasks, a lifecycle journey's stage table), or it has no steps in its log."""

    category: ClassVar[ErrorCategory] = "conflict"


class ForkPointError(InvalidMoveError):
    """The journey cannot be forked at this step: the step has not completed in its log, or no checkpoint was
    saved right after it. ``allowed`` lists the steps it can be forked at."""
