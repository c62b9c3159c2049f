"""The pattern registry: the one place that knows which patterns exist.

Each pattern is one module that calls :func:`register` with a :class:`Pattern`: its spec, checks and
graph builder (:class:`DesignKind`, what :class:`~graphs.kernel.designs.DesignBook` needs), how the runtime builds
its orchestrator, its status view, its assistant (how a run on the Agent Server API maps onto the
orchestrator, with the input schemas the server checks) and its LangGraph entrypoint (the graph
``langgraph.json`` names). The runtime, the server and ``graphs/entrypoints.py`` only read this registry.

The built-in pattern modules are imported on the first read (see :data:`BUILTIN_MODULES`), not when this
module is imported: they import the orchestrators, which import this registry.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from jsonschema import Draft202012Validator
from langchain_core.runnables import RunnableConfig
from langgraph.graph import StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import StateSnapshot

from checkpoints.backends.base import Statement
from graphs.errors import InvalidInputError, JourneyNotFoundError, NothingToRetryError, PatternRegistrationError
from graphs.kernel.designs import DesignKind
from graphs.kernel.engine import DEFAULT_RUN, RunOptions

if TYPE_CHECKING:
    from checkpoints.index import Instance
    from graphs.kernel.designs import DesignBook
    from graphs.runtime import JourneyRuntime
    from graphs.structured.templates import TemplateCatalog

Graph = CompiledStateGraph[Any, Any, Any, Any]

# The modules of the built-in patterns, each registering its patterns when imported.
BUILTIN_MODULES = (
    "graphs.structured.pattern",
    "graphs.session.pattern",
    "graphs.lifecycle.pattern",
    "graphs.process.pattern",
    "graphs.guide",
)


@dataclass(frozen=True, slots=True)
class OrchestratorDeps:
    """What a pattern's orchestrator is built from: the runtime's designs and templates, and the
    orchestrators of the patterns registered before it (a saga builds on the structured one)."""

    designs: DesignBook
    templates: TemplateCatalog
    built: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class RunContext:
    """One run on a thread, as an assistant sees it: the runtime, the caller, and ``bind``, which ties
    the thread to the journey instance the run starts (``binding``: the statement that does it, for
    :meth:`registering`)."""

    runtime: JourneyRuntime
    thread_id: str
    principal: str
    groups: tuple[str, ...]
    bind: Callable[[str], Awaitable[None]]
    binding: Callable[[str], Statement]
    options: RunOptions = DEFAULT_RUN  # how the run is carried out: passed to every orchestrator call it makes
    # A chat run's turn: the thread's checkpoint its attempt found before the turn ("" for none; None: not noted). The
    # assistant takes the turn only from there, under the thread's lock: another attempt of the run (its queue took it
    # twice, a worker's heartbeat late) that moved the thread meanwhile took it, and a second would repeat it.
    turn_from: str | None = None

    def registering(self, instance_id: str) -> RunOptions:
        """The run's options for a start that registers ``instance_id`` through ``Instances.start``, with the
        thread's bind in the registration's own statement: the thread names its instance exactly when the
        instance exists (a retried run finishes it), and a start refused before registering binds nothing."""
        return replace(self.options, registered_with=(*self.options.registered_with, self.binding(instance_id)))


# The kind of a run that goes on with work its API process stored and handed to the workers (Assistant.run_on).
RUN_ON = "run_on"


# A starter or resumer may answer with the journey's view (what describe would say); it then promises
# that the thread's state is what its last engine run answered, and the run's output is built from
# both without reading the thread back. None: the output is read from the thread.
View = Mapping[str, Any] | None
Starter = Callable[[RunContext, Mapping[str, Any]], Awaitable[View]]
Resumer = Callable[[RunContext, str, Any], Awaitable[View]]


# The fields of an answer (``command.resume``) that say who gives it, as the inbox's body does: read only where
# no API key says so (a server with auth off), for an assistant whose resume schema takes them (a process's user
# tasks are offered to an assignee or to groups).
ANSWERED_BY: dict[str, Any] = {
    "user": {"type": "string", "minLength": 1, "maxLength": 200},
    "groups": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 200}, "maxItems": 100},
}


@dataclass(frozen=True, slots=True)
class Assistant:
    """A pattern as the Agent Server API sees it: how a run's input starts it and ``command.resume``
    advances it, the schemas both are checked against, and which graph holds a thread's checkpoints."""

    assistant_id: str
    description: str
    start: Starter
    resume: Resumer
    input_schema: dict[str, Any]
    resume_schema: dict[str, Any] = field(default_factory=dict)
    graph: Callable[[JourneyRuntime, str], Awaitable[Graph]] | None = None  # None: the instance's design graph
    sample: Callable[[JourneyRuntime], Awaitable[Graph]] | None = None
    chat: bool = False  # every run takes input (no resume)
    # A retried first run (its executor died) on a registered instance; None: finish its in-flight work.
    restart: Callable[[RunContext, str, Mapping[str, Any]], Awaitable[None]] | None = None
    # A run without input on a thread whose journey stands at a failed step: the step runs again, as
    # LangGraph's run without input re-runs a thread's failed task. None: such a run is refused.
    retry: Callable[[RunContext, str], Awaitable[None]] | None = None
    # A run the API queued for work it stored and handed over (``RUN_ON``: a start registered, an answer
    # resolved, in distributed mode): the journey goes on from where it stands, doing that work. None: the
    # pattern's API processes hand nothing over.
    run_on: Callable[[RunContext, str], Awaitable[None]] | None = None
    # What a run's output adds to the thread's values: step journeys keep their progress in the event
    # log, not in graph state, and the output shows it (status, current and completed steps).
    describe: Callable[[JourneyRuntime, str, StateSnapshot], Awaitable[dict[str, Any]]] | None = None
    # Every step its graphs execute is logged, and a retried run replays the logged steps instead of
    # executing them again: its runs checkpoint only when they stop (the server's "exit" durability, and
    # the runtime's unless opened with durability="sync"; see JourneyEngine.compiled).
    replays_from_log: bool = False
    # Fields of a run's input that name a journey instance the run acts on (the guide's ``session_id``): the
    # caller must be allowed to act on each, as on a thread it runs (checked when the run or cron is made).
    instance_inputs: tuple[str, ...] = ()
    # What the start would refuse of a first run's input that its schema cannot say (a template or a process
    # that does not exist, a spec's design errors, an agent no one registered: its last argument says whether
    # the agents are this process's to check), checked before the run is stored, storing nothing. None: the
    # schema says it.
    check_start: Callable[[JourneyRuntime, Mapping[str, Any], bool], Awaitable[None]] | None = None
    # The schemas' validators, built once: one built per check was a third of a run request's schema check.
    _input_validator: Draft202012Validator = field(init=False, repr=False, compare=False)
    _resume_validator: Draft202012Validator = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_input_validator", Draft202012Validator(self.input_schema))
        object.__setattr__(self, "_resume_validator", Draft202012Validator(self.resume_schema))

    async def check_input(self, value: Any, runtime: JourneyRuntime | None = None, *, agents: bool = True) -> None:
        """Refuses a first run's ``input`` off this assistant's input schema (422), then, given the ``runtime``
        the run would start on, what its start would refuse (:attr:`check_start`): before the run is stored, so
        the caller hears of it instead of a run that fails in a worker. ``agents=False`` where the runs execute
        in other processes (distributed mode: the workers hold the agents, and check them as the run starts)."""
        _conform(self._input_validator, value, "input")
        if runtime is not None and self.check_start is not None and isinstance(value, Mapping):
            await self.check_start(runtime, value, agents)

    def check_resume(self, value: Any) -> None:
        """Refuses (422) a ``command.resume`` off this assistant's resume schema, before the run is stored."""
        _conform(self._resume_validator, value, "command.resume")

    def answered_by(self, value: Any) -> tuple[str | None, tuple[str, ...]] | None:
        """Who the answer ``value`` says gives it (user, groups: :data:`ANSWERED_BY`), where this assistant's
        answers may say it; None where they may not."""
        takes = self.resume_schema.get("properties", {})
        if not isinstance(value, Mapping) or any(name not in takes for name in ANSWERED_BY):
            return None
        return value.get("user"), tuple(value.get("groups") or ())


