"""Crons: what the ``/runs/crons`` routers call, and what fires a cron.

A cron's firing is a process timer (:mod:`checkpoints.crons`); this service is the scheduler's handler of
purpose ``cron``: it creates the cron's run (on its thread, queued behind any active run, or on a new
thread) and hands it to the run queue. Embedded mode fires in the API process's scheduler; distributed
mode in the workers' periodic timer job, which defers each run's job in the transaction creating it.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

import structlog
from pydantic import ValidationError

from checkpoints.crons import CRON_PURPOSE, CronFilter, CronRow, CronStore, firing_guard
from checkpoints.errors import RunWithdrawnError, ThreadNotFoundError
from checkpoints.process.timers import TICK_OF, Timer
from graphs.errors import InvalidInputError, InvalidMoveError, JourneyNotFoundError
from graphs.runtime import JourneyRuntime
from nodes.timer import TimerDefinition
from server.assistants import get_assistant
from server.problems import ApiError
from server.runs.store import GROUPS, Enqueue, RunRow, RunStore

log = structlog.get_logger("journeys.crons")

# Where a firing's run id is derived from its timer's tick (uuid5): one run per tick, however often it is tried.
_FIRINGS = uuid.UUID("6f0d7a52-3c1e-4b8e-9a57-2f3c8d9e1b40")
# The payload key of what each firing's run is created with: its graph, and the assistant's config and
# context under the cron's own (as a run's request would give them; see server.api.runs.assistant_options).
RUN_OPTIONS = "run_options"
# The run options a cron keeps in its payload (as the Agent Server shows them) and gives each firing's run.
FIRING_OPTIONS = ("interrupt_before", "interrupt_after", "webhook")


def _graph_id(assistant_id: str, payload: Mapping[str, Any]) -> str:
    """The graph a cron's runs execute: its created assistant's, or the built-in assistant's own."""
    return str((payload.get(RUN_OPTIONS) or {}).get("graph_id") or assistant_id)


__all__ = ["CRON_PURPOSE", "CronFilter", "CronRow", "CronService"]


