"""The one exception root of the runtime.

Every error a user can meet derives from :class:`JourneyError`. A subclass's docstring is its
default message, and ``category`` tells front ends (the HTTP server, the CLI) how to report it
without a table of special cases.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

ErrorCategory = Literal["invalid", "not_found", "conflict", "failed", "forbidden"]


class JourneyError(Exception):
    """A journey operation failed."""

    category: ClassVar[ErrorCategory] = "failed"

    def __init__(self, message: str | None = None, **details: Any) -> None:
        super().__init__(message or (self.__doc__ or "").strip())
        self.details: dict[str, Any] = details

    @property
    def message(self) -> str:
        return str(self)

    @property
    def code(self) -> str:
        """A stable, machine-readable name for the error class."""
        return type(self).__name__


class InvalidInputError(JourneyError):
    """The input is not one the runtime takes: off the schema the journey expects, or a value no store can
    keep (see ``checkpoints.values``)."""

    category: ClassVar[ErrorCategory] = "invalid"


class ResilienceSettingError(InvalidInputError, ValueError):
    """A resilience setting (a retry policy, a rate limit, a circuit breaker, a bulkhead) that cannot be used; the
    message says how to set it."""

    # Still a ValueError: pydantic validators and callers that catch ValueError keep working.


class FilterTooCostlyError(InvalidInputError):
    """A JSON filter (a search's metadata or values) whose arrays of objects or of arrays would take too long to
    compare with what is stored: narrow it (fewer objects in an array, or a scalar field in each that tells them
    apart)."""


class StoreError(JourneyError):
    """The journey store could not be opened or used."""


class UnsupportedStoreURLError(StoreError):
    """The store URL is not one of memory://, sqlite:///path or postgresql://…"""

    category: ClassVar[ErrorCategory] = "invalid"


class DatabaseUnavailableError(StoreError):
    """The database the store URL names could not be reached: not running there, refusing the login, or no
    such database or file."""


class InstanceLockLostError(DatabaseUnavailableError):
    """This process lost a journey's lock while it was working on the journey (the database ended the
    connection holding it: a restart, a failover, a terminated backend), so another process may be working on
    it now; the work stopped where it was and is taken again once the lock can be had."""


class MigrationError(StoreError):
    """The database schema is newer than this version of the runtime understands."""


class ConcurrentUpdateError(JourneyError):
    """Another caller changed this journey meanwhile, or held it longer than this call could wait."""

    category: ClassVar[ErrorCategory] = "conflict"


class StartedElsewhereError(ConcurrentUpdateError):
    """Another attempt of this run (its queue took it again while this one lived on, its worker's heartbeat late)
    runs it or ran it: it registered a start's journey first, or was claimed after this one, which then does
    nothing more of the run."""


class DuplicateInstanceError(JourneyError):
    """This journey has already been started for this user."""

    category = "conflict"


class DuplicateDesignError(JourneyError):
    """A design with this id is stored already."""

    category = "conflict"


class ThreadExistsError(JourneyError):
    """A thread with this id exists already."""

    category = "conflict"


class ThreadBusyError(JourneyError):
    """The thread has a pending or running run, and the new run's strategy is ``reject``."""

    category = "conflict"


class ThreadNotFoundError(JourneyError):
    """No such thread (deleted, maybe a moment ago): a run cannot be queued on it."""

    category = "not_found"


class RunNotActiveError(JourneyError):
    """The run has ended: only a pending or running run is cancelled or rolled back. Answered 404, as the Agent
    Server answers a cancel of a run that is not pending or running ("not found or not cancelable")."""

    category = "not_found"


class RunWithdrawnError(JourneyError):
    """The run was not created: what asked for it was withdrawn as it was created (a cron disabled, deleted or
    rescheduled while it fired)."""

    category = "conflict"


class UnsupportedMultitaskStrategyError(JourneyError):
    """The run's multitask strategy is not one this store supports."""

    category = "invalid"


class AssistantExistsError(JourneyError):
    """An assistant with this id exists already."""

    category = "conflict"


class AssistantNotFoundError(JourneyError):
    """No such assistant (or no such version of it)."""

    category = "not_found"


class SystemAssistantError(JourneyError):
    """A built-in pattern's assistant cannot be changed or deleted; create an assistant on its graph instead."""

    category = "conflict"


class EncryptionKeyError(StoreError):
    """The encryption key is missing for encrypted data, or not 16, 24 or 32 bytes long."""

    category = "invalid"


class CheckpointsDeletedError(JourneyError):
    """Retention deleted this finished journey's checkpoints: its graph state is gone; its event log
    (``history``) and its index row (pattern, status) are kept."""

    category = "not_found"


class RetentionPolicyError(JourneyError):
    """The checkpoint retention policy is not one of keep_latest, keep_all_for N days or delete_after N days."""

    category = "invalid"
