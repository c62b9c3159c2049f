"""Metrics, traces and log context of the one instance lifecycle and the one agent-call path.

**Metrics** (prometheus-client). Counters and histograms count what this process did; with
``PROMETHEUS_MULTIPROC_DIR`` set (the same directory for ``journeys serve`` and its workers on a host),
prometheus-client's multiprocess mode writes them to files there and :func:`exposition` sums every
process's. Gauges are not kept in any process: they are read from the shared database when scraped
(:mod:`checkpoints.figures`), so they are right however many processes there are.

**Traces** (OpenTelemetry). One span per run (``journey.run``), per node (``journey.node``) and per agent
call (``agent.call``). A journey is one trace however long it waits: its trace id, and the id of the
journey span every run hangs under, are derived from the instance id (:func:`journey_context`), so a run
resumed days later, by a timer or in another process, joins the trace with nothing to store or read.

**Logs** (structlog). A run binds instance id, journey id, pattern and trace id; the server binds the
run id; an agent call binds its intent and attempt; :func:`log_context` adds the node running.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, MutableMapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from functools import lru_cache
from typing import Any, ParamSpec, TypeVar, cast

import structlog
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import var_child_runnable_config
from langgraph._internal._constants import CONFIG_KEY_CHECKPOINT_NS  # a task's namespace in its config
from langgraph._internal._runnable import RunnableCallable  # how LangGraph makes a node of a function
from langgraph.errors import GraphBubbleUp, UnknownInterruptError
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, Status, StatusCode, TraceFlags
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.multiprocess import MultiProcessCollector

from checkpoints.figures import LiveFigures
from checkpoints.index import Instance, JourneyIndex
from checkpoints.redaction import redact_label, redact_text

log = structlog.get_logger("journeys.telemetry")
P = ParamSpec("P")
R = TypeVar("R")

# --- metrics ---------------------------------------------------------------------------------------

METRICS = CollectorRegistry(auto_describe=True)  # this process's counters (outside multiprocess mode)
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
STARTED = Counter("journeys_started", "Journey instances started, by pattern", ["pattern"], registry=METRICS)
# The statuses counted when an instance reaches them, each its own counter: journeys_<status>_total.
ENDINGS = ("completed", "failed", "compensated", "cancelled")
ENDED = {
    status: Counter(f"journeys_{status}", f"Journey instances {status}, by pattern", ["pattern"], registry=METRICS)
    for status in ENDINGS
}
STEP_SECONDS = Histogram(
    "journeys_step_duration_seconds", "Node runs (steps), by pattern and node", ["pattern", "node"],
    buckets=_SECONDS, registry=METRICS,
)  # fmt: skip
AGENT_SECONDS = Histogram(
    "journeys_agent_call_duration_seconds", "Agent calls with their retries, by intent and outcome (ok, error)",
    ["intent", "outcome"], buckets=_SECONDS, registry=METRICS,
)  # fmt: skip
BULKHEAD_REJECTIONS = Counter(
    "journeys_bulkhead_rejections", "Agent calls refused by a full bulkhead, by intent", ["intent"], registry=METRICS
)
RATE_LIMIT_REJECTIONS = Counter(
    "journeys_rate_limit_rejections", "Agent calls refused by a rate limit, by intent", ["intent"], registry=METRICS
)
M = TypeVar("M", bound=MetricWrapperBase)


def labelled(metric: M, *values: str) -> M:
    """The child of ``metric`` for these label values, each redacted (:func:`redact_label`), taken once per set of
    values: prometheus-client builds the label tuple and takes a lock on every ``labels`` call, and every step
    observes two histograms."""
    return cast(M, _labelled(metric, *values))


@lru_cache(maxsize=4096)
def _labelled(metric: MetricWrapperBase, *values: str) -> MetricWrapperBase:
    return metric.labels(*(redact_label(value) for value in values))


TIMER_LATENESS = Histogram(
    "journeys_timer_lateness_seconds", "Seconds from a timer's due time to its firing",
    buckets=(0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0), registry=METRICS,
)  # fmt: skip
CIRCUIT_STATES = ("closed", "open", "half_open")


def rejected_by_bulkhead(intent: str) -> None:
    """Count an agent call a full bulkhead refused (called by the agent-call path's bulkhead)."""
    labelled(BULKHEAD_REJECTIONS, intent).inc()


def rejected_by_rate_limit(intent: str) -> None:
    """Count an agent call a rate limit refused (called by the agent-call path's rate limiter)."""
    labelled(RATE_LIMIT_REJECTIONS, intent).inc()


def timers_fired(lateness: list[float]) -> None:
    for seconds in lateness:
        TIMER_LATENESS.observe(max(seconds, 0.0))


def multiprocess_dir() -> str | None:
    """prometheus-client's multiprocess directory, when set."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def process_registry() -> CollectorRegistry:
    """What this host's processes counted: every process's files in multiprocess mode, else this process's."""
    if multiprocess_dir() is None:
        return METRICS
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


class _Collected:
    """A collector handing on the metrics of another registry, or given families."""

    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self.collect = collect


# The purposes of timers that can stand failed (an incident): an SLA's or a reminder's notification, a cron's tick.
INCIDENT_PURPOSES = frozenset({"sla", "reminder", "cron"})


def exposition(figures: LiveFigures, circuits: Mapping[str, str]) -> bytes:
    """The text ``/metrics`` answers: the counters and histograms of :func:`process_registry`, and the
    gauges of ``figures`` and ``circuits`` (intent → state) read from the database just before."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collected(process_registry().collect))
    registry.register(_Collected(lambda: _gauges(figures, circuits)))
    return generate_latest(registry)


def _gauges(figures: LiveFigures, circuits: Mapping[str, str]) -> list[Metric]:
    active = GaugeMetricFamily(
        "journeys_active", "Open journey instances by pattern and status", labels=["pattern", "status"]
    )
    for (pattern, status), count in sorted(figures.active.items()):
        active.add_metric([pattern, status], count)
    awaiting = _by_label(
        "journeys_awaiting_retry",
        "Failed journey instances standing where they failed until an operator retries or terminates them",
        "pattern",
        figures.awaiting_retry,
    )
    stages = _by_label(
        "journeys_lifecycle_active", "Open client lifecycle journeys by stage", "stage", figures.lifecycle_stages
    )
    tasks = GaugeMetricFamily("journeys_user_tasks_open", "Open user tasks", value=figures.open_user_tasks)
    breached = GaugeMetricFamily(
        "journeys_user_tasks_sla_breached", "Open user tasks past their SLA", value=figures.sla_breached_user_tasks
    )
    queue = _by_label(
        "journeys_queue_depth",
        "Work waiting: pending runs, timers due and not fired, answers not yet delivered to their instance",
        "queue",
        figures.queue_depth,
    )
    incidents = _by_label(
        "journeys_incidents",
        "Incidents waiting for an operator's retry: timers whose firing failed after its retries, by purpose "
        "(sla, reminder: a process instance's; cron: a cron's tick)",
        "purpose",
        # 0 too: an alert's rule needs a series
        {purpose: figures.incidents.get(purpose, 0) for purpose in INCIDENT_PURPOSES | figures.incidents.keys()},
    )
    circuit = GaugeMetricFamily(
        "journeys_circuit_state", "Circuit of an intent: 1 for its current state", labels=["intent", "state"]
    )
    for intent, current in sorted(circuits.items()):
        for state in CIRCUIT_STATES:
            circuit.add_metric([redact_label(intent), state], 1.0 if state == current else 0.0)
    return [active, awaiting, stages, tasks, breached, queue, incidents, circuit]


def _by_label(name: str, documentation: str, label: str, counts: Mapping[str, int]) -> GaugeMetricFamily:
    """A gauge with one label: a sample per value of it, in order."""
    gauge = GaugeMetricFamily(name, documentation, labels=[label])
    for value, count in sorted(counts.items()):
        gauge.add_metric([value], count)
    return gauge


async def circuit_states(store: Any) -> dict[str, str]:
    """Each intent's circuit state (closed, open or half_open), as the database-shared breaker records it."""
    return {circuit.intent: circuit.state for circuit in await store.circuits()}


# --- the instance lifecycle ------------------------------------------------------------------------


class InstanceTelemetry:
    """Counts instances started and reaching an end status, by pattern, and knows each instance's journey
    and pattern for the runs' spans and logs (read once per instance per process, then kept)."""

    def __init__(self, index: JourneyIndex, *, size: int = 10_000) -> None:
        self._index = index
        self._known: OrderedDict[str, tuple[str, str] | None] = OrderedDict()
        self._size = size

    def _keep(self, instance_id: str, described: tuple[str, str] | None) -> None:
        self._known[instance_id] = described
        if len(self._known) > self._size:
            self._known.popitem(last=False)

    async def describe(self, instance_id: str) -> tuple[str, str] | None:
        """(journey id, pattern) of an indexed instance; None for a thread that is no instance (the guide)."""
        if instance_id in self._known:
            self._known.move_to_end(instance_id)
            return self._known[instance_id]
        found = await self._index.get_instance(instance_id)
        described = (found.journey_id, found.pattern) if found is not None else None
        self._keep(instance_id, described)
        return described

    def seen(self, instances: Iterable[Instance]) -> None:
        """Instances a caller read anyway (the timer scheduler reads a fired batch's rows at once): their runs
        then need no read of their own."""
        for instance in instances:
            self._keep(instance.instance_id, (instance.journey_id, instance.pattern))

    async def created(self, instance_id: str, journey_id: str, pattern: str) -> None:
        self._keep(instance_id, (journey_id, pattern))
        labelled(STARTED, pattern).inc()

    async def status_changed(self, instance_id: str, status: str) -> None:
        counter = ENDED.get(status)
        if counter is None:
            return
        try:
            described = await self.describe(instance_id)
        except Exception as exc:  # the change is committed: a metric must not fail it
            log.warning("could not read an instance's pattern for its metrics", instance_id=instance_id, error=str(exc))
            described = None
        labelled(counter, described[1] if described else "unknown").inc()


# --- traces ----------------------------------------------------------------------------------------

TRACER = "journeys"
# One tracer for the process, taken once rather than per span (taking one builds it anew each time): taken
# before a provider is set, it is OpenTelemetry's proxy, which goes to the provider set later.
_tracer = trace.get_tracer(TRACER)


def tracing() -> bool:
    """Whether spans are recorded: a tracer provider was set (:func:`configure_tracing`, or a test's). Without
    one every span is OpenTelemetry's non-recording kind, and the spans of nodes and agent calls are not
    started at all: their contexts were a tenth of a no-op step's CPU, for nothing."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


class ObservedRun:
    """One run of an instance's graph, as its nodes and agent calls see it (:func:`run_observed`): its span, its
    pattern, whether spans are recorded (asked of OpenTelemetry once as the run starts, not again by its nodes and
    agent calls: with no provider set its check raises and catches a KeyError in its look at the environment, a
    fifth of the telemetry of an agent call), how many of its nodes are at work, and whether it was stopped."""

    __slots__ = ("at_work", "pattern", "span", "stopped", "traced")

    def __init__(self, span: Span, pattern: str, traced: bool) -> None:
        self.span = span
        self.pattern = pattern
        self.traced = traced
        self.at_work = 0
        self.stopped = False

    def working(self) -> bool:
        """Whether a node of the run is at work (started, neither ended nor failed)."""
        return self.at_work > 0

    def stop(self) -> None:
        """The run's graph call was cancelled: none of its nodes or chained steps begins from now on
        (:func:`begin_step`), also when the cancel was lost in the work of the node it reached, which ended."""
        self.stopped = True


def begin_step(run: ObservedRun) -> None:
    """A step of ``run`` begins: a cancelled run's is not begun (the step boundary a cancel stops a run at, at the
    latest), as if the cancel had landed there."""
    if run.stopped:
        raise asyncio.CancelledError("the run was cancelled before this step began")


class _ObservedNode:
    """A node of a run at work (:func:`observed_node`): its span (a child of the run's), timed for the step
    histogram. ``namespace``: its task's checkpoint namespace, which a node of a graph nested in it does not share."""

    __slots__ = ("name", "namespace", "run", "span", "started", "step")

    def __init__(self, run: ObservedRun, name: str, step: int, namespace: str | None) -> None:
        self.run = run
        self.step = step
        self.namespace = namespace
        self._start(name)

    def _start(self, name: str) -> None:
        self.name = name
        self.span = (
            _tracer.start_span(
                "journey.node",
                context=trace.set_span_in_context(self.run.span),
                attributes={"journey.node": name, "journey.step": self.step},
            )
            if self.run.traced
            else trace.INVALID_SPAN  # timed for the histogram all the same
        )
        self.started = time.perf_counter()

    def next_node(self, name: str) -> None:
        """The node went on to ``name``'s work itself: the span of what it ran so far ends, and ``name``'s begins,
        in the same superstep."""
        self.end(None)
        self._start(name)

    def end(self, error: BaseException | None) -> None:
        if isinstance(error, GraphBubbleUp):  # an interrupt: the node waits for a person, a message, a timer
            self.span.set_attribute("journey.interrupted", True)
        elif error is not None:
            record_error(self.span, error)
        self.span.end()
        labelled(STEP_SECONDS, self.run.pattern, self.name).observe(time.perf_counter() - self.started)


# The run this code runs in (None: not in one), and the node of it at work (None: between nodes). A context
# variable, as no argument reaches the agent calls a node makes; LangGraph runs each node in a task of its own,
# which starts with a copy of the run's context.
_OBSERVED: ContextVar[tuple[ObservedRun, _ObservedNode | None] | None] = ContextVar("journeys_observed", default=None)


def journey_context(instance_id: str) -> otel_context.Context:
    """The context every run of ``instance_id`` starts its span in: the journey's trace, under the
    journey's span, both ids derived from the instance id (nothing stored, the same in every process)."""
    digest = hashlib.sha256(instance_id.encode()).digest()
    trace_id = int.from_bytes(digest[:16], "big") or 1
    span_id = int.from_bytes(digest[16:24], "big") or 1
    parent = SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    return trace.set_span_in_context(NonRecordingSpan(parent))


def trace_id_of(instance_id: str) -> str:
    """The journey's trace id as logs and trace viewers show it (32 hex digits)."""
    return trace.format_trace_id(trace.get_current_span(journey_context(instance_id)).get_span_context().trace_id)


def observed_node(name: str, node: Runnable[Any, Any]) -> Runnable[Any, Any]:
    """The node ``name`` of an instance's graph, spanned and timed: each of its runs gets a span (a child of its
    run's) and its duration in the step histogram, and the agent calls it makes hang under its span. What the
    kernel compiles every node of a journey's graph with (``JourneyEngine.compiled``), so that a run needs no
    LangChain callback handler: LangGraph called one for the start and end of the run and of each of its tasks, a
    twentieth of a run's Python calls. A graph nested in the node (a process's branch, a saga's compensation) is
    part of the node's step, as its agent calls are."""

    async def observed(state: Any, config: RunnableConfig) -> Any:
        observing = _OBSERVED.get()
        if observing is None:  # not in a journey's run (a graph compiled by the kernel runs in one)
            return await node.ainvoke(state, config)
        run = observing[0]
        begin_step(run)
        step = int((config.get("metadata") or {}).get("langgraph_step", 0))
        at = _ObservedNode(run, name, step, config.get("configurable", {}).get(CONFIG_KEY_CHECKPOINT_NS))
        token = _OBSERVED.set((run, at))
        run.at_work += 1
        try:
            result = await node.ainvoke(state, config)
        except BaseException as error:
            at.end(error)
            raise
        else:
            at.end(None)
        finally:
            run.at_work -= 1
            _OBSERVED.reset(token)
        return result

    observed.__name__ = f"observed_{getattr(node, 'name', None) or name}"
    return RunnableCallable(None, observed, name=name, trace=False)


def record_error(span: Span, error: BaseException) -> None:
    """Mark ``span`` failed with ``error``, its message redacted (an agent's error can quote what it was given)."""
    span.add_event(
        "exception",
        {"exception.type": type(error).__name__, "exception.message": redact_text(str(error))},
    )
    span.set_status(Status(StatusCode.ERROR, type(error).__name__))


@contextmanager
def run_observed(instance_id: str, graph: str, described: tuple[str, str] | None) -> Iterator[ObservedRun]:
    """Around one run of an instance's graph: its span in the journey's trace and its log context; its nodes
    (:func:`observed_node`) and their agent calls are spanned and timed inside it."""
    journey_id, pattern = described if described else (instance_id, graph.split("-", 1)[0])
    attributes = {"journey.instance_id": instance_id, "journey.journey_id": journey_id, "journey.pattern": pattern}
    run_id = structlog.contextvars.get_contextvars().get("run_id")  # bound by the server's run executor
    if run_id is not None:
        attributes["journey.run_id"] = str(run_id)
    span = _tracer.start_span("journey.run", context=journey_context(instance_id), attributes=attributes)
    trace_id = trace.format_trace_id(span.get_span_context().trace_id)
    run = ObservedRun(span, pattern, tracing())
    try:
        with (
            trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False),
            log_bound(instance_id=instance_id, journey_id=journey_id, pattern=pattern, trace_id=trace_id),
        ):
            token = _OBSERVED.set((run, None))
            try:
                yield run
            finally:
                _OBSERVED.reset(token)
    except GraphBubbleUp:
        raise
    except UnknownInterruptError as refused:  # a strict resume refused before it wrote anything: an outcome
        span.set_attribute("journey.resume_refused", refused.reason)
        span.add_event("journey.resume_refused", {"reason": refused.reason})
        raise
    except BaseException as error:
        record_error(span, error)
        raise
    finally:
        span.end()