class CronService:
    """Create, change, find and fire crons."""

    def __init__(self, runtime: JourneyRuntime, runs: RunStore, *, agents: bool = True) -> None:
        self.runtime = runtime
        self.runs = runs
        # Whether a cron's input is checked against this process's agents: not where the workers hold them.
        self.agents = agents
        self.store = CronStore(runtime.store.engine, runtime.store.clock, runtime.processes.services.timers)

    def serve_firings(self, enqueue: Callable[[], Enqueue | None], submit: Callable[[RunRow], Awaitable[None]]) -> None:
        """Let this process's timer scheduler fire crons: each firing's run is created with ``enqueue()``
        (distributed: its job in the same transaction) and then handed to ``submit``."""

        async def fire(timer: Timer) -> bool:
            return await self.fire(timer, enqueue(), submit)

        self.runtime.processes.scheduler.handlers[CRON_PURPOSE] = fire

    @staticmethod
    def check_schedule(schedule: str, timezone: str) -> None:
        try:
            TimerDefinition(cron=schedule, timezone=timezone)
        except ValidationError as exc:
            problems = [str(e["msg"]).removeprefix("Value error, ") for e in exc.errors()]
            raise InvalidInputError(f"schedule {schedule!r}: {'; '.join(problems)}", problems=problems) from None

    async def create(
        self,
        *,
        assistant_id: str,
        thread_id: str | None,
        schedule: str,
        timezone: str,
        end_time: datetime | None,
        payload: Mapping[str, Any],
        metadata: Mapping[str, Any],
        enabled: bool,
        on_run_completed: str | None,
        user_id: str | None,
    ) -> CronRow:
        """A new cron, checked before it is stored: the assistant, its input, the schedule and the thread.
        ``payload[RUN_OPTIONS]`` names the graph of a created assistant (else ``assistant_id`` is one)."""
        assistant = get_assistant(_graph_id(assistant_id, payload))
        self.check_schedule(schedule, timezone)
        if payload.get("input") is not None:
            await assistant.check_input(payload["input"], self.runtime, agents=self.agents)
        elif thread_id is None or not assistant.chat:
            raise InvalidInputError("a cron's runs start journeys: give input", input_schema=assistant.input_schema)
        if thread_id is not None:
            thread = await self.runs.get_thread(thread_id)
            if thread is None:
                raise JourneyNotFoundError(f"no thread {thread_id!r}; create it first", thread_id=thread_id)
            if not assistant.chat:
                raise InvalidInputError(
                    f"the {assistant_id!r} assistant's threads advance by command.resume, so a cron cannot run "
                    "on one; schedule new journeys with a cron without a thread (crons.create)",
                    thread_id=thread_id,
                )
        return await self.store.create(
            assistant_id=assistant_id,
            thread_id=thread_id,
            schedule=schedule,
            timezone=timezone,
            end_time=end_time,
            payload=payload,
            metadata=metadata,
            enabled=enabled,
            on_run_completed=on_run_completed,
            user_id=user_id,
        )

    async def update(self, cron_id: str, changes: Mapping[str, Any]) -> CronRow:
        current = await self.get(cron_id)
        schedule, timezone = changes.get("schedule", current.schedule), changes.get("timezone", current.timezone)
        self.check_schedule(schedule, timezone)
        payload = changes.get("payload")
        if payload is not None and payload.get("input") is not None:
            assistant = get_assistant(_graph_id(current.assistant_id, payload))
            await assistant.check_input(payload["input"], self.runtime, agents=self.agents)
        updated = await self.store.update(cron_id, changes)
        if updated is None:
            raise JourneyNotFoundError(f"no cron {cron_id!r}", cron_id=cron_id)
        return updated

    async def get(self, cron_id: str) -> CronRow:
        found = await self.store.get(cron_id)
        if found is None:
            raise JourneyNotFoundError(f"no cron {cron_id!r}", cron_id=cron_id)
        return found

    async def incidents(self, cron_id: str) -> list[dict[str, Any]]:
        """The cron's ticks that failed for good (after their retries), oldest first: when each was due and
        what failed."""
        ticks = await self.store.failed_ticks(cron_id)
        return [{**tick.data.get("incident", {}), "due_at": tick.due_at.isoformat()} for tick in ticks]

    async def retry(self, cron_id: str) -> list[dict[str, Any]]:
        """Fire the cron's failed ticks again (each once, at the scheduler's next pass); the incidents retried.
        Refused while the cron is disabled or spent (its ticks would not fire), or when none failed."""
        cron = await self.get(cron_id)
        ticks = await self.store.failed_ticks(cron_id)
        if not ticks:
            raise InvalidMoveError(f"cron {cron_id!r} has no failed tick to retry", allowed=[], cron_id=cron_id)
        if not cron.enabled or cron.timer_id is None:
            raise InvalidMoveError(
                f"cron {cron_id!r} is {'disabled' if not cron.enabled else 'past its end time'}: its failed ticks "
                "fire only while it is armed; enable it (or give it a later end_time) first",
                allowed=["update"],
                cron_id=cron_id,
            )
        retried = await self.incidents(cron_id)
        await self.store.retry(ticks)
        self.runtime.processes.scheduler.wake()
        return retried

    async def delete(self, cron_id: str) -> None:
        if not await self.store.delete(cron_id):
            raise JourneyNotFoundError(f"no cron {cron_id!r}", cron_id=cron_id)

    async def fire(self, timer: Timer, enqueue: Enqueue | None, submit: Callable[[RunRow], Awaitable[None]]) -> bool:
        """One firing: the cron's run. False when the cron is gone, disabled or re-armed since (then this
        timer ends without a run).

        The run's id is the tick's (:func:`firing_run_id`): a firing that made its run but was cut short
        before its timer moved on (a crash, a failed update) is claimed again once its lease is up, and
        that retry finds the run instead of making a second one; the run was handed to its queue with its
        commit (distributed) or is taken up by the server's restart (embedded)."""
        cron = await self.store.get(str(timer.data.get("cron_id")))
        # A failed tick an operator retried (kept apart from the cron's timer) fires while the cron is armed.
        armed_on = cron.timer_id if cron is not None and TICK_OF in timer.data else timer.timer_id
        if cron is None or not cron.enabled or armed_on is None or cron.timer_id != armed_on:
            return False
        run_id = firing_run_id(timer)
        if await self.runs.get_run(run_id) is not None:
            return True
        payload = cron.payload
        try:
            run = await self.runs.create_run(
                run_id=run_id,
                thread_id=cron.thread_id,  # None: a new thread, created with the run
                assistant_id=cron.assistant_id,
                kind="start",
                input=payload.get("input") or {},
                command=None,
                stream_modes=list(payload.get("stream_mode") or []),
                # On its thread a firing waits behind the active run instead of being lost, unless the cron
                # said reject (then that tick is skipped).
                multitask_strategy=payload.get("multitask_strategy") or ("enqueue" if cron.thread_id else "reject"),
                metadata={
                    **payload.get("metadata", {}),
                    "cron_id": cron.cron_id,
                    "cron_due_at": timer.due_at.isoformat(),
                },
                principal=cron.owned_by() or cron.user_id,  # its runs belong to whoever created the cron
                enqueue=enqueue,
                durability=payload.get("durability"),
                # No graph for a cron stored before run options were kept: its assistant's.
                options={
                    **(payload.get(RUN_OPTIONS) or {}),
                    **{name: payload[name] for name in FIRING_OPTIONS if payload.get(name)},
                    GROUPS: list(payload.get("groups", [])),
                    # A firing's new thread goes when its run ends, if the cron asked (never the cron's own thread).
                    **({"on_completion": "delete"} if cron.on_run_completed == "delete" and not cron.thread_id else {}),
                },
                guard=firing_guard(cron.cron_id, armed_on),
            )
        except RunWithdrawnError:  # disabled, rescheduled or deleted since it was read: this timer ends runless
            return False
        except ApiError as exc:
            if exc.code != "ThreadBusy":
                raise
            # multitask_strategy reject, a run active on its thread: this tick is skipped
            log.info("cron tick skipped: its thread is busy", cron_id=cron.cron_id, due_at=timer.due_at.isoformat())
            return True
        except ThreadNotFoundError:  # deleted since the cron was read: no run, and the thread stays gone
            await self.store.delete(cron.cron_id)  # gone with its thread already, unless stored before that was so
            return False
        except Exception as exc:
            if not self.runtime.store.backend.is_unique_violation(exc):
                raise
            return True  # a retry of this tick running at once made it first
        await submit(run)
        return True


def firing_run_id(timer: Timer) -> str:
    """The id of the run a cron's tick makes: the same for every attempt at that tick (its operator's retry
    too), unique to it."""
    return str(uuid.uuid5(_FIRINGS, f"{timer.data.get(TICK_OF) or timer.timer_id}@{timer.due_at.isoformat()}"))
