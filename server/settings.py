"""Server settings: where the store is, how runs execute, and who may call."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from langgraph.types import Durability

from checkpoints.url import DEFAULT_STORE_URL

ExecutionMode = Literal["embedded", "distributed"]


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A caller: ``principal`` is who they are (the user a task is completed by), ``groups`` their groups."""

    principal: str
    scopes: frozenset[str]
    groups: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str = DEFAULT_STORE_URL
    auth: bool = True
    api_keys: dict[str, ApiKey] = field(default_factory=dict)
    # embedded: runs and timers execute in this process. distributed: they are queued in PostgreSQL
    # (procrastinate) for `journeys worker` processes, and this process only serves HTTP.
    execution: ExecutionMode = "embedded"
    run_timers: bool = True
    concurrency: int = 8  # embedded mode: runs executing at once in this process (a worker has its own)
    # Waiting requests wake on a change notice (in-process, or PostgreSQL NOTIFY from workers); this is
    # only the fallback re-read, for a notice lost while the listening connection reconnects.
    poll_interval: float = 1.0
    # How runs of journeys whose steps are logged (structured) checkpoint. "exit": when the run stops (at a
    # human task, a failure or the end); a run retried after a crash replays its logged steps instead of
    # executing them again. "async"/"sync": after every step too, so thread state shows progress mid-run.
    durability: Durability = "exit"


def load_api_keys(path: str | Path | None = None) -> dict[str, ApiKey]:
    """API keys from a JSON file (``{"<key>": {"principal": …, "scopes": […], "groups": […]}}``) or, without
    one, from the ``JOURNEYS_API_KEYS`` environment variable holding the same JSON."""
    raw = Path(path).read_text() if path else os.environ.get("JOURNEYS_API_KEYS", "{}")
    data = json.loads(raw)
    return {
        key: ApiKey(str(entry["principal"]), frozenset(entry.get("scopes", [])), tuple(entry.get("groups", [])))
        for key, entry in data.items()
    }
