"""Request and response models of the Agent Server API subset (the shapes ``langgraph-sdk`` 0.4 uses)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from fastapi.responses import JSONResponse
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
)
from pydantic.config import JsonDict

from checkpoints.runs import ThreadTTL

StreamModeName = Literal[
    "values", "updates", "custom", "messages", "messages-tuple", "events", "debug", "tasks", "checkpoints", "tools"
]


def _no_lifecycle(modes: Any) -> Any:
    """Refuse langgraph-sdk's ``lifecycle`` stream mode saying why, not "Input should be 'values', …"."""
    if modes == "lifecycle" or (isinstance(modes, list) and "lifecycle" in modes):
        raise ValueError(
            "stream_mode 'lifecycle' (the start and end of each subgraph, from LangGraph's v3 stream) is not served "
            "on runs here: stream 'tasks' (each node's start and end), or read each run's lifecycle on the thread "
            "stream (client.threads.stream)"
        )
    return modes


# A run's stream modes, as runs.create/stream/wait and crons take them.
RunStreamModes = Annotated[StreamModeName | list[StreamModeName] | None, BeforeValidator(_no_lifecycle)]


SortOrder = Literal["asc", "desc"]
RunStatus = Literal["pending", "running", "error", "success", "timeout", "interrupted"]

# Integers that reach the database are bounded by its integer type (a larger one would fail there: a 500).
MAX_INT = 2**31 - 1


def _checked_config(config: dict[str, Any]) -> dict[str, Any]:
    """A run's LangGraph config, refused when LangGraph would refuse it only once the run executes (its
    journey registered and the run failed with a bare ValueError or TypeError): the fields it reads, typed."""
    for name in ("recursion_limit", "max_concurrency"):
        number = config.get(name)
        if isinstance(number, float) and number.is_integer():  # 5.0 is an integer to JSON Schema (and the document)
            number = config[name] = int(number)
        if number is not None and (type(number) is not int or not 1 <= number <= MAX_INT):
            raise ValueError(f"config.{name} must be an integer of at least 1")
    tags = config.get("tags")
    if tags is not None and not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
        raise ValueError("config.tags must be a list of strings")
    for name in ("configurable", "metadata"):
        if config.get(name) is not None and not isinstance(config[name], dict):
            raise ValueError(f"config.{name} must be an object")
    if config.get("run_name") is not None and not isinstance(config["run_name"], str):
        raise ValueError("config.run_name must be a string")
    return config


def _or_null(schema: JsonDict) -> JsonDict:
    return {"anyOf": [schema, {"type": "null"}]}


_POSITIVE_INT: JsonDict = {"type": "integer", "minimum": 1, "maximum": MAX_INT}
# What :func:`_checked_config` refuses, stated in the OpenAPI document: a client (and a schema-driven fuzzer)
# sees that ``configurable`` is an object, not only the server when it refuses one that is not.
_RUN_CONFIG_SCHEMA: JsonDict = {
    "type": "object",
    "properties": {
        "recursion_limit": _or_null(_POSITIVE_INT),
        "max_concurrency": _or_null(_POSITIVE_INT),
        "tags": _or_null({"type": "array", "items": {"type": "string"}}),
        "configurable": _or_null({"type": "object", "additionalProperties": True}),
        "metadata": _or_null({"type": "object", "additionalProperties": True}),
        "run_name": _or_null({"type": "string"}),
    },
    "additionalProperties": True,
}

# A LangGraph config (RunnableConfig) as a client sends it: other fields are kept as given.
RunConfig = Annotated[dict[str, Any], AfterValidator(_checked_config), WithJsonSchema(_RUN_CONFIG_SCHEMA)]


_SELECT_LIMIT = 100


