"""The process pattern, as registered: BPMN-style processes with user tasks, timers and messages.

On the Agent Server API the first run starts a deployed process (the thread id is the instance id);
later runs complete one of its open user tasks with ``command.resume``. LangGraph's tooling builds a
catalog process: ``config["configurable"]["process"]`` names it (default ``pr_review``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from langchain_core.runnables import RunnableConfig
from langgraph.graph import StateGraph

from checkpoints.index import Instance
from graphs.errors import InvalidInputError, JourneyFinishedError
from graphs.kernel.designs import DesignKind
from graphs.kernel.engine import check_answering
from graphs.kernel.identifiers import BUSINESS_KEY, PROCESS_NAME, string_schema
from graphs.kernel.patterns import (
    ANSWERED_BY,
    Assistant,
    Pattern,
    RunContext,
    instance_graph,
    mapping_input,
    register,
    string_input,
)
from graphs.process.builder import build_process_graph
from graphs.process.context import FINISHED
from graphs.process.orchestrator import ProcessOrchestrator
from graphs.process.spec import ProcessSpec
from graphs.process.validation import validate_process

if TYPE_CHECKING:
    from graphs.runtime import JourneyRuntime


async def _start(ctx: RunContext, data: Mapping[str, Any]) -> None:
    await ctx.bind(ctx.thread_id)
    version = data.get("version")
    if version is not None and not isinstance(version, int):
        raise InvalidInputError("input.version must be an integer")
    await ctx.runtime.processes.start(
        string_input(data, "process"),
        string_input(data, "business_key"),
        mapping_input(data.get("variables"), "variables"),
        version=version,
        instance_id=ctx.thread_id,
        run_options=ctx.options,
    )


async def _check_start(runtime: JourneyRuntime, data: Mapping[str, Any], _agents: bool) -> None:
    version = data.get("version")
    await runtime.processes.check_start(
        string_input(data, "process"),
        string_input(data, "business_key"),
        mapping_input(data.get("variables"), "variables"),
        version=version if isinstance(version, int) else None,
    )


async def _resume(ctx: RunContext, instance_id: str, value: Any) -> None:
    request = mapping_input(value, "command.resume")
    # A service task a cancelled run stopped (multitask_strategy="interrupt") goes on first: the answer is
    # for the task the process then waits at, as for the other patterns' resumes.
    await ctx.runtime.processes.go_on(instance_id, ctx.options)
    inbox = ctx.runtime.processes.inbox
    task_id = request.get("task_id")
    if ctx.options.answering is not None:  # the answer names the interrupt: the task parked there
        answered = await _task_at(ctx, instance_id, ctx.options.answering)
        if task_id is not None and task_id != answered:
            raise InvalidInputError(
                f"command.resume.task_id {task_id!r} is not the task of interrupt {ctx.options.answering!r}",
                allowed=[answered],
            )
        task_id = answered
    if task_id is None:
        tasks = await inbox.list_tasks(instance_id=instance_id)
        instance = await ctx.runtime.store.index.get_instance(instance_id) if not tasks else None
        if instance is not None and instance.status in FINISHED:  # nothing is open because it has ended
            raise JourneyFinishedError(
                f"process {instance_id!r} has ended ({instance.status}): nothing more of it runs",
                allowed=[],
                instance_id=instance_id,
                status=instance.status,
            )
        if len(tasks) != 1:
            raise InvalidInputError(
                f"process {instance_id!r} has {len(tasks)} open tasks; name one with command.resume.task_id",
                allowed=[t["task_id"] for t in tasks],
            )
        task_id = tasks[0]["task_id"]
    await inbox.complete(
        str(task_id),
        user=ctx.principal,
        groups=ctx.groups,
        payload=mapping_input(request.get("payload"), "payload"),
        # The task is claimed once: a repeated answer finds it completed (TaskClosedError), nothing applied.
        run_options=replace(ctx.options, answering=None),
    )


async def _retry(ctx: RunContext, instance_id: str) -> None:
    """A run without input on a process standing at a failed node: the node runs again (``processes.retry``)."""
    await ctx.runtime.processes.retry(instance_id, by=ctx.principal)


async def _run_on(ctx: RunContext, instance_id: str) -> None:
    """A run the API queued for what it stored (a start registered, a task's answer, a message): it is done here,
    with this process's agents (``processes.run_on``)."""
    await ctx.runtime.processes.run_on(instance_id, ctx.options)


async def _task_at(ctx: RunContext, instance_id: str, interrupt_id: str) -> str:
    """The task of the wait that parked the process at ``interrupt_id`` (a user task's id is its wait's);
    :class:`InterruptNotPendingError` when it does not wait there (answered already, or moved on)."""
    graph = await instance_graph(ctx.runtime, instance_id)
    snapshot = await graph.aget_state(ctx.runtime.engine.config(instance_id))
    check_answering(snapshot, instance_id, interrupt_id)
    parked = next(p.value for t in snapshot.tasks for p in t.interrupts if p.id == interrupt_id)
    return str(parked.get("wait_id") if isinstance(parked, Mapping) else parked)


def _entrypoint(runtime: JourneyRuntime, config: RunnableConfig) -> StateGraph[Any]:
    name = str((config.get("configurable") or {}).get("process", "pr_review"))
    spec = runtime.processes.catalog.build(name)
    runtime.processes.register_default_agents(spec)  # the tooling runs a catalog process offline
    return build_process_graph(spec, runtime.engine.services)


async def _status(runtime: JourneyRuntime, instance: Instance) -> dict[str, Any]:
    return await runtime.processes.status(instance.instance_id)


register(
    Pattern(
        "process",
        Assistant(
            "process",
            "BPMN-style processes: user tasks, timers, messages",
            _start,
            _resume,
            {
                "type": "object",
                "required": ["process", "business_key"],
                "properties": {
                    "process": string_schema(PROCESS_NAME),
                    "business_key": string_schema(BUSINESS_KEY),
                    "variables": {"type": "object"},
                    "version": {"type": "integer"},
                },
                "additionalProperties": False,  # a misspelt field (vars) would be dropped without a word
            },
            {  # the task's answer goes in payload: a field beside it would be dropped, so it is refused
                "type": "object",
                "properties": {"task_id": {"type": "string"}, "payload": {"type": "object"}, **ANSWERED_BY},
                "additionalProperties": False,
            },
            retry=_retry,
            run_on=_run_on,
            check_start=_check_start,
        ),
        _entrypoint,
        design=DesignKind(ProcessSpec, validate_process, build_process_graph),
        attribute="processes",
        orchestrator=lambda deps: ProcessOrchestrator(deps.designs),
        status=_status,
    )
)
