"""Rules every module of our packages keeps, checked by importing all of them and walking their classes."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from checkpoints.errors import JourneyError
from server.problems import ApiError, journey_error_response

PACKAGES = ("agents", "checkpoints", "graphs", "nodes", "server")
ROOT = Path(__file__).resolve().parent.parent
# One errors module per layer; the server's HTTP errors sit with its problem mapping.
ERROR_MODULES = ("agents.errors", "checkpoints.errors", "graphs.errors", "nodes.errors", "server.problems")
# The HTTP status of every error code, as clients see it: moving an error class must not change either.
STATUS_BY_CODE = {
    **dict.fromkeys(("ImpersonationError", "LoginRequired", "PolicyViolationError", "TaskForbiddenError"), 403),
    **dict.fromkeys(
        (
            "AssistantNotFoundError",
            "CheckpointsDeletedError",
            "JourneyNotFoundError",
            "ProcessInstanceNotFoundError",
            "RunNotActiveError",
            "TaskNotFoundError",
            "ThreadNotFoundError",
            "UnknownAreaError",
            "UnknownProcessError",
            "UnknownTemplateError",
            "UnknownUnitOfWorkError",
            "UnmatchedMessageError",
        ),
        404,
    ),
    **dict.fromkeys(
        (
            "AssistantExistsError",
            "ConcurrencyKeyError",
            "ConcurrencyLimitError",
            "ConcurrentUpdateError",
            "DeadlineExceededError",
            "DuplicateAgentError",
            "DuplicateDesignError",
            "DuplicateInstanceError",
            "EmbeddedServerRunningError",
            "EntryCriteriaNotMetError",
            "EvaluatorError",
            "ExistingStart",
            "ForkPointError",
            "ForkUnsupportedError",
            "GateRefusedError",
            "InterruptNotPendingError",
            "InvalidMoveError",
            "InvalidTransitionError",
            "JourneyFinishedError",
            "JourneyNotStartedError",
            "JourneyQueuedError",
            "MigrationInProgressError",
            "NotInReviewError",
            "NothingToRetryError",
            "PatternRegistrationError",
            "ProcessNameTakenError",
            "ProcessStateError",
            "ProcessVersionConflictError",
            "RolloutConflictError",
            "RunInReviewError",
            "RunWithdrawnError",
            "StartKeyConflictError",
            "StartedElsewhereError",
            "StepFailedError",
            "StepHaltedError",
            "StepMovedOnError",
            "StepOrderError",
            "SystemAssistantError",
            "TaskClosedError",
            "ThreadBusyError",
            "ThreadExistsError",
            "UnitDependencyError",
        ),
        409,
    ),
    **dict.fromkeys(
        (
            "AgentNotFoundError",
            "ApiKeysError",
            "AuthenticatorError",
            "CorrelationError",
            "EncryptionKeyError",
            "FilterTooCostlyError",
            "FlowSettingError",
            "GuideModelError",
            "GuideToolError",
            "InsecureServeError",
            "InvalidInputError",
            "InvalidMetricError",
            "InvalidRollbackTargetError",
            "MessageIdConflictError",
            "MigrationRefusedError",
            "PluginNotFoundError",
            "ResilienceSettingError",
            "ResumeValueError",
            "RetentionPolicyError",
            "RolloutError",
            "SpecError",
            "TimerDefinitionError",
            "TransitionOptionsError",
            "UnknownTransitionEventError",
            "UnsupportedMultitaskStrategyError",
            "UnsupportedStoreURLError",
            "WrongPatternError",
        ),
        422,
    ),
    **dict.fromkeys(
        (
            "AgentCallFailedError",
            "AgentError",
            "AgentOutputError",
            "AgentOutputTooLargeError",
            "AgentReportedFailureError",
            "AgentTimeoutError",
            "BulkheadFullError",
            "CircuitOpenError",
            "CompensationFailedError",
            "MapFailedError",
            "NoFlowError",
            "PermanentAgentError",
            "RateLimitedError",
            "RecursionLimitError",
            "RollbackFailedError",
            "StepCrashedError",
            "StepReportedFailedError",
            "TransientAgentError",
            "UnitOfWorkFailedError",
            "WorkerStoppedError",
        ),
        424,
    ),
    **dict.fromkeys(("DatabaseUnavailableError", "InstanceLockLostError", "MigrationError", "StoreError"), 503),
}


def our_modules() -> list[ModuleType]:
    modules = []
    for name in PACKAGES:
        package = importlib.import_module(name)
        modules.append(package)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{name}."):
            modules.append(importlib.import_module(info.name))
    return modules


def public_classes() -> list[type]:
    """Every class defined (not merely imported) in one of our modules under a public name."""
    found = []
    for module in our_modules():
        for name, value in vars(module).items():
            if inspect.isclass(value) and value.__module__ == module.__name__ and not name.startswith("_"):
                found.append(value)
    return found


def subclasses(kind: type) -> Iterator[type]:
    for sub in kind.__subclasses__():
        yield sub
        yield from subclasses(sub)


def qualified(kind: type) -> str:
    return f"{kind.__module__}.{kind.__qualname__}"


def test_every_module_of_every_package_is_walked() -> None:
    names = {module.__name__ for module in our_modules()}
    assert {"checkpoints.errors", "graphs.errors", "nodes.timer", "server.problems", "server.api.runs"} <= names


@pytest.mark.parametrize("kind", [cls for cls in public_classes() if issubclass(cls, BaseException)], ids=qualified)
def test_every_error_derives_from_journey_error_and_lives_in_its_layers_errors_module(kind: type) -> None:
    assert issubclass(kind, JourneyError), f"{kind.__qualname__} is outside the JourneyError root"
    assert kind.__module__ in ERROR_MODULES, f"{kind.__qualname__} is defined in {kind.__module__}"


def test_every_error_code_keeps_its_http_status() -> None:
    our_modules()
    statuses = {}
    for kind in subclasses(JourneyError):
        if kind.__module__.startswith(PACKAGES) and kind is not ApiError:  # an ApiError names its status itself
            error = kind.__new__(kind)  # the mapping reads only the class and the (empty) message and details
            error.details = {}
            statuses[error.code] = journey_error_response(error).status_code
    assert statuses == STATUS_BY_CODE


def test_every_public_class_says_what_it_is_for() -> None:
    undocumented = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ClassDef) and not node.name.startswith("_") and not ast.get_docstring(node):
                    undocumented.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not undocumented, f"{len(undocumented)} public classes have no docstring:\n" + "\n".join(undocumented)


def regular_expressions() -> dict[str, list[str]]:
    """Each pattern written as a literal in a ``re`` call of our packages → where it is written."""
    written: dict[str, list[str]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "re"
                    and node.args
                    and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)
                ):
                    written.setdefault(node.args[0].value, []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return written


def test_each_regular_expression_is_written_once() -> None:
    """A rule (the id rule above all: ``nodes.ids.SNAKE_ID``) has one definition that the others name."""
    written = regular_expressions()
    assert r"^[a-z][a-z0-9_]*$" in written  # the finder sees the id rule where it is defined
    repeated = {pattern: places for pattern, places in written.items() if len(places) > 1}
    assert not repeated, f"patterns written more than once: {repeated}"