def select_of(view: type[BaseModel], *, keyed: str | None = None, answered: tuple[str, ...] = ()) -> Any:
    """The type of a ``select``: names of ``view``'s fields, the only ones its answers keep (see :func:`kept`),
    and with ``keyed`` also ``<keyed>.<key>``: one key of that field (a state's ``values.messages``). A name
    the view does not have is refused (422, naming the ones it has), as the Agent Server does, rather than
    answered with nothing for it; the schema states the names. ``answered``: fields its answers hold beyond the
    ones it declares."""
    name: Any = Literal.__getitem__((*view.model_fields, *answered))
    if keyed is not None:
        name = name | Annotated[str, StringConstraints(pattern=rf"^{re.escape(keyed)}\..+")]
    return Annotated[list[name] | None, Field(max_length=_SELECT_LIMIT)]


def picked(view: dict[str, Any], select: list[str]) -> dict[str, Any]:
    """The fields of ``view`` that ``select`` names; ``field.key`` names one key of an object field."""
    found = {name: view[name] for name in select if name in view}
    for name in select:
        field, dot, key = name.partition(".")
        if dot and field not in select and isinstance(view.get(field), dict):
            part = found.setdefault(field, {})
            if key in view[field]:
                part[key] = view[field][key]
    return found


def kept(views: list[dict[str, Any]], select: list[str] | None) -> list[dict[str, Any]] | JSONResponse:
    """``views``, or with ``select`` only the fields it names (:func:`picked`), as they are: no longer whole
    views, so answered directly, not checked against the route's response model."""
    if not select:
        return views
    return JSONResponse([picked(view, select) for view in views])


def kept_one(view: dict[str, Any], select: list[str] | None) -> dict[str, Any] | JSONResponse:
    """:func:`kept` of one view."""
    return JSONResponse(picked(view, select)) if select else view


class StartKeyFields(BaseModel):
    """The idempotent-start fields of a start request (see graphs.kernel.flow)."""

    start_key: str | None = Field(
        default=None, min_length=1, max_length=200, description="a start with this key within its window answers"
    )
    start_key_window: float | None = Field(
        default=None, ge=1, le=3_155_760_000, description="how long the start key holds, in seconds (default a day)"
    )


class Open(BaseModel):
    """A request or response shape that accepts fields beyond the ones declared, as the SDK sends them."""

    # The SDK sends fields this server ignores (config, context, durability…); they are accepted.
    model_config = ConfigDict(extra="allow")


class AssistantOut(Open):
    """An assistant, as the Agent Server API returns it."""

    assistant_id: str
    graph_id: str
    config: dict[str, Any]
    context: dict[str, Any]
    created_at: str
    updated_at: str
    metadata: dict[str, Any]
    version: int
    name: str
    description: str | None


class AssistantVersionOut(Open):
    """One version of an assistant."""

    assistant_id: str
    graph_id: str
    config: dict[str, Any]
    context: dict[str, Any]
    created_at: str
    metadata: dict[str, Any]
    version: int
    name: str
    description: str | None


class AssistantCount(Open):
    """Filters of an assistant count (and search): the graph, a part of the name, metadata it holds."""

    metadata: dict[str, Any] | None = None
    graph_id: str | None = Field(default=None, max_length=100)
    name: str | None = Field(default=None, max_length=200)


class AssistantSearch(AssistantCount):
    """Filters, order and paging of an assistant search."""

    limit: int = Field(default=10, ge=0, le=1000)
    offset: int = Field(default=0, ge=0, le=MAX_INT)
    sort_by: Literal["assistant_id", "graph_id", "name", "created_at", "updated_at"] = "created_at"
    sort_order: SortOrder = "desc"
    select: select_of(AssistantOut) = None  # type: ignore[valid-type]


def pagination_headers(offset: int, shown: int, more: bool) -> dict[str, str]:
    """The Agent Server's paging headers of a search's page (``shown`` answers from ``offset``; ``more``: another
    page follows): ``X-Pagination-Next``, where the next page starts, and ``X-Pagination-Total``, how many there
    are once this page is the last (one more than the next page's start before that)."""
    if more:
        return {"X-Pagination-Next": str(offset + shown), "X-Pagination-Total": str(offset + shown + 1)}
    return {"X-Pagination-Total": str(offset + shown)}