def chained_node(config: RunnableConfig, node: str) -> None:
    """In a node that goes on to another step's work itself (``nodes.services.CHAIN_FLAG``): that step gets its
    span and its duration in the step histogram, as a node of its own does. ``config``: the node's; a node of a
    graph nested in a node is part of that node's step, and goes on within it."""
    observing = _OBSERVED.get()
    at = observing[1] if observing is not None else None
    if at is not None:
        begin_step(at.run)
    if at is not None and at.namespace == config.get("configurable", {}).get(CONFIG_KEY_CHECKPOINT_NS):
        at.next_node(node)


def _node_span_here() -> Span | None:
    """The span of the node this code runs in."""
    observing = _OBSERVED.get()
    at = observing[1] if observing is not None else None
    return at.span if at is not None else None


_NO_SPAN = nullcontext(trace.INVALID_SPAN)  # an agent call's span when spans are not recorded (shared: reentrant)


def observed_agent_call(call: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Wraps the agent-call path: a span (a child of its node's), the duration histogram, and the intent
    and attempt in the log context. The wrapped call takes ``intent``, ``instance_id`` and ``step`` by name."""

    @functools.wraps(call)
    async def observed(*args: P.args, **kwargs: P.kwargs) -> R:
        intent, step = str(kwargs["intent"]), kwargs.get("step")
        started = time.perf_counter()
        observing = _OBSERVED.get()
        traced = observing[0].traced if observing is not None else tracing()  # asked once per run
        with (
            _agent_span(intent, step, str(kwargs["instance_id"])) if traced else _NO_SPAN as span,
            log_bound(intent=intent, attempt=None),
        ):
            try:
                result = await call(*args, **kwargs)
            except GraphBubbleUp:  # an interrupt: the call waits for a person (an open circuit's human route)
                span.set_attribute("agent.waiting", True)
                raise
            except Exception as error:
                labelled(AGENT_SECONDS, intent, "error").observe(time.perf_counter() - started)
                record_error(span, error)
                raise
            replayed = bool(getattr(result, "replayed", False))
            if span.is_recording():  # the attributes of a span nobody records are not built
                span.set_attribute("agent.replayed", replayed)
                span.set_attribute("agent.attempts", int(getattr(result, "attempts", 0)))
            if not replayed:
                labelled(AGENT_SECONDS, intent, "ok").observe(time.perf_counter() - started)
            return result

    return observed


def _agent_span(intent: str, step: object, instance_id: str) -> AbstractContextManager[Span]:
    """An agent call's span, current while the call runs: a child of its node's span."""
    node = _node_span_here()
    attributes = {"agent.intent": redact_label(intent), "journey.instance_id": instance_id}
    if step is not None:
        attributes["journey.step"] = redact_label(str(step))
    return _tracer.start_as_current_span(
        "agent.call",
        context=trace.set_span_in_context(node) if node is not None else None,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    )


def attempt_started(number: int) -> None:
    """Put an agent call's attempt number in the log context (reset when the call ends)."""
    structlog.contextvars.bind_contextvars(attempt=number)


# --- logs ------------------------------------------------------------------------------------------


class log_bound:  # lower case: used as a function, like the contextmanager it replaced
    """``values`` in the log context inside the block, as they were after it: structlog's
    ``bound_contextvars`` without its read of the whole context first (a loop over every context variable,
    a third of an agent call's telemetry), resetting the variables it set instead. A class rather than a
    generator-based context manager: it is entered on every agent call, and a generator's frame, ``next``
    calls and ``StopIteration`` cost twice as many Python calls."""

    __slots__ = ("_tokens", "_values")

    def __init__(self, **values: Any) -> None:
        self._values = values
        self._tokens: Mapping[str, Any] = {}

    def __enter__(self) -> None:
        self._tokens = structlog.contextvars.bind_contextvars(**self._values)

    def __exit__(self, *_exc: object) -> None:
        structlog.contextvars.reset_contextvars(**self._tokens)


def log_context(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A structlog processor: the node a line was logged in (from LangGraph's config of the running task)."""
    config = var_child_runnable_config.get()
    metadata = config.get("metadata") if config else None
    if metadata and "langgraph_node" in metadata:
        event.setdefault("node", metadata["langgraph_node"])
    return event


def configure_tracing() -> None:
    """Export spans over OTLP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or its traces variant) is set: the
    standard OpenTelemetry variables configure the exporter. Without it, spans are not recorded."""
    if not (os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(
        resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "journeys")})
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    logging.getLogger(__name__).info("exporting traces over OTLP")