def _conform(validator: Draft202012Validator, value: Any, what: str) -> None:
    errors = sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
    if errors:
        problems = [f"{what}{e.json_path[1:]}: {_short_message(e)}" for e in errors]
        raise InvalidInputError("; ".join(problems), problems=problems)


def _short_message(error: Any) -> str:
    # jsonschema's messages quote the value, which may be a megabyte long: then only the rule is named.
    message: str = error.message
    short = message if len(message) <= 200 else f"fails {error.validator} {error.validator_value!r}"
    takes = error.schema.get("properties") if error.validator == "additionalProperties" else None
    # An unexpected field is mostly a misplaced or misspelt one: say which fields the object takes.
    return f"{short}; it takes {', '.join(sorted(takes))}" if takes else short


# The uncompiled graph LangGraph's tooling runs for a pattern; the config is the run's (``configurable``
# may pick a template).
Entrypoint = Callable[["JourneyRuntime", RunnableConfig], StateGraph[Any]]
# What ``GET /journeys/{instance_id}/status`` says of an instance of the pattern.
StatusView = Callable[["JourneyRuntime", "Instance"], Awaitable[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class Pattern:
    """Everything the runtime, the server and LangGraph's tooling know of one pattern.

    ``design`` None: the pattern has no designs (the guide, a chat graph). ``attribute`` names the runtime
    attribute its orchestrator is reached as (``runtime.structured``); ``orchestrator`` builds it.
    """

    name: str
    assistant: Assistant
    entrypoint: Entrypoint
    design: DesignKind | None = None
    attribute: str | None = None
    orchestrator: Callable[[OrchestratorDeps], Any] | None = None
    status: StatusView | None = None


_REGISTERED: dict[str, Pattern] = {}
_loaded = False


def register(pattern: Pattern) -> Pattern:
    """Add a pattern; its name is its assistant id and its ``langgraph.json`` graph id."""
    if pattern.name in _REGISTERED:
        raise PatternRegistrationError(f"a pattern named {pattern.name!r} is registered already", pattern=pattern.name)
    if pattern.assistant.assistant_id != pattern.name:
        raise PatternRegistrationError(f"pattern {pattern.name!r}: its assistant has another id", pattern=pattern.name)
    _REGISTERED[pattern.name] = pattern
    return pattern


def registered_patterns() -> Mapping[str, Pattern]:
    """Every registered pattern by name, in registration order (the built-in ones first)."""
    global _loaded
    if not _loaded:
        _loaded = True
        for module in BUILTIN_MODULES:
            importlib.import_module(module)
    return _REGISTERED


def get_pattern(name: str) -> Pattern:
    found = registered_patterns().get(name)
    if found is None:
        raise JourneyNotFoundError(f"no pattern {name!r}; patterns: {', '.join(_REGISTERED)}", pattern=name)
    return found


def design_kind(name: str) -> DesignKind:
    """The spec, checks and builder of a pattern that has designs."""
    kind = get_pattern(name).design
    if kind is None:
        raise JourneyNotFoundError(f"pattern {name!r} has no designs", pattern=name)
    return kind


# --- what the patterns' assistants share -------------------------------------------------------------


def mapping_input(value: Any, what: str) -> dict[str, Any]:
    """``value`` as an object (None: empty); anything else is refused, naming ``what``."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInputError(f"{what} must be an object, got {type(value).__name__}")
    return dict(value)


def string_input(data: Mapping[str, Any], key: str, default: str | None = None) -> str:
    """``data[key]`` as a non-empty string (``default`` when missing)."""
    value = data.get(key, default)
    if not isinstance(value, str) or not value:
        raise InvalidInputError(f"input.{key} must be a non-empty string", field=key)
    return value


async def instance_owner(runtime: JourneyRuntime, instance_id: str) -> tuple[str, str]:
    """The journey id and user id of a journey instance."""
    instance = await runtime.store.index.get_instance(instance_id)
    if instance is None:
        raise JourneyNotFoundError(f"no journey instance {instance_id!r}")
    return instance.journey_id, instance.user_id


async def instance_graph(runtime: JourneyRuntime, instance_id: str) -> Graph:
    """The compiled graph whose checkpoints are a journey instance's state."""
    instance = await runtime.store.index.get_instance(instance_id)
    if instance is None:
        raise JourneyNotFoundError(f"no journey instance {instance_id!r}", instance_id=instance_id)
    design = await runtime.store.index.get_design(instance.journey_id)
    if design is None:
        raise JourneyNotFoundError(f"no design {instance.journey_id!r}", journey_id=instance.journey_id)
    spec = design_kind(design.pattern).spec_type.model_validate(design.spec)
    graph: Graph = runtime.graph_for(design.pattern, spec)
    return graph


# What a retry by :func:`retry_failed` logs, naming the task run again and who asked.
RETRIED = "journey.retried"


async def retry_failed(ctx: RunContext, instance_id: str) -> None:
    """``Assistant.retry`` for a pattern with no retry of its own (a lifecycle, a session): see
    :func:`retry_failed_task`, as the run's caller."""
    await retry_failed_task(ctx.runtime, instance_id, by=ctx.principal, options=ctx.options)


async def retry_failed_task(
    runtime: JourneyRuntime, instance_id: str, *, by: str | None, options: RunOptions = DEFAULT_RUN
) -> None:
    """Run the task a journey of a pattern with no retry of its own (a lifecycle, a session) failed at again, from
    where it failed (``Instances.retry``, then a run without input), as LangGraph's run without input re-runs a
    thread's failed task; ``journey.retried`` names ``by``. :class:`NothingToRetryError` when nothing failed."""
    graph = await instance_graph(runtime, instance_id)
    async with runtime.engine.acting(instance_id) as instance:
        if instance is None or await runtime.instances.retry(graph, instance_id, RETRIED, by=by) is None:
            raise NothingToRetryError(f"journey {instance_id!r} has no failed step to retry", allowed=[])
        await runtime.instances.advance(graph, instance_id, instance.pattern, None, options=options)