def sorted_page(
    views: list[dict[str, Any]], sort_by: str, sort_order: SortOrder, offset: int, limit: int
) -> list[dict[str, Any]]:
    """One page of ``views`` in the order a search asked for (ties keep the order they came in: newest first)."""
    ordered = sorted(views, key=lambda view: str(view.get(sort_by) or ""), reverse=sort_order == "desc")
    return ordered[offset : offset + limit]


def _addressable(value: str) -> str:
    if "/" in value:
        raise ValueError("an id is addressed in URL paths afterwards, so it cannot contain '/'; choose one without")
    return value


# An id a client chooses for what it creates: addressed in URL paths afterwards (/threads/{thread_id}).
ChosenId = Annotated[
    str, Field(min_length=1, max_length=200, json_schema_extra={"pattern": "^[^/]+$"}), AfterValidator(_addressable)
]


# config.configurable and context, both given: refused (a 400, as the Agent Server does; see
# server.api.one_of_configurable_and_context). The schemas of the bodies that take both say so.
_CONFIGURABLE: JsonDict = {
    "required": ["config"],
    "properties": {
        "config": {
            "type": "object",
            "required": ["configurable"],
            "properties": {"configurable": {"type": "object", "minProperties": 1}},
        }
    },
}
_CONTEXT: JsonDict = {"required": ["context"], "properties": {"context": {"type": "object", "minProperties": 1}}}
NOT_CONFIGURABLE_AND_CONTEXT: JsonDict = {"not": {"allOf": [_CONFIGURABLE, _CONTEXT]}}


class AssistantCreate(Open):
    """A new assistant: a graph (a pattern) with its own config, context and metadata."""

    model_config = ConfigDict(json_schema_extra=NOT_CONFIGURABLE_AND_CONTEXT)

    graph_id: str = Field(min_length=1, max_length=100)
    assistant_id: ChosenId | None = None
    config: RunConfig = Field(default_factory=dict)
    context: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    if_exists: Literal["raise", "do_nothing"] = "raise"
    name: str = Field(default="Untitled", max_length=200)
    description: str | None = None


class AssistantUpdate(Open):
    """Changes to an assistant, which become its new version (metadata is merged)."""

    model_config = ConfigDict(json_schema_extra=NOT_CONFIGURABLE_AND_CONTEXT)

    graph_id: str | None = Field(default=None, min_length=1, max_length=100)
    config: RunConfig | None = None
    context: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    name: str | None = Field(default=None, max_length=200)
    description: str | None = None


class VersionsQuery(Open):
    """Filters and paging of an assistant's versions."""

    metadata: dict[str, Any] | None = None
    limit: int = Field(default=10, ge=0, le=1000)
    offset: int = Field(default=0, ge=0, le=MAX_INT)


class SetLatest(Open):
    """The version an assistant goes back (or forward) to."""

    version: int = Field(ge=1, le=MAX_INT)


class GraphSchemaOut(Open):
    """The JSON schemas of an assistant's graph."""

    graph_id: str
    input_schema: dict[str, Any] | None
    output_schema: dict[str, Any] | None
    state_schema: dict[str, Any] | None
    config_schema: dict[str, Any] | None
    context_schema: dict[str, Any] | None


class GraphOut(Open):
    """An assistant's graph: its nodes and edges."""

    nodes: list[dict[str, Any]]
    edges: list[dict[str, Any]]


# A century of minutes: the most a thread's time-to-live may be (later, its expiry could not be written).
MAX_TTL_MINUTES = 52_596_000


class ThreadTTLIn(BaseModel):
    """A thread's time-to-live, as langgraph-sdk sends it (``ttl=60`` is ``{"ttl": 60, "strategy": "delete"}``):
    ``ttl`` minutes after its last activity (its creation, an update, a run) the thread is deleted with its runs
    and checkpoints (``delete``), or only its checkpoints older than its latest are (``keep_latest``)."""

    model_config = ConfigDict(extra="forbid")

    ttl: float = Field(ge=0, le=MAX_TTL_MINUTES, description="minutes after its last activity")
    strategy: Literal["delete", "keep_latest"] = Field(
        "delete",
        description="delete: the thread goes with its runs and checkpoints; keep_latest: it stays, with only its "
        "latest checkpoint",
    )

    def value(self) -> ThreadTTL:
        return ThreadTTL(self.ttl, self.strategy)


class ThreadCreate(Open):
    """A request to create a thread."""

    thread_id: ChosenId | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    if_exists: Literal["raise", "do_nothing"] = "raise"
    ttl: ThreadTTLIn | None = Field(None, description="its time-to-live; none: the server's default (if any)")
    supersteps: None = Field(
        None,
        description="not supported by this server (a thread gets its state from its first run): leave it out (or null)",
    )


class ThreadOut(Open):
    """A thread, with its status, current values and pending interrupts."""

    thread_id: str
    created_at: str
    updated_at: str
    metadata: dict[str, Any]
    status: Literal["idle", "busy", "interrupted", "error"]
    values: dict[str, Any]
    interrupts: dict[str, list[dict[str, Any]]]
    extracted: dict[str, Any] = Field(default_factory=dict)
    # As the Agent Server's: when its state last changed (its latest checkpoint; its creation before any), and
    # the config and context its latest run ran with (its assistant's under the run's own; none before a run).
    state_updated_at: str = ""
    config: dict[str, Any] = Field(default_factory=dict)
    context: dict[str, Any] = Field(default_factory=dict)


ThreadStatus = Literal["idle", "busy", "interrupted", "error"]


class ThreadCount(Open):
    """Filters of a thread count (and search): metadata and values it holds, its status."""

    metadata: dict[str, Any] | None = None
    values: dict[str, Any] | None = None
    status: ThreadStatus | None = None


# threads.search(extract={alias: path}): a path into a thread as it is shown, by keys (dot notation) and array
# indices (brackets, negative from the end), as the Agent Server takes it: "values.messages[-1].content".
ExtractAlias = Annotated[str, StringConstraints(min_length=1, max_length=100)]
ExtractPath = Annotated[str, StringConstraints(max_length=500, pattern=r"^[^.\[\]]+(\.[^.\[\]]+|\[-?[0-9]{1,9}\])*$")]


class ThreadSearch(ThreadCount):
    """Filters, order and paging of a thread search."""

    ids: list[str] | None = Field(default=None, max_length=1000)
    limit: int = Field(default=10, ge=0, le=1000)
    offset: int = Field(default=0, ge=0, le=MAX_INT)
    sort_by: Literal["thread_id", "status", "created_at", "updated_at", "state_updated_at"] = "created_at"
    sort_order: SortOrder = "desc"
    extract: Annotated[dict[ExtractAlias, ExtractPath], Field(max_length=10)] | None = Field(
        None,
        description="aliases to paths in each thread (values.messages[-1]: dot notation for keys, brackets for "
        "array indices); each thread found answers what they hold in its 'extracted' (null where a path finds "
        "nothing)",
    )
    select: select_of(ThreadOut) = None  # type: ignore[valid-type]


class ThreadUpdate(Open):
    """Metadata merged into a thread's."""

    metadata: dict[str, Any] = Field(default_factory=dict)
    ttl: ThreadTTLIn | None = Field(None, description="its time-to-live from now on; none: it keeps its own")


class ThreadPrune(Open):
    """Threads to prune: ``delete`` removes them, ``keep_latest`` keeps only their latest checkpoint."""

    thread_ids: list[str] = Field(max_length=1000)
    strategy: Literal["delete", "keep_latest"] = "delete"


class CheckpointIn(Open):
    """A checkpoint of a thread, as a client names it."""

    thread_id: str | None = Field(default=None, max_length=200)
    checkpoint_ns: str | None = Field(default=None, max_length=200)
    checkpoint_id: str | None = Field(default=None, max_length=100)
    checkpoint_map: dict[str, Any] | None = None


class CheckpointOut(Open):
    """Which checkpoint of a thread a state belongs to."""

    thread_id: str
    checkpoint_ns: str
    checkpoint_id: str | None
    checkpoint_map: dict[str, Any] | None = None


class ThreadStateOut(Open):
    """A thread's state at one checkpoint: its values, next nodes and tasks."""

    values: dict[str, Any] | list[Any]
    next: list[str]
    tasks: list[dict[str, Any]]
    checkpoint: CheckpointOut
    metadata: dict[str, Any]
    created_at: str | None
    parent_checkpoint: CheckpointOut | None
    interrupts: list[dict[str, Any]]


# A state read's ``select``: its fields, or one key of its values (``values.messages``).
StateSelect = select_of(ThreadStateOut, keyed="values")


class StateAt(Open):
    """A checkpoint to read a thread's state at."""

    checkpoint: CheckpointIn
    subgraphs: bool = False
    select: StateSelect = None  # type: ignore[valid-type]


class StateUpdate(Open):
    """A request to write values to a thread's state, as if a node had: on its latest checkpoint, or on an
    earlier one (``checkpoint`` or ``checkpoint_id``: the state then forks from there; chat threads only)."""

    values: dict[str, Any] | None = None
    as_node: str | None = None
    checkpoint_id: str | None = Field(default=None, max_length=100)
    checkpoint: CheckpointIn | None = None

    def from_checkpoint(self) -> dict[str, Any] | None:
        """The checkpoint the update is written on, when the client named one."""
        named = self.checkpoint.model_dump(exclude_none=True) if self.checkpoint is not None else {}
        if self.checkpoint_id:
            named["checkpoint_id"] = self.checkpoint_id
        return named if named.get("checkpoint_id") else None


class StateUpdated(Open):
    """The checkpoint a state update wrote."""

    checkpoint: CheckpointOut


class HistoryQuery(Open):
    """Paging of a thread's state history: the states whose checkpoint metadata holds ``metadata``'s
    key-value pairs, from the thread's (or ``checkpoint``'s namespace's) latest, before ``before``."""

    limit: int = Field(default=10, ge=1, le=1000)
    before: Annotated[str, Field(max_length=100)] | CheckpointIn | None = None
    metadata: dict[str, Any] | None = None
    checkpoint: CheckpointIn | None = None
    select: StateSelect = None  # type: ignore[valid-type]

    @property
    def before_id(self) -> str | None:
        """The id of the checkpoint the history is read before, however the client named it."""
        return self.before if isinstance(self.before, str) else self.before.checkpoint_id if self.before else None


class CommandIn(Open):
    """The command a run resumes an interrupted thread with."""

    resume: Any = None


# A run takes input (it starts a journey) or command.resume (it advances one), never both.
_STARTS: JsonDict = {"required": ["input"], "properties": {"input": {"type": "object"}}}
_RESUMES: JsonDict = {"required": ["command"], "properties": {"command": {"type": "object", "required": ["resume"]}}}
_NOT_BOTH: JsonDict = {"not": {"allOf": [_STARTS, _RESUMES]}}


class RunCreate(Open):
    """A run on a thread: its first run takes input, later ones command.resume."""

    model_config = ConfigDict(json_schema_extra={**_NOT_BOTH, "allOf": [NOT_CONFIGURABLE_AND_CONTEXT]})

    assistant_id: str = Field(min_length=1)
    input: dict[str, Any] | None = None
    command: CommandIn | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    stream_mode: RunStreamModes = None
    # enqueue by default, as on the Agent Server: a second message sent while a run is active waits its turn
    multitask_strategy: Literal["reject", "enqueue", "interrupt", "rollback"] = "enqueue"
    if_not_exists: Literal["create", "reject"] = "reject"
    config: RunConfig | None = None
    context: dict[str, Any] | None = None
    interrupt_before: Literal["*"] | list[str] | None = None
    interrupt_after: Literal["*"] | list[str] | None = None
    webhook: str | None = Field(default=None, max_length=2000, pattern="^https?://")
    after_seconds: float | None = Field(default=None, ge=0, le=366 * 24 * 3600)
    checkpoint_id: str | None = Field(default=None, max_length=100)
    checkpoint: CheckpointIn | None = None
    on_completion: Literal["delete", "keep"] | None = Field(
        default=None,
        description="delete: the run's thread is deleted when the run ends (a journey it started stays reachable "
        "by its instance id); keep: it stays. Default: delete for a run on a new thread (/runs, /runs/wait, "
        "/runs/stream, as the Agent Server), keep for a run on a thread",
    )
    on_disconnect: Literal["cancel", "continue"] | None = Field(
        default=None,
        description="cancel: the run is cancelled when the client of its stream or wait goes away before it ended; "
        "continue (the default): it runs on",
    )
    durability: Literal["sync", "async", "exit"] | None = Field(
        default=None,
        description="how the run checkpoints: sync/async after every step, exit only where it stops (honoured "
        "for journeys whose steps replay from the event log: structured). Default: the server's --durability "
        "for those, after every step for the others",
    )


class StatelessRunCreate(RunCreate):
    """A run on a new thread: input starts its journey (command.resume finds nothing to resume: 409)."""

    model_config = ConfigDict(
        json_schema_extra={**_NOT_BOTH, "anyOf": [_STARTS, _RESUMES], "allOf": [NOT_CONFIGURABLE_AND_CONTEXT]}
    )


class BatchRunCreate(StatelessRunCreate):
    """One run of a batch: on ``thread_id``, or on a new thread."""

    thread_id: ChosenId | None = None


# A bulk cancel names what it cancels: a thread, some runs, or a status, which stands alone (as on the Agent Server).
_NAMES_RUNS: JsonDict = {
    "anyOf": [
        {"required": ["thread_id"], "properties": {"thread_id": {"type": "string"}, "status": {"type": "null"}}},
        {
            "required": ["run_ids"],
            "properties": {"run_ids": {"type": "array", "minItems": 1}, "status": {"type": "null"}},
        },
        {
            "required": ["status"],
            "properties": {
                "status": {"type": "string"},
                "thread_id": {"type": "null"},
                "run_ids": {"anyOf": [{"type": "null"}, {"type": "array", "maxItems": 0}]},
            },
        },
    ]
}


class CancelMany(Open):
    """Which runs to cancel: those of a thread, listed ones, or all with a status."""

    model_config = ConfigDict(json_schema_extra=_NAMES_RUNS)

    thread_id: str | None = None
    run_ids: list[str] | None = Field(default=None, max_length=1000)
    status: Literal["pending", "running", "all"] | None = None


class RunOut(Open):
    """A run, as the Agent Server API returns it."""

    run_id: str
    thread_id: str
    assistant_id: str
    created_at: str
    updated_at: str
    status: RunStatus
    metadata: dict[str, Any]
    multitask_strategy: str
    cancel_reason: str | None = None


# A run's kwargs (what it was asked) is answered but not declared: a field of that name would shadow the
# model's __init__(**kwargs) for mypy's pydantic plugin.
RunSelect = select_of(RunOut, answered=("kwargs",))


class ThreadCommand(BaseModel):
    """A command of the v3 thread stream (``client.threads.stream``): ``run.start`` or ``input.respond``."""

    id: int = Field(ge=0, le=MAX_INT)
    method: str = Field(min_length=1, max_length=100)
    params: dict[str, Any] = Field(default_factory=dict)


class ThreadEventsRequest(BaseModel):
    """What a v3 thread-stream subscriber wants: channels (``custom:<name>`` for one extension), namespace
    prefixes and their depth, and the ``seq`` to replay after."""

    channels: list[str] = Field(min_length=1, max_length=20)
    namespaces: list[list[str]] | None = Field(default=None, max_length=100)
    depth: int | None = Field(default=None, ge=0, le=100)
    since: int | None = Field(default=None, ge=0, le=2**53)
